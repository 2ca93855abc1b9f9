"""Sweep summaries: a Hydra callback that tabulates every job of a multirun.

After each job (and again when the multirun ends) it writes ``summary.csv`` and
``summary.md`` in the sweep dir: job number, overrides, status, objective (what the app
returned) or the error, and the job's dir. Each job also leaves ``job_result.json`` in its
own dir, so the table is rebuilt from whatever finished, also when jobs run in parallel
(Slurm) or one of them failed.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

COLUMNS = ("job", "status", "objective", "overrides", "dir", "error")


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse a hyperparameter search without periodic evaluation: it would optimise the fallback
        objective (the value head's explained variance), not playing strength."""
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
        if "optuna" in sweeper.lower() and not OmegaConf.select(config, "evaluation.interval_timesteps",
                                                                 default=0):
            # Hydra turns a callback's exception into a warning and goes on: stop here instead.
            print("Error: evaluation.interval_timesteps=0: a hyperparameter search optimises playing strength, "
                  "the win rate of periodic evaluation (its ladder Elo with evaluation=ladder); set "
                  "evaluation.interval_timesteps (e.g. 1e5) and an opponent (e.g. opponent=heuristic)", file=sys.stderr)
            sys.exit(2)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra = config.hydra
        if hydra.mode != RunMode.MULTIRUN:
            return
        value = job_return._return_value  # the exception itself when the job failed
        failed = job_return.status is not JobStatus.COMPLETED
        objective = None if failed or not isinstance(value, (int, float)) or not math.isfinite(value) else value
        row = {"job": hydra.job.num, "status": "failed" if failed else "completed", "objective": objective,
               "overrides": " ".join(job_return.overrides or []), "dir": hydra.runtime.output_dir,
               "error": f"{type(value).__name__}: {value}" if failed else ""}
        Path(hydra.runtime.output_dir, "job_result.json").write_text(json.dumps(row), encoding="utf-8")
        write_summary(Path(hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        write_summary(sweep_dir)
        print(f"sweep summary: {sweep_dir / 'summary.md'} (and summary.csv)", flush=True)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rebuild ``summary.csv`` and ``summary.md`` from the ``job_result.json`` files under ``sweep_dir``."""
    rows = [json.loads(p.read_text(encoding="utf-8")) for p in sweep_dir.glob("*/job_result.json")]
    rows.sort(key=lambda r: r["job"])
    with open(sweep_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| job | status | objective | overrides | error |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        objective = "" if r["objective"] is None else f"{r['objective']:.4f}"
        lines.append(f"| {r['job']} | {r['status']} | {objective} | `{r['overrides']}` | {r['error']} |")
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows
