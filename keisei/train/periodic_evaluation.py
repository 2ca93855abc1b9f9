"""Periodic evaluation during training: every ``evaluation.interval_timesteps`` env steps the
network plays a match against the configured ``opponent``, then one against each preset of
``evaluation.periodic_opponents`` (composed before training starts), and the results join the
metrics in one record: ``eval/win_rate``, ... for ``opponent`` (the objective is its win rate),
``eval/<preset>/win_rate``, ... for the others.

Two ways to run it behind one interface (``start`` a match, ``result`` when it is done):
``Inline`` plays the match at once in the training process (training waits);
``Background`` plays it in a worker process (``python -m keisei.evaluation.worker``) from a snapshot
of the network, while training goes on; its result arrives one or more updates later.
``PeriodicEvaluation`` decides when to start one and turns results into metrics records.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keisei.config import OpponentConfig, PeriodicMode, TrainConfig, to_container
from keisei.evaluation.opponents import build_opponent, periodic_opponents, searching_name
from keisei.evaluation.report import eval_metrics
from keisei.evaluation.tournament import periodic_matches
from keisei.nn.checkpoint import model_state, save_checkpoint
from keisei.play.players import AgentPlayer, Player

log = logging.getLogger(__name__)


class Inline:
    """The matches are played inside ``start``; ``result`` returns their metrics once."""

    def __init__(self, cfg: TrainConfig, device: torch.device, others: dict[str, OpponentConfig]) -> None:
        self.cfg, self.device, self.others = cfg, device, others
        self.opponent: Player | None = None  # built at the first evaluation, kept for the next
        self.other_players: dict[str, Player] = {}
        self.finished: dict[str, Any] | None = None

    def check(self) -> None:
        """Build the opponents now (an engine that cannot start fails before training, not at the first
        evaluation) and keep them for the evaluations; ``periodic_matches`` reseeds them each time."""
        self.opponent = build_opponent(self.cfg.opponent, self.device, self.cfg.seed)
        try:
            for name, op in self.others.items():
                self.other_players[name] = build_opponent(op, self.device, self.cfg.seed)
        except BaseException:
            self.close()  # the engines already started
            raise

    def start(self, model: nn.Module, step: int, seed: int, out_dir: Path) -> None:
        cfg = self.cfg
        if self.opponent is None:
            self.check()
        agent = AgentPlayer(model, name=searching_name("agent", cfg.evaluation.search),
                            temperature=cfg.evaluation.temperature, device=self.device, seed=seed,
                            search=cfg.evaluation.search)
        results, others = periodic_matches(agent, self.opponent, self.other_players, cfg.evaluation, out_dir,
                                           seed=seed)
        self.finished = eval_metrics(results, step, others)

    def result(self, wait: bool) -> dict[str, Any] | None:
        finished, self.finished = self.finished, None
        return finished

    def close(self) -> None:
        for player in [self.opponent, *self.other_players.values()]:
            if player is not None:
                player.close()


class Background:
    """The matches are played by a worker process from a snapshot; at most one evaluation in flight."""

    def __init__(self, cfg: TrainConfig, device: torch.device, others: dict[str, OpponentConfig]) -> None:
        self.cfg, self.device, self.others = cfg, device, others
        self.pending: tuple[subprocess.Popen, int, Path] | None = None  # (process, step, out dir)

    def check(self) -> None:
        """The worker will build the same opponents: build each once now (an engine that cannot start or
        a checkpoint that cannot be read fails before training) and close it."""
        for op in [self.cfg.opponent, *self.others.values()]:
            build_opponent(op, self.device, self.cfg.seed + 1).close()

    def start(self, model: nn.Module, step: int, seed: int, out_dir: Path) -> None:
        container = to_container(self.cfg)
        snapshot = out_dir / "agent.pt"
        save_checkpoint({"config": container, "model": model_state(model), "global_step": step}, snapshot)
        spec = {"evaluation": container["evaluation"], "opponent": container["opponent"],
                "periodic_opponents": {name: to_container(op) for name, op in self.others.items()},
                "seed": seed, "device": str(self.device)}
        with open(out_dir / "worker.log", "w", encoding="utf-8") as logfile:
            proc = subprocess.Popen([sys.executable, "-m", "keisei.evaluation.worker", str(snapshot), str(out_dir),
                                     json.dumps(spec)], stdout=logfile, stderr=subprocess.STDOUT)
        self.pending = (proc, step, out_dir)

    def result(self, wait: bool) -> dict[str, Any] | None:
        """Metrics of the evaluation in flight once it has finished (``wait``: block until then)."""
        if self.pending is None:
            return None
        proc, step, out_dir = self.pending
        if proc.poll() is None and not wait:
            return None
        proc.wait()
        self.pending = None
        files = {name: out_dir / name / "results.json" for name in self.others}
        if proc.returncode != 0 or not all(f.is_file() for f in [out_dir / "results.json", *files.values()]):
            log.warning("background evaluation of step %d failed (exit %s): see %s", step, proc.returncode,
                        out_dir / "worker.log")
            return None
        return eval_metrics(json.loads((out_dir / "results.json").read_text(encoding="utf-8")), step,
                            {name: json.loads(f.read_text(encoding="utf-8")) for name, f in files.items()})

    def close(self) -> None:
        """Stop a worker still running (interrupted run): SIGTERM (it then closes its engines),
        SIGKILL if it lingers; always reaped."""
        if self.pending is None:
            return
        proc = self.pending[0]
        self.pending = None
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PeriodicEvaluation:
    """Starts an evaluation when an update crosses ``evaluation.interval_timesteps`` and returns the
    metrics records of the evaluations that finished, each tagged with ``eval/global_step``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, device: torch.device, win_rate: float | None = None
                 ) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        # The presets are composed now, inside the running Hydra app, before anything is written.
        others = periodic_opponents(cfg.evaluation, cfg.opponent) if cfg.evaluation.interval_timesteps else {}
        runner = Inline if cfg.evaluation.periodic is PeriodicMode.inline else Background
        self.runner = runner(cfg, device, others)
        self.win_rate = win_rate  # of the latest finished evaluation (a resumed run's, at first)
        if cfg.evaluation.interval_timesteps:
            self.runner.check()

    def after_update(self, model: nn.Module, global_step: int, batch_size: int, update: int, last: bool
                     ) -> list[dict[str, Any]]:
        interval = self.cfg.evaluation.interval_timesteps
        if not interval:
            return []
        finished = [self.runner.result(wait=False)]  # at most one evaluation in flight
        if global_step // interval > (global_step - batch_size) // interval:
            finished.append(self.runner.result(wait=True))
            out_dir = self.run_dir / "eval" / f"step_{global_step:09d}"
            out_dir.mkdir(parents=True, exist_ok=True)
            self.runner.start(model, global_step, self.cfg.seed + update, out_dir)
            finished.append(self.runner.result(wait=False))
        if last:
            finished.append(self.runner.result(wait=True))
        records = [{"update": update, **metrics} for metrics in finished if metrics]
        if records:
            self.win_rate = records[-1]["eval/win_rate"]
        return records

    def close(self) -> None:
        self.runner.close()
