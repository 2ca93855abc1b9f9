"""Periodic evaluation during training: every ``evaluation.interval_timesteps`` env steps the
network plays a match against the configured ``opponent`` (with ``evaluation=ladder``, instead, it is
rated on the ladder of ``evaluation.players``: ``keisei.evaluation.ladder``), then one against each
preset of ``evaluation.periodic_opponents`` (all composed before training starts), and the results
join the metrics in one record: ``eval/win_rate``, ... for ``opponent`` (the objective is its win
rate) or ``eval/ladder_elo``, ``eval/ladder_elo_error``, ``eval/ladder_games`` (the objective is the
ladder Elo), and ``eval/<preset>/win_rate``, ... for the others.

Two ways to run it behind one interface (``start`` a match, ``result`` when it is done):
``Inline`` plays the match at once in the training process (training waits);
``Background`` plays it in a worker process (``python -m keisei.evaluation.worker``) from a snapshot
of the network, while training goes on; its result arrives one or more updates later.
``PeriodicEvaluation`` decides when to start one and turns results into metrics records; a resumed
run first plays those its stopped run started and never reported (``PeriodicEvaluation.resume``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from keisei.config import EvaluationMode, OpponentConfig, PeriodicMode, TrainConfig, to_container
from keisei.evaluation.ladder import load_ladder, trained_against
from keisei.evaluation.opponents import build_opponent, opponent_preset, periodic_opponents, searching_name
from keisei.evaluation.report import eval_metrics
from keisei.evaluation.tournament import PeriodicLadder, periodic_matches
from keisei.nn.checkpoint import model_state, save_checkpoint
from keisei.play.players import AgentPlayer, Player

log = logging.getLogger(__name__)

#: A background evaluation's files in its ``eval/step_N`` dir: the network and what the worker plays.
SNAPSHOT, SPEC = "agent.pt", "worker.json"


def ladder_of(cfg: TrainConfig) -> PeriodicLadder | None:
    """The ladder that periodic evaluation rates the network on (``evaluation=ladder``, ``None``
    otherwise): its rungs' ratings (a missing ``ladder.json`` or an unrated rung is a ``ConfigError``)
    and opponent configs, composed now, before training starts."""
    ev = cfg.evaluation
    if ev.mode is not EvaluationMode.ladder or not ev.interval_timesteps:
        return None
    rungs = load_ladder(list(ev.players), ev.max_plies)
    return PeriodicLadder(rungs, {r.preset: opponent_preset(r.preset) for r in rungs}, trained_against(cfg))


def _empty(directory: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove everything in ``directory`` but the names in ``keep``."""
    for path in directory.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def step_dir(run_dir: Path, step: int) -> Path:
    """Where the periodic evaluation of the network at ``step`` writes (step zero-padded to 9 digits)."""
    return run_dir / "eval" / f"step_{step:09d}"


def snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """The background evaluations started in ``run_dir`` (their snapshot and spec in ``eval/step_N``):
    (N, that dir), oldest first."""
    found = []
    for spec in (run_dir / "eval").glob(f"step_*/{SPEC}"):
        step = spec.parent.name.removeprefix("step_")
        if step.isdigit() and (spec.parent / SNAPSHOT).is_file():
            found.append((int(step), spec.parent))
    return sorted(found)


def _steps(line: str) -> tuple[int | None, int | None]:
    """(``global_step``, ``eval/global_step``) of a ``metrics.jsonl`` line (None where it has none, or
    is cut short)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None, None
    return (record.get("global_step"), record.get("eval/global_step")) if isinstance(record, dict) else (None, None)


def try_building(opponents: list[OpponentConfig], device: torch.device, seed: int) -> None:
    """Build each opponent once and close it: an engine that cannot start, or a checkpoint that cannot
    be read, fails before training, not at the first evaluation."""
    for op in opponents:
        build_opponent(op, device, seed).close()


class Inline:
    """The matches are played inside ``start``; ``result`` returns their metrics once."""

    def __init__(self, cfg: TrainConfig, device: torch.device, others: dict[str, OpponentConfig],
                 ladder: PeriodicLadder | None) -> None:
        self.cfg, self.device, self.others, self.ladder = cfg, device, others, ladder
        self.opponent: Player | None = None  # built at the first evaluation, kept for the next
        self.other_players: dict[str, Player] = {}
        self.built = False
        self.finished: dict[str, Any] | None = None

    def check(self) -> None:
        """Build the opponents now (an engine that cannot start fails before training, not at the first
        evaluation) and keep them for the evaluations; ``periodic_matches`` reseeds them each time. The
        ladder's rungs are built once to check them (``rate_agent`` builds those it plays)."""
        if self.ladder is not None:
            try_building(list(self.ladder.presets.values()), self.device, self.cfg.seed)
        else:
            self.opponent = build_opponent(self.cfg.opponent, self.device, self.cfg.seed)
        try:
            for name, op in self.others.items():
                self.other_players[name] = build_opponent(op, self.device, self.cfg.seed)
        except BaseException:
            self.close()  # the engines already started
            raise
        self.built = True

    def start(self, model: nn.Module, step: int, seed: int, out_dir: Path) -> None:
        cfg = self.cfg
        if not self.built:
            self.check()
        main = self.ladder or self.opponent
        assert main is not None
        agent = AgentPlayer(model, name=searching_name("agent", cfg.evaluation.search),
                            temperature=cfg.evaluation.temperature, device=self.device, seed=seed,
                            search=cfg.evaluation.search)
        results, others = periodic_matches(agent, main, self.other_players, cfg.evaluation, out_dir, seed=seed,
                                           device=self.device)
        self.finished = eval_metrics(results, step, others, ladder=self.ladder is not None)

    def result(self, wait: bool) -> dict[str, Any] | None:
        finished, self.finished = self.finished, None
        return finished

    @property
    def busy(self) -> bool:
        return False  # an inline evaluation is over when ``start`` returns

    def abandon(self) -> None:
        """After an interrupted match: its players (an engine stopped mid-search) are closed, and built
        again for the next evaluation."""
        self.close()
        self.opponent, self.other_players, self.built, self.finished = None, {}, False, None

    def close(self) -> None:
        for player in [self.opponent, *self.other_players.values()]:
            if player is not None:
                player.close()


