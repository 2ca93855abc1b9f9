"""The scaffolding of a training run, the same for every algorithm: checks, the run dir and its record,
resume, metrics, periodic evaluation, checkpoints, stop signals and teardown.

``Run`` is a context manager: entering it makes every check that can be made before the first step
(on every rank of a distributed run: one that fails stops all), restores the checkpoint it resumes
from and writes the run's record; leaving it, however the run ends, closes what it opened (the env
and its workers, the background evaluator, the metrics sinks, the process group) in one place.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tqdm import tqdm

from keisei.config import ConfigError, EvaluationMode, Precision, TrainConfig, to_container
from keisei.nn.checkpoint import resolve_checkpoint, run_dir_of
from keisei.runtime import check_memory, resolve_device, seed_everything
from keisei.train import distributed
from keisei.train.algorithm import Algorithm, batch_size, build_algorithm, objective
from keisei.train.distributed import Ranks
from keisei.train.metrics import MetricsLogger, Outcome, check_sinks, truncate_metrics, update_record
from keisei.train.optim import learning_rate, set_learning_rate
from keisei.train.periodic_evaluation import PeriodicEvaluation
from keisei.train.preemption import StopSignals
from keisei.train.rollout import RolloutStats
from keisei.train.state import TrainState

log = logging.getLogger(__name__)

#: Rank r of a distributed run seeds its games and samples with seed + r * this.
RANK_SEED_STRIDE = 1_000_003
ONE_PROCESS = Ranks()


class Run:
    """One training run in ``run_dir`` (rank 0's, for every rank of a distributed run)."""

    algorithm: Algorithm  # the configured way of training (``build_algorithm``), built and checked on entry

    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.ranks = ONE_PROCESS
        self.evaluation: PeriodicEvaluation | None = None
        self.logger: MetricsLogger | None = None
        self._stack = ExitStack()

    def __enter__(self) -> Run:
        with ExitStack() as stack:  # on a failure here, what was opened so far is closed
            self.stop = StopSignals()
            stack.callback(self.stop.__exit__, None, None, None)  # the signal handlers go last, after the env
            self.ranks = distributed.setup(use_cuda=resolve_device(self.cfg.device).type == "cuda",
                                           timeout=timedelta(minutes=self.cfg.training.collective_timeout_minutes))
            stack.callback(distributed.shutdown)
            self.run_dir = _shared_run_dir(self.run_dir)
            self.state = self._checked(stack)
            self._start_record(stack)
            self.batch_size = batch_size(self.cfg, self.ranks.world)
            self.bar = self._progress_bar()
            stack.callback(self.bar.close)
            self.stop.__enter__()
            self.last_save = time.monotonic()
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _checked(self, stack: ExitStack) -> TrainState:
        """The run's state and algorithm after every check (rank 0 also builds the periodic evaluation's
        opponents); if any rank failed, every rank raises."""
        failure: Exception | None = None
        try:
            state = start_run(self.cfg, self.run_dir, self.ranks)
            stack.callback(state.env.close)
            if self.ranks.main:
                self.evaluation = PeriodicEvaluation(self.cfg, self.run_dir, state.policy.device,
                                                     state.eval_win_rate)
                stack.callback(self.evaluation.close)
                if state.global_step:
                    self.evaluation.resume(state.policy.model, state.global_step, state.update)
            self.algorithm = build_algorithm(self.cfg, state)  # its own checks (a resumed run's data files)
            state.attach(self.algorithm)  # its own state (a replay buffer) is checkpointed and restored
        except Exception as exc:
            failure = exc
        _raise_if_any_rank_failed(failure)
        return state

    def _start_record(self, stack: ExitStack) -> None:
        """Rank 0 starts the metrics sinks, then writes the run's record; if that fails, every rank raises."""
        failure: Exception | None = None
        if self.ranks.main:
            try:
                self.logger = MetricsLogger(self.run_dir, self.cfg, self.state.wandb_run_id, self.state.global_step)
                stack.callback(self.logger.close)
                write_record(self.cfg, self.run_dir, self.state)  # once the sinks have started
                self.state.wandb_run_id = self.logger.wandb_run_id
            except Exception as exc:
                failure = exc
        _raise_if_any_rank_failed(failure)

    def _progress_bar(self) -> tqdm:
        step, total = self.state.global_step, self.cfg.training.total_timesteps
        remaining = max(0, total - step)
        return tqdm(total=step + math.ceil(remaining / self.batch_size) * self.batch_size, initial=step,
                    unit="step", disable=not (self.cfg.logging.progress_bar and self.ranks.main),
                    dynamic_ncols=True, desc="train")

    @property
    def done(self) -> bool:
        return self.state.global_step >= self.cfg.training.total_timesteps

    def set_learning_rate(self) -> float:
        """The schedule's rate for this update, set in the optimiser. Steps, not update counts, place
        the schedule: a resumed run may use another batch size."""
        num_updates = math.ceil(self.cfg.training.total_timesteps / self.batch_size)
        lr = learning_rate(self.cfg.training, self.state.global_step // self.batch_size, num_updates)
        set_learning_rate(self.state.optimizer, lr)
        return lr

    def end_update(self, losses: dict[str, float], rollout: RolloutStats, lr: float, start: float) -> None:
        """Count the update, keep a snapshot for the opponent pool, log its metrics (the games of every
        rank; losses and timings are rank 0's; ``start``: the update's ``time.perf_counter()`` at its
        start), run the periodic evaluation, move the progress bar."""
        state = self.state
        state.update += 1
        state.global_step += self.batch_size
        state.pool.add(state.policy, state.update)
        wall = time.perf_counter() - start
        played = distributed.gather(([Outcome.of(g) for g in rollout.games], rollout.pool_scores,
                                     rollout.heuristic_scores))
        games, pool_scores, heuristic_scores = ([x for rank in played or [] for x in rank[k]] for k in range(3))
        state.games_total += len(games)
        pool = self.cfg.training.opponent_pool
        parts = dict.fromkeys(("env", "inference", "update", *rollout.timing))  # supervised training adds "data"
        record = update_record(state.global_step, state.update, losses, lr, self.batch_size / wall,
                               {k: rollout.timing.get(k, 0.0) / wall for k in parts},
                               games, state.games_total, pool_scores if pool.size else None,
                               heuristic_scores if pool.heuristic_fraction else None)
        if self.ranks.main:
            self._log(record)
        distributed.wait_for_main()  # the others wait out rank 0's evaluation here, not in a timed collective
        key = objective(self.cfg)[0]  # when periodic evaluation is off; supervised: at a validation only
        if state.eval_win_rate is not None or key in record:
            state.objective = record[key] if state.eval_win_rate is None else state.eval_win_rate
        self.bar.update(self.batch_size)
        self.bar.set_postfix(_postfix(record, state.games_total))

    def _log(self, record: dict) -> None:
        assert self.logger is not None
        self.logger.log(record)
        state = self.state
        self._log_evaluations(lambda evaluation: evaluation.after_update(
            state.policy.model, state.global_step, self.batch_size, state.update, self.done))

    def _log_evaluations(self, play: Callable[[PeriodicEvaluation], list[dict]]) -> None:
        """Log the records of the periodic evaluations ``play`` returns (see ``_evaluate``)."""
        assert self.logger is not None and self.evaluation is not None
        for evaluation_record in self._evaluate(play):
            self.logger.log(evaluation_record)
        self.state.eval_win_rate = self.evaluation.objective  # the win rate, or the ladder Elo (evaluation=ladder)

    def _evaluate(self, play: Callable[[PeriodicEvaluation], list[dict]]) -> list[dict]:
        """The periodic evaluation's records (``play``: after this update, or at the end). A stop signal
        ends an evaluation in progress (or waited for) at once, unreported (those that finished before it
        are reported): the run must checkpoint before a scheduler's grace time is out; after a stop request
        none starts."""
        assert self.evaluation is not None
        state = self.state
        try:
            with self.stop.interrupting():
                if self.stop.signum is None:
                    return play(self.evaluation)
        except KeyboardInterrupt:
            if self.stop.signum is None:
                raise
            self.evaluation.abandon()
            log.warning("periodic evaluation stopped by %s at global_step %d: not reported (games so far in %s)",
                        signal.Signals(self.stop.signum).name, state.global_step, self.run_dir / "eval")
            return self.evaluation.take()  # those that finished before the stop
        return []

    def checkpoint_or_stop(self) -> None:
        """Write ``last.pt`` when an interval is due or a stop signal came; on a signal, exit (or requeue).
        Every rank takes the same decisions, from the reduced values only (a signal arriving after the
        reduction counts at the next update): one that reached any rank stops all."""
        t, step = self.cfg.training, self.state.global_step
        interval = t.checkpoint_interval_timesteps
        due = step // interval > (step - self.batch_size) // interval
        due |= 0 < t.checkpoint_interval_minutes * 60 <= time.monotonic() - self.last_save
        due = bool(distributed.all_reduce(due, "max"))
        stopping = int(distributed.all_reduce(self.stop.signum or 0, "max"))
        if due or stopping:
            self.state.save(self.run_dir, "last.pt")
            self.last_save = time.monotonic()
        if stopping:  # preempted: the update is done and saved
            self.stop.signum = stopping
            distributed.barrier()  # rank 0 has written last.pt
            if self.ranks.main:
                print(f"stopped by signal {stopping} at global_step {step}: {self.run_dir}/checkpoints/last.pt "
                      "written; the same command (or the requeued job) resumes from it", file=sys.stderr, flush=True)
            self.stop.forward()  # exits (submitit: requeues, then exits), unless the signal is ignored

    def finish(self) -> float:
        """Report the evaluations a run resumed at its last step still owed, write the final checkpoint,
        print the summary; the objective (rank 0's, on every rank). A stop signal that came after the last
        update's checkpoint (while the owed ones play, say) stops the run as after an update
        (``checkpoint_or_stop``): no final checkpoint; the same command ends it, playing what is owed."""
        if self.ranks.main:
            self._log_evaluations(lambda evaluation: evaluation.settle(self.state.update))
            if self.state.eval_win_rate is not None:
                self.state.objective = self.state.eval_win_rate
        distributed.wait_for_main()
        if distributed.all_reduce(self.stop.signum or 0, "max"):  # a stop during them: the resumed run plays them
            self.checkpoint_or_stop()
        self.state.save(self.run_dir, "last.pt", "final.pt")
        self.bar.close()
        self.state.objective = distributed.broadcast(self.state.objective)
        if self.ranks.main:
            print(summary(self.state, self.run_dir))
        return self.state.objective


def _postfix(record: dict, games_total: int) -> dict[str, object]:
    """The progress bar's figures: speed, losses, and the games played (or, training on positions
    read from files, the move accuracy)."""
    postfix: dict[str, object] = {"SPS": f"{record['charts/SPS']:.0f}", "pi": f"{record['losses/policy_loss']:.3f}",
                                  "v": f"{record['losses/value_loss']:.3f}"}
    if "losses/accuracy" in record:
        postfix["acc"] = f"{record['losses/accuracy']:.3f}"
    if games_total:
        postfix["games"] = games_total
        postfix["B/W/D"] = f"{record['games/black_win']:.2f}/{record['games/white_win']:.2f}/{record['games/draw']:.2f}"
    return postfix


def _raise_if_any_rank_failed(failure: Exception | None) -> None:
    """Raise ``failure``, or, when another rank of a distributed run failed, an error saying so."""
    if distributed.all_reduce(failure is not None, "max"):
        raise failure or ConfigError("another process of this distributed run failed its checks (see its error)")


def _shared_run_dir(own_dir: Path) -> Path:
    """Rank 0's run dir, on every rank; the empty dir Hydra made for another rank is removed."""
    run_dir = Path(distributed.broadcast(str(own_dir)))
    if own_dir != run_dir and own_dir.is_dir() and not any(own_dir.iterdir()):
        own_dir.rmdir()  # another second's timestamp
    return run_dir


def find_resume_checkpoint(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """The run dir's own ``checkpoints/last.pt`` if it exists (a requeued job runs the same command
    line again, ``resume=`` included, and must go on from its own progress); else ``cfg.resume``."""
    own = run_dir / "checkpoints" / "last.pt"
    if own.is_file():
        return own
    return Path(cfg.resume) if cfg.resume else None


def start_run(cfg: TrainConfig, run_dir: Path, ranks: Ranks = ONE_PROCESS) -> TrainState:
    """A new run's state, or the state of the checkpoint it resumes from, after every check that can
    be made before the first step. Writes nothing into ``run_dir``."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    if cfg.training.precision is Precision.fp16 and device.type != "cuda":
        raise ConfigError(f"training.precision=fp16: needs a CUDA device, and device={cfg.device.value} "
                          f"resolved to {device.type} (use bf16 on the CPU)")
    check_memory(cfg)
    check_sinks(cfg)
    if ranks.main:
        _check_writable(run_dir)
    seed_everything(cfg.seed)
    resume = find_resume_checkpoint(cfg, run_dir)
    init = _init_checkpoint(cfg, resume)
    state = TrainState.create(cfg, device, init)  # the same network on every rank (each loads ``init``)
    try:
        seed = cfg.seed + RANK_SEED_STRIDE * ranks.rank  # rank 0 keeps the run's seed: its own games and samples
        if ranks.rank:
            seed_everything(seed)
            state.generator.manual_seed(seed)
            if state.pool.heuristic is not None:
                state.pool.heuristic.rng = np.random.default_rng(seed)
        if resume is None:
            state.env.reset(seed=seed)
        else:
            state.load(resume, ranks.rank, ranks.world)
    except BaseException:
        state.env.close()  # env worker processes, if any
        raise
    return state


def _init_checkpoint(cfg: TrainConfig, resume: Path | None) -> str | None:
    """The checkpoint a new run takes its weights from (``training.init_checkpoint``); a resumed run
    ignores it: its own checkpoint holds the trained weights, and the starting network if it had one."""
    init = cfg.training.init_checkpoint
    if init and resume is not None:
        log.info("training.init_checkpoint=%s ignored: the run resumes from %s", init, resume)
        return None
    return init or None


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise ConfigError(f"{run_dir}: the run dir is not writable ({exc.strerror or exc})") from None


def write_record(cfg: TrainConfig, run_dir: Path, state: TrainState) -> None:
    """The run's record, once every check has passed: ``config.yaml``, Hydra's ``.hydra/`` (config,
    hydra config, overrides) and ``metrics.jsonl`` cut back to the checkpoint resumed from (or carried
    over from the run dir it came from)."""
    container = to_container(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(container), encoding="utf-8")
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        record = run_dir / ".hydra"
        record.mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(container), record / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra)}), record / "hydra.yaml")
        OmegaConf.save(hydra.overrides.task, record / "overrides.yaml")
    metrics = run_dir / "metrics.jsonl"
    resume = find_resume_checkpoint(cfg, run_dir)
    if resume is not None:
        source = run_dir_of(resolve_checkpoint(resume)) / "metrics.jsonl"
        if not metrics.exists() and source.is_file():  # resuming another run dir: carry its history
            shutil.copyfile(source, metrics)
    truncate_metrics(metrics, state.update, state.global_step)


def _objective_name(cfg: TrainConfig) -> str:
    """What a periodic evaluation's objective is: the win rate against ``opponent``, or the ladder Elo."""
    return "ladder Elo" if cfg.evaluation.mode is EvaluationMode.ladder else "win rate"


def summary(state: TrainState, run_dir: Path) -> str:
    """What the run produced, for the console."""
    return "\n".join([
        f"run dir:     {run_dir}",
        f"trained:     {state.global_step:,} env steps in {state.update} updates, "
        f"{state.games_total:,} self-play games finished",
        f"checkpoints: {run_dir / 'checkpoints' / 'final.pt'} (and last.pt)",
        f"metrics:     {run_dir / 'metrics.jsonl'} (config: {run_dir / 'config.yaml'})",
        f"objective:   {state.objective:.4f} ("
        + (f"latest evaluation {_objective_name(state.cfg)})" if state.eval_win_rate is not None
           else f"{objective(state.cfg)[1]})"),
    ])
