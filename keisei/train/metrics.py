"""Where metrics go: always ``metrics.jsonl`` in the run dir; TensorBoard and W&B as options.

Each line of ``metrics.jsonl`` is one JSON object. A training line has ``global_step`` and
``update`` and the metrics of that update (CleanRL-style names: ``losses/...``,
``charts/...``, ``time/...``, ``games/...``); an evaluation line has ``update`` (when it was
logged), ``eval/global_step`` (the training step whose network was evaluated) and ``eval/...``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from keisei.config import ConfigError, TrainConfig, WandbMode
from keisei.runtime import start_wandb
from keisei.shogi import Game, Result, Termination


class Outcome(NamedTuple):
    """What the ``games/...`` metrics need of a finished game (small enough to gather from every rank)."""

    result: Result
    termination: Termination
    ply: int

    @classmethod
    def of(cls, game: Game) -> Outcome:
        return cls(game.result, game.termination, game.ply)


def games_record(games: Sequence[Outcome], games_total: int) -> dict[str, Any]:
    """The ``games/...`` metrics of the games that finished during an update."""
    n = len(games)
    results = Counter(g.result for g in games)
    reasons = Counter(g.termination for g in games)
    record: dict[str, Any] = {"games/finished": n, "games/finished_total": games_total,
                              "games/length_mean": sum(g.ply for g in games) / n if n else float("nan")}
    for result, key in ((Result.BLACK_WIN, "black_win"), (Result.WHITE_WIN, "white_win"), (Result.DRAW, "draw")):
        record[f"games/{key}"] = results[result] / n if n else float("nan")
    for reason in Termination:
        if reason is not Termination.NONE:
            record[f"games/termination_{reason.name.lower()}"] = reasons[reason]
    return record


def truncate_metrics(path: Path, last_update: int, last_step: int) -> None:
    """Drop lines of updates after ``last_update`` (written after the checkpoint we resume from, at
    ``last_step``), so that a resumed run has neither duplicated nor missing steps. An evaluation
    logged after the checkpoint but of a network up to ``last_step`` (a background one) stays: the
    resumed run goes on from that network and does not play it again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            if record["update"] <= last_update or record.get("eval/global_step", math.inf) <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a line cut short by a crash: nothing after it is trusted
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    tmp.replace(path)


def check_sinks(cfg: TrainConfig) -> None:
    """The optional packages the enabled sinks need are installed (checked before a run starts)."""
    if cfg.logging.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("logging.tensorboard=true needs the tensorboard package (pip install tensorboard), "
                              "or set logging.tensorboard=false") from None
    if cfg.wandb.mode is not WandbMode.disabled:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(f"wandb.mode={cfg.wandb.mode.value} needs the wandb package (pip install wandb), "
                              "or set wandb.mode=disabled") from None


class MetricsLogger:
    """Writes one record per update to every enabled sink."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, wandb_run_id: str | None, resumed_step: int = 0) -> None:
        """Starts W&B first: a run it refuses (no login, say) stops before the run dir's record is
        written. ``metrics.jsonl`` is opened at the first record, after the record is written.
        ``resumed_step``: the global step of the checkpoint a resumed run goes on from; TensorBoard
        drops its events of later steps, as ``truncate_metrics`` does for ``metrics.jsonl``."""
        self.path = run_dir / "metrics.jsonl"
        self._file: TextIO | None = None
        self._tb = None
        self._wandb = None
        if cfg.wandb.mode is not WandbMode.disabled:
            self._wandb = start_wandb(cfg, run_dir, id=wandb_run_id, resume="allow")
            # Background evaluations report after the fact: plot them against the step they belong to.
            self._wandb.define_metric("eval/global_step")
            self._wandb.define_metric("eval/*", step_metric="eval/global_step")
        if cfg.logging.tensorboard:
            check_sinks(cfg)
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                     purge_step=resumed_step + 1 if resumed_step else None)
        self.wandb_run_id = self._wandb.id if self._wandb is not None else wandb_run_id

    def log(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        step = record.get("global_step", record.get("eval/global_step"))
        numbers = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and k not in ("global_step", "update")}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            # Evaluation lines are plotted against eval/global_step (see define_metric above).
            self._wandb.log(numbers, step=record.get("global_step"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def update_record(global_step: int, update: int, losses: dict[str, float], lr: float, steps_per_s: float,
                  shares: dict[str, float], games: Sequence[Outcome], games_total: int,
                  pool_scores: Sequence[float] | None, heuristic_scores: Sequence[float] | None) -> dict[str, Any]:
    """The metrics record of one update: losses, ``charts/...``, ``time/<part>_share``, ``games/...``,
    and ``pool/...`` for the opponent pool's games (``None``: no such games are configured)."""
    record = {"global_step": global_step, "update": update, **losses, "charts/learning_rate": lr,
              "charts/SPS": steps_per_s, **{f"time/{k}_share": v for k, v in shares.items()},
              **games_record(games, games_total)}
    if pool_scores is not None:
        record["pool/games"] = len(pool_scores)
        record["pool/learner_score"] = _mean(pool_scores)
    if heuristic_scores is not None:
        record["pool/heuristic_games"] = len(heuristic_scores)
        record["pool/heuristic_score"] = _mean(heuristic_scores)
    return record


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