class Background:
    """The matches are played by a worker process from a snapshot; at most one evaluation in flight."""

    def __init__(self, cfg: TrainConfig, device: torch.device, others: dict[str, OpponentConfig],
                 ladder: PeriodicLadder | None) -> None:
        self.cfg, self.device, self.others, self.ladder = cfg, device, others, ladder
        self.pending: tuple[subprocess.Popen, int, Path] | None = None  # (process, step, out dir)

    def check(self) -> None:
        """The worker will build the same opponents (the ladder's rungs instead of ``opponent``): build
        each once now and close it."""
        main = [self.cfg.opponent] if self.ladder is None else list(self.ladder.presets.values())
        try_building([*main, *self.others.values()], self.device, self.cfg.seed + 1)

    def start(self, model: nn.Module, step: int, seed: int, out_dir: Path) -> None:
        """Snapshot the network and what the worker plays (``agent.pt``, ``worker.json``) into ``out_dir``,
        then start the worker on them."""
        container = to_container(self.cfg)
        save_checkpoint({"config": container, "model": model_state(model), "global_step": step},
                        out_dir / SNAPSHOT)
        spec = {"evaluation": container["evaluation"], "opponent": container["opponent"],
                "periodic_opponents": {name: to_container(op) for name, op in self.others.items()},
                "ladder": None if self.ladder is None else self.ladder.to_json(),
                "seed": seed, "device": str(self.device)}
        (out_dir / SPEC).write_text(json.dumps(spec), encoding="utf-8")
        self.restart(step, out_dir)

    def restart(self, step: int, out_dir: Path) -> None:
        """Start the worker on the snapshot and spec in ``out_dir``; what an earlier start of it wrote
        there (a run stopped before it finished) is removed first."""
        _empty(out_dir, keep=(SNAPSHOT, SPEC))
        spec = (out_dir / SPEC).read_text(encoding="utf-8")
        with open(out_dir / "worker.log", "w", encoding="utf-8") as logfile:
            proc = subprocess.Popen([sys.executable, "-m", "keisei.evaluation.worker", str(out_dir / SNAPSHOT),
                                     str(out_dir), spec, f"--trainer={os.getpid()}"], stdout=logfile,
                                    stderr=subprocess.STDOUT)
        self.pending = (proc, step, out_dir)

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def plays(self, out_dir: Path) -> bool:
        """Whether the snapshot's spec in ``out_dir`` plays the opponents this run reports (its config may
        have changed them on a resume)."""
        spec = json.loads((out_dir / SPEC).read_text(encoding="utf-8"))
        return (spec["opponent"] == to_container(self.cfg.opponent)
                and (spec["ladder"] is None) == (self.ladder is None)
                and set(spec["periodic_opponents"]) == set(self.others))

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
            (out_dir / SPEC).unlink(missing_ok=True)  # not one to start again on a resume
            return None
        return eval_metrics(json.loads((out_dir / "results.json").read_text(encoding="utf-8")), step,
                            {name: json.loads(f.read_text(encoding="utf-8")) for name, f in files.items()},
                            ladder=self.ladder is not None)

    def abandon(self) -> None:
        self.close()

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


class Evaluation(NamedTuple):
    """An evaluation to play: of the network at ``step``, into ``out_dir``; of ``model``, or (None) from
    the snapshot in ``out_dir`` (a background one a stopped run started)."""

    step: int
    out_dir: Path
    model: nn.Module | None = None
    seed: int = 0


