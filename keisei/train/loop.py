"""The training loop: PPO self-play, read top to bottom.

Each update: set the learning rate, ``collect`` a rollout (``keisei.train.rollout``: the env steps and
the policy's moves), run ``ppo_update`` on it (``keisei.train.ppo``), log a metrics record, evaluate
when an interval is crossed (``keisei.train.periodic_evaluation``), checkpoint when one is due or a
stop signal came (``keisei.train.state``). ``train.py`` is the Hydra entry point.

The objective returned (for sweepers) is the latest periodic evaluation's win rate, or the
explained variance of the value function in the last update when evaluation is off.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tqdm import tqdm

from keisei.config import ConfigError, Precision, TrainConfig, to_container
from keisei.nn.checkpoint import resolve_checkpoint, run_dir_of
from keisei.runtime import check_memory, resolve_device, seed_everything
from keisei.train import distributed
from keisei.train.distributed import Ranks
from keisei.train.metrics import MetricsLogger, Outcome, check_sinks, games_record, truncate_metrics
from keisei.train.periodic_evaluation import PeriodicEvaluation
from keisei.train.ppo import learning_rate, ppo_update
from keisei.train.preemption import StopSignals
from keisei.train.rollout import collect
from keisei.train.state import TrainState

#: Rank r of a distributed run seeds its games and samples with seed + r * this.
RANK_SEED_STRIDE = 1_000_003
ONE_PROCESS = Ranks()


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
    state = TrainState.create(cfg, device)  # the same network on every rank
    try:
        seed = cfg.seed + RANK_SEED_STRIDE * ranks.rank  # rank 0 keeps the run's seed: its own games and samples
        if ranks.rank:
            seed_everything(seed)
            state.shuffle.manual_seed(seed)
            if state.pool.heuristic is not None:
                state.pool.heuristic.rng = np.random.default_rng(seed)
        resume = find_resume_checkpoint(cfg, run_dir)
        if resume is None:
            state.env.reset(seed=seed)
        else:
            state.load(resume, ranks.rank, ranks.world)
    except BaseException:
        state.env.close()  # env worker processes, if any
        raise
    return state


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
    truncate_metrics(metrics, state.update)


def train(cfg: TrainConfig, run_dir: Path) -> float:
    """Train per ``cfg`` in ``run_dir`` (resuming when ``cfg.resume`` or the run dir says so);
    prints a summary and returns the objective. Launched as several processes (torchrun, Slurm
    tasks) it trains one network on all of them (``keisei.train.distributed``); rank 0 writes the record."""
    ranks = distributed.setup(use_cuda=resolve_device(cfg.device).type == "cuda")
    own_dir, run_dir = run_dir, Path(distributed.broadcast(str(run_dir)))  # one run dir: rank 0's
    if own_dir != run_dir and own_dir.is_dir() and not any(own_dir.iterdir()):
        own_dir.rmdir()  # the dir Hydra made for this rank (another second's timestamp)
    try:
        return _train(cfg, run_dir, ranks)
    finally:
        distributed.shutdown()


def _train(cfg: TrainConfig, run_dir: Path, ranks: Ranks) -> float:
    failure: BaseException | None = None
    try:
        state = start_run(cfg, run_dir, ranks)
        # Rank 0 alone evaluates and writes: opponents checked now, before the first step.
        evaluation = PeriodicEvaluation(cfg, run_dir, state.policy.device, state.eval_win_rate) if ranks.main \
            else None
    except Exception as exc:
        failure = exc
    if distributed.all_reduce(failure is not None, "max"):  # every rank stops if any check failed
        if failure is not None:
            raise failure
        state.env.close()
        if evaluation is not None:
            evaluation.close()
        raise ConfigError("another process of this distributed run failed its checks (see its error)")
    t, policy = cfg.training, state.policy
    logger = None
    if ranks.main:
        try:
            write_record(cfg, run_dir, state)
            logger = MetricsLogger(run_dir, cfg, state.wandb_run_id)
        except BaseException:
            evaluation.close()
            state.env.close()
            raise
        state.wandb_run_id = logger.wandb_run_id
    batch_size = cfg.env.num_envs * t.num_steps * ranks.world  # env steps of all ranks per update
    num_updates = math.ceil(t.total_timesteps / batch_size)  # the run ends at a whole batch past the total
    remaining = max(0, t.total_timesteps - state.global_step)
    bar = tqdm(total=state.global_step + math.ceil(remaining / batch_size) * batch_size,
               initial=state.global_step, unit="step", disable=not (cfg.logging.progress_bar and ranks.main),
               dynamic_ncols=True, desc="train")
    last_save = time.monotonic()
    with StopSignals() as stop:
        try:
            while state.global_step < t.total_timesteps:
                start_time = time.perf_counter()
                # Steps, not update counts, place the schedule: a resumed run may use another batch size.
                lr = learning_rate(t, state.global_step // batch_size, num_updates)
                for group in state.optimizer.param_groups:
                    group["lr"] = lr
                batch, rollout = collect(policy, state.env, state.pool, t.num_steps, t.gamma, t.gae_lambda,
                                         t.bootstrap_truncated)
                timing = rollout.timing
                t0 = time.perf_counter()
                losses = ppo_update(policy, state.optimizer, batch, t, state.shuffle, state.scaler)
                timing["update"] = time.perf_counter() - t0
                state.update += 1
                state.global_step += batch_size
                state.pool.add(policy, state.update)

                wall = time.perf_counter() - start_time
                # The games of every rank (the losses and timings are rank 0's: one network, its share
                # of the batch).
                played = distributed.gather(([Outcome.of(g) for g in rollout.games], rollout.pool_scores,
                                             rollout.heuristic_scores))
                games, pool_scores, heuristic_scores = ([x for rank in played or [] for x in rank[k]]
                                                        for k in range(3))
                state.games_total += len(games)
                record = {"global_step": state.global_step, "update": state.update, **losses,
                          "charts/learning_rate": lr, "charts/SPS": batch_size / wall,
                          **{f"time/{k}_share": timing.get(k, 0.0) / wall for k in ("env", "inference", "update")},
                          **games_record(games, state.games_total)}
                if t.opponent_pool.size:
                    record["pool/games"] = len(pool_scores)
                    record["pool/learner_score"] = (sum(pool_scores) / len(pool_scores) if pool_scores
                                                    else float("nan"))
                if t.opponent_pool.heuristic_fraction:
                    record["pool/heuristic_games"] = len(heuristic_scores)
                    record["pool/heuristic_score"] = (sum(heuristic_scores) / len(heuristic_scores)
                                                      if heuristic_scores else float("nan"))
                if ranks.main:
                    logger.log(record)
                    last = state.global_step >= t.total_timesteps
                    for evaluation_record in evaluation.after_update(policy.model, state.global_step, batch_size,
                                                                     state.update, last):
                        logger.log(evaluation_record)
                    state.eval_win_rate = evaluation.win_rate
                state.objective = record["losses/explained_variance"] if state.eval_win_rate is None \
                    else state.eval_win_rate
                bar.update(batch_size)
                bar.set_postfix({"SPS": f"{record['charts/SPS']:.0f}", "pi": f"{losses['losses/policy_loss']:.3f}",
                                 "v": f"{losses['losses/value_loss']:.3f}", "games": state.games_total,
                                 "B/W/D": f"{record['games/black_win']:.2f}/{record['games/white_win']:.2f}/"
                                          f"{record['games/draw']:.2f}"})

                interval = t.checkpoint_interval_timesteps
                due = state.global_step // interval > (state.global_step - batch_size) // interval
                due |= 0 < t.checkpoint_interval_minutes * 60 <= time.monotonic() - last_save
                # Every rank takes the same decisions, from the reduced values only (a signal arriving
                # after the reduction counts at the next update): one that reached any rank stops all.
                due = bool(distributed.all_reduce(due, "max"))
                stopping = int(distributed.all_reduce(stop.signum or 0, "max"))
                if due or stopping:
                    state.save(run_dir, "last.pt")
                    last_save = time.monotonic()
                if stopping:  # preempted: the update is done and saved
                    stop.signum = stopping
                    distributed.barrier()  # rank 0 has written last.pt
                    if ranks.main:
                        print(f"stopped by signal {stop.signum} at global_step {state.global_step}: "
                              f"{run_dir}/checkpoints/last.pt written; the same command (or the requeued "
                              "job) resumes from it", file=sys.stderr, flush=True)
                    stop.forward()  # exits (submitit: requeues, then exits), unless the signal is ignored
            state.save(run_dir, "last.pt", "final.pt")
        finally:
            bar.close()
            if logger is not None:
                logger.close()
            if evaluation is not None:
                evaluation.close()
            state.env.close()
    state.objective = distributed.broadcast(state.objective)  # every rank (Slurm task) reports rank 0's
    if ranks.main:
        print(summary(state, run_dir))
    return state.objective


def summary(state: TrainState, run_dir: Path) -> str:
    """What the run produced, for the console."""
    return "\n".join([
        f"run dir:     {run_dir}",
        f"trained:     {state.global_step:,} env steps in {state.update} updates, "
        f"{state.games_total:,} self-play games finished",
        f"checkpoints: {run_dir / 'checkpoints' / 'final.pt'} (and last.pt)",
        f"metrics:     {run_dir / 'metrics.jsonl'} (config: {run_dir / 'config.yaml'})",
        f"objective:   {state.objective:.4f} ("
        + ("latest evaluation win rate)" if state.eval_win_rate is not None
           else "explained variance of the value head in the last update)"),
    ])
