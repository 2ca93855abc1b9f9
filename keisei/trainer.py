"""PPO self-play training: rollouts over a ``VecEnv``, two-player GAE, clipped updates,
periodic evaluation, checkpoints with exact resume, metrics. ``train.py`` is the Hydra entry point.

The objective returned (for sweepers) is the latest periodic evaluation's win rate, or the
explained variance of the value function in the last update when evaluation is off.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical
from tqdm import tqdm

from keisei.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    model_state,
    resolve_checkpoint,
    run_dir_of,
    save_checkpoint,
)
from keisei.config import ConfigError, Device, PeriodicMode, Precision, TrainConfig, to_container
from keisei.env import StepResult, VecEnv
from keisei.evaluation import build_opponent, eval_metrics, evaluate_agent
from keisei.metrics import MetricsLogger, truncate_metrics
from keisei.model import build_model, masked_logits
from keisei.players import AgentPlayer, Player
from keisei.ppo import Batch, build_optimizer, learning_rate, ppo_update, two_player_gae
from keisei.preemption import StopSignals
from keisei.shogi import NUM_ACTIONS, OBSERVATION_SHAPE, Result, Termination

log = logging.getLogger(__name__)


def resolve_device(device: Device) -> torch.device:
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available (use device=auto or device=cpu)")
    return torch.device(device.value)


def find_resume_checkpoint(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """The run dir's own ``checkpoints/last.pt`` if it exists (a requeued job runs the same command
    line again, ``resume=`` included, and must go on from its own progress); else ``cfg.resume``."""
    own = run_dir / "checkpoints" / "last.pt"
    if own.is_file():
        return own
    return Path(cfg.resume) if cfg.resume else None


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = resolve_device(cfg.device)
        if cfg.training.precision is Precision.fp16 and self.device.type != "cuda":
            raise ConfigError(f"training.precision=fp16: needs a CUDA device, and device={cfg.device.value} "
                              f"resolved to {self.device.type} (use bf16 on the CPU)")
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        # Early in training Adam's moments and gradients are tiny: denormal floats made CPU updates
        # up to 5x slower (benchmarks/train_throughput.py). Flushing them to zero costs no accuracy here.
        torch.set_flush_denormal(True)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)

        t = cfg.training
        self.model = build_model(cfg.model).to(self.device)
        self.optimizer = build_optimizer(self.model, t)
        self.forward: nn.Module = torch.compile(self.model) if t.compile else self.model
        amp_dtype = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(t.precision)
        self.autocast = torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype else None
        self.scaler = torch.amp.GradScaler(self.device.type) if t.precision is Precision.fp16 else None

        self.env = VecEnv(cfg.env.num_envs, max_plies=cfg.env.max_plies, declaration=cfg.env.declaration,
                          opening_plies=cfg.env.opening_plies)
        self.batch_size = cfg.env.num_envs * t.num_steps
        #: The run ends once global_step reaches total_timesteps (a whole number of batches past it).
        self.num_updates = math.ceil(t.total_timesteps / self.batch_size)
        self.global_step = 0
        self.update = 0
        self.pool: list[dict[str, torch.Tensor]] = []
        self.opponent = build_model(cfg.model).to(self.device).eval() if t.opponent_pool.size else None
        self.wandb_run_id: str | None = None
        self.games_total = 0
        self.eval_opponent: Player | None = None  # built at the first inline evaluation
        self.eval_pending: tuple[subprocess.Popen, int, Path] | None = None  # background: (process, step, dir)
        self.eval_win_rate: float | None = None

        resume = find_resume_checkpoint(cfg, run_dir)
        metrics = run_dir / "metrics.jsonl"
        if resume is not None:
            self.out = self._restore(resume)
            source = run_dir_of(resolve_checkpoint(resume)) / "metrics.jsonl"
            if not metrics.exists() and source.is_file():  # resuming another run dir: carry its history
                shutil.copyfile(source, metrics)
        else:
            self.out = self.env.reset(seed=cfg.seed)
        truncate_metrics(metrics, self.update)

    # --- checkpoints -----------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "config": to_container(self.cfg),
            "model": model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "global_step": self.global_step,
            "update": self.update,
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "env": self.env.state_dict(),
            "opponent_pool": self.pool,
            "wandb_run_id": self.wandb_run_id,
            "games_total": self.games_total,
        }

    def save(self, *names: str) -> None:
        """Write the current state to ``checkpoints/<name>`` for each name (state built once)."""
        state = self._state()
        for name in names:
            save_checkpoint(state, self.run_dir / "checkpoints" / name)

    def _restore(self, path: Path) -> StepResult:
        data = load_checkpoint(path, map_location=self.device)
        missing = [k for k in ("optimizer", "global_step", "update", "rng", "env") if k not in data]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)}); "
                                  "resume from a run's checkpoints/last.pt")
        saved, current = data["config"], to_container(self.cfg)
        for key in ("model", "env"):
            if saved[key] != current[key]:
                raise CheckpointError(f"{path}: its {key} config {saved[key]} differs from this run's; "
                                      f"resume with the same {key} settings")
        load_model_state(self.model, data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        if self.scaler is not None and data.get("scaler"):
            self.scaler.load_state_dict(data["scaler"])
        self.global_step, self.update = data["global_step"], data["update"]
        torch.set_rng_state(data["rng"]["torch"])
        self.shuffle.set_state(data["rng"]["shuffle"])
        if torch.cuda.is_available() and data["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(data["rng"]["cuda"])
        self.pool = list(data["opponent_pool"])
        self.wandb_run_id = data["wandb_run_id"]
        self.games_total = data["games_total"]
        log.info("resumed from %s at global_step %d (update %d)", path, self.global_step, self.update)
        return self.env.load_state_dict(data["env"])

    # --- rollout ---------------------------------------------------------------------
    def _policy_step(self, model: nn.Module, obs: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self.autocast if self.autocast is not None else nullcontext():
            logits, value = model(obs)
        dist = Categorical(logits=masked_logits(logits, mask))
        action = dist.sample()
        return action, dist.log_prob(action), value.float()

    def _values(self, obs: np.ndarray) -> torch.Tensor:
        with torch.no_grad(), self.autocast if self.autocast is not None else nullcontext():
            return self.forward(torch.from_numpy(obs).to(self.device))[1].float()

    def rollout(self) -> tuple[Batch, dict[str, float]]:
        cfg, n, steps, dev = self.cfg, self.cfg.env.num_envs, self.cfg.training.num_steps, self.device
        obs = torch.zeros((steps, n, *OBSERVATION_SHAPE), dtype=torch.uint8, device=dev)
        masks = torch.zeros((steps, n, NUM_ACTIONS), dtype=torch.bool, device=dev)
        actions = torch.zeros((steps, n), dtype=torch.long, device=dev)
        logprobs = torch.zeros((steps, n), device=dev)
        values = torch.zeros((steps, n), device=dev)
        rewards = torch.zeros((steps, n), device=dev)
        ended = torch.zeros((steps, n), dtype=torch.bool, device=dev)
        truncated = torch.zeros((steps, n), dtype=torch.bool, device=dev)
        final_values = torch.zeros((steps, n), device=dev)
        learner = torch.ones((steps, n), dtype=torch.bool, device=dev)

        # Games against a past snapshot: env i < pool_envs, the learner plays colour i % 2.
        pool_envs = 0
        if self.opponent is not None and self.pool:
            pick = int(torch.randint(len(self.pool), (1,), generator=self.shuffle))
            load_model_state(self.opponent, self.pool[pick])
            pool_envs = round(cfg.training.opponent_pool.fraction * n)
        learner_colour = torch.arange(n, device=dev) % 2
        self_play_env = torch.arange(n, device=dev) >= pool_envs

        self.model.eval()  # no BatchNorm statistics from rollout batches
        timing = Counter()
        for t in range(steps):
            t0 = time.perf_counter()
            obs[t] = torch.from_numpy(self.out.obs).to(dev)
            masks[t] = torch.from_numpy(self.out.legal_mask).to(dev)
            if pool_envs:
                to_play = torch.from_numpy(self.out.to_play).to(dev)
                learner[t] = self_play_env | (to_play == learner_colour)
            if pool_envs and not bool(learner[t].all()):
                mine, theirs = learner[t], ~learner[t]  # only the learner's moves are trained on
                actions[t, mine], logprobs[t, mine], values[t, mine] = self._policy_step(
                    self.forward, obs[t][mine], masks[t][mine])
                actions[t, theirs] = self._policy_step(self.opponent, obs[t][theirs], masks[t][theirs])[0]
            else:
                actions[t], logprobs[t], values[t] = self._policy_step(self.forward, obs[t], masks[t])
            t1 = time.perf_counter()
            self.out = self.env.step(actions[t].cpu().numpy())
            t2 = time.perf_counter()
            rewards[t] = torch.from_numpy(self.out.reward).to(dev)
            done = self.out.terminated | self.out.truncated
            ended[t] = torch.from_numpy(done).to(dev)
            truncated[t] = torch.from_numpy(self.out.truncated).to(dev)
            if self.out.truncated.any():
                rows = np.flatnonzero(self.out.truncated)
                final_values[t, torch.from_numpy(rows).to(dev)] = self._values(self.out.final_obs[rows])
            timing["inference"] += t1 - t0 + time.perf_counter() - t2
            timing["env"] += t2 - t1
        t0 = time.perf_counter()
        next_value = self._values(self.out.obs)
        advantages, returns = two_player_gae(rewards, ended, truncated, values, final_values, next_value,
                                             cfg.training.gamma, cfg.training.gae_lambda)
        timing["inference"] += time.perf_counter() - t0
        keep = learner.reshape(-1)
        batch = Batch(obs.reshape(-1, *OBSERVATION_SHAPE)[keep], masks.reshape(-1, NUM_ACTIONS)[keep],
                      actions.reshape(-1)[keep], logprobs.reshape(-1)[keep], values.reshape(-1)[keep],
                      advantages.reshape(-1)[keep], returns.reshape(-1)[keep])
        return batch, dict(timing)

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> float:
        cfg, t = self.cfg, self.cfg.training
        logger = MetricsLogger(self.run_dir, cfg, self.wandb_run_id)
        self.wandb_run_id = logger.wandb_run_id
        objective = float("nan")
        remaining = max(0, t.total_timesteps - self.global_step)
        bar = tqdm(total=self.global_step + math.ceil(remaining / self.batch_size) * self.batch_size,
                   initial=self.global_step, unit="step",
                   disable=not cfg.logging.progress_bar, dynamic_ncols=True, desc="train")
        with StopSignals() as stop:
            try:
                while self.global_step < t.total_timesteps:
                    start = time.perf_counter()
                    # Steps, not update counts, place the schedule: a resumed run may use another batch size.
                    lr = learning_rate(t, self.global_step // self.batch_size, self.num_updates)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    batch, timing = self.rollout()
                    t0 = time.perf_counter()
                    losses = ppo_update(self.forward, self.optimizer, batch, t, self.shuffle, self.autocast,
                                        self.scaler)
                    timing["update"] = time.perf_counter() - t0
                    self.update += 1
                    self.global_step += self.batch_size
                    if t.opponent_pool.size and self.update % t.opponent_pool.snapshot_interval == 0:
                        self.pool = [*self.pool, model_state(self.model)][-t.opponent_pool.size:]
                    record = self._record(lr, losses, timing, time.perf_counter() - start)
                    logger.log(record)
                    for evaluation in self._periodic_evaluation(last=self.global_step >= t.total_timesteps):
                        logger.log(evaluation)
                    objective = record["losses/explained_variance"] if self.eval_win_rate is None \
                        else self.eval_win_rate
                    bar.update(self.batch_size)
                    bar.set_postfix({"SPS": f"{record['charts/SPS']:.0f}",
                                     "pi": f"{losses['losses/policy_loss']:.3f}",
                                     "v": f"{losses['losses/value_loss']:.3f}",
                                     "games": record["games/finished_total"],
                                     "B/W/D": f"{record['games/black_win']:.2f}/{record['games/white_win']:.2f}/"
                                              f"{record['games/draw']:.2f}"})
                    last_interval = (self.global_step - self.batch_size) // t.checkpoint_interval
                    if self.global_step // t.checkpoint_interval > last_interval or stop.signum is not None:
                        self.save("last.pt")
                    if stop.signum is not None:  # preempted: the update is done and saved
                        print(f"stopped by signal {stop.signum} at global_step {self.global_step}: "
                              f"{self.run_dir}/checkpoints/last.pt written; the same command (or the requeued "
                              "job) resumes from it", file=sys.stderr, flush=True)
                        stop.forward()  # exits (submitit: requeues, then exits), unless the signal is ignored
                self.save("last.pt", "final.pt")
            finally:
                bar.close()
                logger.close()
                if self.eval_opponent is not None:
                    self.eval_opponent.close()
                if self.eval_pending is not None:  # interrupted: stop the worker (it closes its engine)
                    _stop_process(self.eval_pending[0])
        return objective

    # --- periodic evaluation ----------------------------------------------------------------
    def _periodic_evaluation(self, last: bool) -> list[dict[str, Any]]:
        """Evaluate when this update crosses ``evaluation.interval_timesteps``. Returns the metrics
        records of the evaluations that finished now, each tagged with ``eval/global_step``
        (the step it belongs to); background ones arrive one or more updates later."""
        ev = self.cfg.evaluation
        if not ev.interval_timesteps:
            return []
        interval = ev.interval_timesteps
        crossed = self.global_step // interval > (self.global_step - self.batch_size) // interval
        finished = []
        if ev.periodic is PeriodicMode.inline:
            if crossed:
                finished.append(self._evaluate_inline())
        else:
            finished.append(self._collect_background(wait=crossed))  # at most one evaluation in flight
            if crossed:
                self._launch_background()
            if last:
                finished.append(self._collect_background(wait=True))
        records = [{"update": self.update, **metrics} for metrics in finished if metrics]
        if records:
            self.eval_win_rate = records[-1]["eval/win_rate"]
        return records

    def _eval_dir(self) -> Path:
        return self.run_dir / "eval" / f"step_{self.global_step:09d}"

    def _evaluate_inline(self) -> dict[str, float]:
        cfg = self.cfg
        if self.eval_opponent is None:
            self.eval_opponent = build_opponent(cfg.opponent, self.device, cfg.seed + 1)
        agent = AgentPlayer(self.model, temperature=cfg.evaluation.temperature, device=self.device,
                            seed=cfg.seed + self.update)
        results = evaluate_agent(agent, self.eval_opponent, cfg.evaluation, self._eval_dir(),
                                 seed=cfg.seed + self.update)
        return eval_metrics(results, self.global_step)

    def _launch_background(self) -> None:
        cfg, out_dir, container = self.cfg, self._eval_dir(), to_container(self.cfg)
        snapshot = out_dir / "agent.pt"
        save_checkpoint({"config": container, "model": model_state(self.model), "global_step": self.global_step},
                        snapshot)
        spec = {"evaluation": container["evaluation"], "opponent": container["opponent"],
                "seed": cfg.seed + self.update, "device": str(self.device)}
        with open(out_dir / "worker.log", "w", encoding="utf-8") as logfile:
            proc = subprocess.Popen([sys.executable, "-m", "keisei.evaluation", str(snapshot), str(out_dir),
                                     json.dumps(spec)], stdout=logfile, stderr=subprocess.STDOUT)
        self.eval_pending = (proc, self.global_step, out_dir)

    def _collect_background(self, wait: bool) -> dict[str, float]:
        """Metrics of the background evaluation once it has finished (``wait``: block until then)."""
        if self.eval_pending is None:
            return {}
        proc, step, out_dir = self.eval_pending
        if proc.poll() is None and not wait:
            return {}
        proc.wait()
        self.eval_pending = None
        results = out_dir / "results.json"
        if proc.returncode != 0 or not results.is_file():
            log.warning("background evaluation of step %d failed (exit %s): see %s", step, proc.returncode,
                        out_dir / "worker.log")
            return {}
        return eval_metrics(json.loads(results.read_text(encoding="utf-8")), step)

    def _record(self, lr: float, losses: dict[str, float], timing: dict[str, float], wall: float
                ) -> dict[str, Any]:
        games = self.env.pop_finished()
        self.games_total += len(games)
        results = Counter(g.result for g in games)
        reasons = Counter(g.termination for g in games)
        record: dict[str, Any] = {"global_step": self.global_step, "update": self.update, **losses,
                                  "charts/learning_rate": lr, "charts/SPS": self.batch_size / wall}
        for key in ("env", "inference", "update"):
            record[f"time/{key}_share"] = timing.get(key, 0.0) / wall
        record["games/finished"] = len(games)
        record["games/finished_total"] = self.games_total
        record["games/length_mean"] = float(np.mean([g.ply for g in games])) if games else float("nan")
        for result, key in ((Result.BLACK_WIN, "black_win"), (Result.WHITE_WIN, "white_win"),
                            (Result.DRAW, "draw")):
            record[f"games/{key}"] = results[result] / len(games) if games else float("nan")
        for reason in Termination:
            if reason is not Termination.NONE:
                record[f"games/termination_{reason.name.lower()}"] = reasons[reason]
        return record


    def summary(self, objective: float) -> str:
        """What the run produced, for the console."""
        ckpt = self.run_dir / "checkpoints"
        return "\n".join([
            f"run dir:     {self.run_dir}",
            f"trained:     {self.global_step:,} env steps in {self.update} updates, "
            f"{self.games_total:,} self-play games finished",
            f"checkpoints: {ckpt / 'final.pt'} (and last.pt)",
            f"metrics:     {self.run_dir / 'metrics.jsonl'} (config: {self.run_dir / 'config.yaml'})",
            f"objective:   {objective:.4f} ("
            + ("latest evaluation win rate)" if self.eval_win_rate is not None
               else "explained variance of the value head in the last update)"),
        ])


def _stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (the evaluation worker then closes its engines), SIGKILL if it lingers; always reaped."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def train(cfg: TrainConfig, run_dir: Path) -> float:
    """Train per ``cfg`` in ``run_dir`` (resuming when ``cfg.resume`` or the run dir says so);
    prints a summary and returns the objective."""
    trainer = Trainer(cfg, run_dir)
    objective = trainer.run()
    print(trainer.summary(objective))
    return objective