class PeriodicEvaluation:
    """Starts an evaluation when an update crosses ``evaluation.interval_timesteps`` and returns the
    metrics records of the evaluations that finished, each tagged with ``eval/global_step``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, device: torch.device, objective: float | None = None
                 ) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        # The ladder and the presets are composed now, inside the running Hydra app, before anything is written.
        ladder = ladder_of(cfg)
        main = cfg.opponent if ladder is None else None  # the ladder replaces the match against `opponent`
        others = periodic_opponents(cfg.evaluation, main) if cfg.evaluation.interval_timesteps else {}
        runner = Inline if cfg.evaluation.periodic is PeriodicMode.inline else Background
        self.runner = runner(cfg, device, others, ladder)
        self.objective_key = "eval/win_rate" if ladder is None else "eval/ladder_elo"
        self.objective = objective  # of the latest evaluated step (a resumed run's, at first)
        self.objective_step = -1
        self.owed: list[Evaluation] = []
        self.finished: list[dict[str, Any]] = []  # records not taken yet (``take``)
        self.update = 0  # the update the records are logged at
        if cfg.evaluation.interval_timesteps:
            self.runner.check()

    def resume(self, model: nn.Module, step: int, update: int) -> None:
        """A run resumed in its own run dir at ``step`` (after ``update``) owes the evaluations its stopped
        run started at or before that step and never reported: background ones of the same opponents
        start again from their snapshots; the one of the checkpoint's own update, if a stop kept it from
        starting or finishing (an inline match stopped, or the stop came while it waited for the previous
        background one), plays a copy of ``model`` (that update's network). They start at the first
        update (or, when the run has no step left, before it ends: ``settle``). Snapshots of steps after
        ``step`` (played by the stopped run after its checkpoint) are never owed."""
        interval = self.cfg.evaluation.interval_timesteps
        metrics = self.run_dir / "metrics.jsonl"
        if not interval or not metrics.is_file():
            return
        steps = [_steps(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
        reported = {e for _, e in steps if e is not None and e <= step}
        self.objective_step = max(reported, default=-1)
        for s, directory in snapshots(self.run_dir):
            if s > step:
                (directory / SPEC).unlink()
            elif s not in reported and isinstance(self.runner, Background) and self.runner.plays(directory):
                self.owed.append(Evaluation(s, directory))
        previous = max((g for g, _ in steps if g is not None and g < step), default=0)
        crossed = previous // interval < step // interval  # the checkpoint's update was due an evaluation
        started = reported | {o.step for o in self.owed}
        if crossed and not any(step // interval * interval <= s <= step for s in started):
            self.owed.append(Evaluation(step, step_dir(self.run_dir, step), copy.deepcopy(model),
                                        self.cfg.seed + update))

    def after_update(self, model: nn.Module, global_step: int, batch_size: int, update: int, last: bool
                     ) -> list[dict[str, Any]]:
        """The records of the evaluations that finished (see ``take``) after this update, which starts one
        when it crosses an interval, or an owed one; ``last``: every one in flight or owed, played now."""
        interval = self.cfg.evaluation.interval_timesteps
        if not interval:
            return []
        self.update = update
        self._collect(self.runner.result(wait=False))  # at most one evaluation in flight
        if self.owed and not self.runner.busy:
            self._start(self.owed.pop(0))
            self._collect(self.runner.result(wait=False))  # inline: played already
        if global_step // interval > (global_step - batch_size) // interval:
            self._collect(self.runner.result(wait=True))
            self._start(Evaluation(global_step, step_dir(self.run_dir, global_step), model, self.cfg.seed + update))
            self._collect(self.runner.result(wait=False))
        if last:
            self._drain()
        return self.take()

    def settle(self, update: int) -> list[dict[str, Any]]:
        """The records of every evaluation still in flight or owed, played now (a run resumed at its last
        step has no update left to play them in)."""
        self.update = update
        self._drain()
        return self.take()

    def take(self) -> list[dict[str, Any]]:
        """The records of the evaluations finished since the last call, each once: also those that
        finished before a stop signal ended a later one in the same ``after_update`` or ``settle``."""
        records, self.finished = self.finished, []
        return records

    def _drain(self) -> None:
        self._collect(self.runner.result(wait=True))
        while self.owed:
            self._start(self.owed.pop(0))
            self._collect(self.runner.result(wait=True))

    def _collect(self, metrics: dict[str, Any] | None) -> None:
        """Keep the record of a finished evaluation (``None``: none finished, or it failed) for ``take``."""
        if not metrics:
            return
        record = {"update": self.update, **metrics}
        if record["eval/global_step"] >= self.objective_step:  # an owed evaluation may finish after a later step's
            self.objective, self.objective_step = record[self.objective_key], record["eval/global_step"]
        self.finished.append(record)

    def _start(self, evaluation: Evaluation) -> None:
        if evaluation.model is None:
            log.info("periodic evaluation of step %d, stopped before it finished: started again", evaluation.step)
            assert isinstance(self.runner, Background)
            self.runner.restart(evaluation.step, evaluation.out_dir)
            return
        evaluation.out_dir.mkdir(parents=True, exist_ok=True)
        _empty(evaluation.out_dir)  # what a stopped run played there
        self.runner.start(evaluation.model, evaluation.step, evaluation.seed, evaluation.out_dir)

    def abandon(self) -> None:
        """Drop the evaluation in progress (its games so far stay in its dir, unreported)."""
        self.runner.abandon()

    def close(self) -> None:
        self.runner.close()
