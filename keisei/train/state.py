"""What a training checkpoint holds, and putting it back: the state of a run between two updates.

``TrainState`` gathers the objects that change during training (network, optimizer, gradient
scaler, the generator of minibatch order and opponent draws, the env's games in progress, the
opponent pool) and the run's counters. ``save`` writes it through the one checkpoint format
(``keisei.nn.checkpoint``); ``load`` restores it exactly, so a resumed run continues bit for bit
where the saved one was.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keisei.config import Precision, TrainConfig, to_container
from keisei.env import Env, make_env
from keisei.nn.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    model_state,
    resolve_checkpoint,
    save_checkpoint,
)
from keisei.nn.model import build_model
from keisei.nn.policy import Policy
from keisei.train import distributed
from keisei.train.opponent_pool import OpponentPool
from keisei.train.optim import build_optimizer

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    cfg: TrainConfig
    policy: Policy
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator  # minibatch order and the opponent pool's draws
    env: Env  # a VecEnv, or its shards in worker processes (env.workers > 1)
    pool: OpponentPool
    global_step: int = 0
    update: int = 0
    games_total: int = 0
    wandb_run_id: str | None = None
    #: What the run returns to a sweeper (see keisei.train.loop), kept so that a run resumed with nothing
    #: left to train still reports it; ``eval_win_rate`` the latest periodic evaluation's, if any (its win
    #: rate, or with ``evaluation=ladder`` its ladder Elo; the name is the checkpoint's key).
    objective: float = float("nan")
    eval_win_rate: float | None = None
    #: The network the run started from (``training.init_checkpoint``), frozen: what ``losses/init_kl``
    #: and ``algorithm.init_kl_coef`` compare with; None for a run started from scratch.
    init_policy: Policy | None = None
    #: The algorithm whose own state (``state_dict()``: ``algorithm=gumbel_az``'s replay buffer,
    #: ``algorithm=supervised``'s row counts) each rank saves under ``"algorithm"`` (``attach``); None for
    #: one without (PPO).
    algorithm: Any = None
    #: That state as loaded from the checkpoint resumed from, until ``attach`` hands it to the algorithm.
    algorithm_state: dict[str, Any] | None = None

    @classmethod
    def create(cls, cfg: TrainConfig, device: torch.device, init_checkpoint: str | Path | None = None
               ) -> TrainState:
        """A fresh run's state (call after seeding): a new network, optimizer and env (not reset yet).
        With ``init_checkpoint`` the network has that checkpoint's weights (its model config must be
        this run's), and ``init_policy`` is a frozen copy of them; the rest starts fresh."""
        t = cfg.training
        model = build_model(cfg.model).to(device)
        amp_dtype = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(t.precision)
        init_policy = None
        if init_checkpoint is not None:
            load_init_weights(model, init_checkpoint, cfg)
            init_policy = frozen_copy(model, amp_dtype)
        policy = Policy(model, forward=torch.compile(model) if t.compile else None, autocast_dtype=amp_dtype)
        generator = torch.Generator().manual_seed(cfg.seed)

        def opponent() -> Policy:
            # A network to load a snapshot into: its initial weights must not draw from the global
            # generator (when one is built would then change the run's samples, and exact resume).
            with torch.random.fork_rng(devices=[]):
                return Policy(build_model(cfg.model).to(device).eval())

        return cls(
            cfg=cfg, policy=policy, optimizer=build_optimizer(model, t),
            scaler=torch.amp.GradScaler(device.type) if t.precision is Precision.fp16 else None,
            generator=generator,
            env=make_env(cfg.env),
            pool=OpponentPool(t.opponent_pool, opponent if t.opponent_pool.size else None, generator,
                              seed=cfg.seed),
            init_policy=init_policy,
        )

    def attach(self, algorithm: Any) -> None:
        """Keep ``algorithm``'s own state in this state's checkpoints when it has one (``state_dict`` and
        ``load_state_dict``), and give it the state of the checkpoint resumed from, if that has one."""
        if not hasattr(algorithm, "state_dict"):
            return
        self.algorithm = algorithm
        if self.algorithm_state is not None:
            algorithm.load_state_dict(self.algorithm_state)
            self.algorithm_state = None

    def rank_state(self) -> dict[str, Any]:
        """What differs between the ranks of a distributed run: random generators, games, pool draws,
        the algorithm's own state (if any)."""
        state = {
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "env": self.env.state_dict(),
            "opponent_pool": self.pool.state_dict(),
        }
        if self.algorithm is not None:
            state["algorithm"] = self.algorithm.state_dict()
        return state

    def state_dict(self, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint: the shared state, this rank's (rank 0's) own, and with several ranks
        every rank's own under ``ranks``."""
        state = {
            "config": to_container(self.cfg),
            "model": model_state(self.policy.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "global_step": self.global_step,
            "update": self.update,
            **(ranks[0] if ranks else self.rank_state()),  # rank 0's own (gathered already: not built twice)
            "wandb_run_id": self.wandb_run_id,
            "games_total": self.games_total,
            "objective": self.objective,
            "eval_win_rate": self.eval_win_rate,
            "world_size": len(ranks) if ranks else 1,
        }
        if self.init_policy is not None:
            state["init_model"] = model_state(self.init_policy.model)
        if ranks and len(ranks) > 1:
            state["ranks"] = ranks
        return state

    def save(self, run_dir: Path, *names: str) -> None:
        """Write the state to ``run_dir/checkpoints/<name>`` for each name (state built once). With
        several ranks every rank calls this: rank 0 gathers the others' own state and writes."""
        ranks = distributed.gather(self.rank_state())
        if ranks is None:
            return  # not rank 0
        state = self.state_dict(ranks)
        for name in names:
            save_checkpoint(state, run_dir / "checkpoints" / name)

    def load(self, path: Path, rank: int = 0, world: int = 1) -> None:
        """Restore a training checkpoint written with the same model and env settings (and, for a
        distributed run, the same number of ranks; ``rank`` takes its own part)."""
        # Read onto the CPU whatever the device: random generators take CPU states only, and the model,
        # optimiser and pool copy their tensors to the network's device as they load them.
        data = load_checkpoint(path)
        missing = [k for k in ("optimizer", "global_step", "update", "rng", "env") if k not in data]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)}); "
                                  "resume from a run's checkpoints/last.pt")
        saved, current = data["config"], to_container(self.cfg)
        saved["env"].pop("workers", None), current["env"].pop("workers", None)  # any worker count resumes
        trained_by = saved.get("algorithm", {}).get("name", "ppo")
        if trained_by != current["algorithm"]["name"]:
            raise CheckpointError(f"{path}: written by algorithm={trained_by}, this run has "
                                  f"algorithm={current['algorithm']['name']}; resume with algorithm={trained_by}, "
                                  "or start a new run from its network (training.init_checkpoint)")
        for key in ("model", "env"):
            differ = config_differences(saved, current, key)
            if differ:
                raise CheckpointError(f"{path}: this run's {key} config differs from the checkpoint's: "
                                      f"{', '.join(differ)}; resume with the same {key} settings")
        init_kl_coef = getattr(self.cfg.algorithm, "init_kl_coef", 0.0)
        if init_kl_coef > 0 and "init_model" not in data:
            raise CheckpointError(f"{path}: algorithm.init_kl_coef={init_kl_coef} needs the network the run started "
                                  "from, and this checkpoint's run did not start from training.init_checkpoint (a "
                                  "resumed run ignores it); resume with algorithm.init_kl_coef=0")
        written = data.get("world_size", 1)
        if written != world:
            raise CheckpointError(f"{path}: written by a run of {written} process(es), this run has {world}; "
                                  f"resume with the same number (torchrun --nproc_per_node / "
                                  f"hydra.launcher.tasks_per_node x nodes)")
        own = data["ranks"][rank] if world > 1 else data
        load_model_state(self.policy.model, data["model"])
        self.init_policy = None
        if "init_model" in data:  # the run started from training.init_checkpoint: its network, as saved
            self.init_policy = frozen_copy(self.policy.model, self.policy.autocast_dtype)
            load_model_state(self.init_policy.model, data["init_model"])
        load_optimizer_state(self.optimizer, data["optimizer"])
        if self.scaler is not None and data.get("scaler"):
            self.scaler.load_state_dict(data["scaler"])
        self.global_step, self.update = data["global_step"], data["update"]
        torch.set_rng_state(own["rng"]["torch"])
        self.generator.set_state(own["rng"]["shuffle"])
        if torch.cuda.is_available() and own["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(own["rng"]["cuda"])
        self.pool.load_state_dict(own["opponent_pool"])
        self.wandb_run_id = data["wandb_run_id"]
        self.games_total = data["games_total"]
        self.objective = data.get("objective", float("nan"))  # absent before format v2
        self.eval_win_rate = data.get("eval_win_rate")
        if evaluation_target(saved) != evaluation_target(current):  # another scale: not this run's objective
            self.objective, self.eval_win_rate = float("nan"), None
        self.env.load_state_dict(own["env"])
        self.algorithm_state = own.get("algorithm")  # for the algorithm, once built (``attach``)
        log.info("resumed from %s at global_step %d (update %d)", path, self.global_step, self.update)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """The saved moments and step counts into ``optimizer``, which keeps its own settings (this run's
    ``training.optimizer`` and ``training.weight_decay``; torch's ``load_state_dict`` would put back the
    saved run's; the learning rate is set at every update anyway)."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)


def evaluation_target(config: dict[str, Any]) -> tuple[Any, ...]:
    """What the periodic evaluation of ``config`` (a ``to_container`` dict) measures: nothing (off), the
    ladder Elo on its rungs, or the win rate against ``opponent``; two configs' figures compare only when equal."""
    ev = config.get("evaluation", {})
    if not ev.get("interval_timesteps"):
        return ("off",)
    against = tuple(ev.get("players", ())) if ev.get("mode") == "ladder" else config.get("opponent")
    return ev.get("mode"), against, ev.get("max_plies"), ev.get("search")


def config_differences(saved: dict[str, Any], current: dict[str, Any], key: str) -> list[str]:
    """``key.k=<this run's> (checkpoint: <saved>)`` for each key of the saved ``key`` group that differs."""
    return [f"{key}.{k}={current[key].get(k)!r} (checkpoint: {v!r})" for k, v in saved[key].items()
            if current[key].get(k) != v]


def load_init_weights(model: nn.Module, path: str | Path, cfg: TrainConfig) -> None:
    """Put ``training.init_checkpoint``'s weights into ``model``, refusing a checkpoint of another model config."""
    file = resolve_checkpoint(path)
    data = load_checkpoint(file, map_location=next(model.parameters()).device)
    differ = config_differences(data["config"], to_container(cfg), "model")
    if differ:
        raise CheckpointError(f"{file}: training.init_checkpoint's model config differs from this run's: "
                              f"{', '.join(differ)}; start with the checkpoint's model settings")
    try:
        load_model_state(model, data["model"])
    except RuntimeError as exc:  # a checkpoint from before a model key existed, its weights of another shape
        raise CheckpointError(f"{file}: training.init_checkpoint's weights do not fit this run's model "
                              f"({str(exc).splitlines()[0].rstrip(':.')})") from None
    log.info("started from the weights of %s", file)


def frozen_copy(model: nn.Module, autocast_dtype: torch.dtype | None) -> Policy:
    """A copy of ``model`` that does not train (eval mode, no gradients), as a ``Policy``."""
    return Policy(copy.deepcopy(model).eval().requires_grad_(False), autocast_dtype=autocast_dtype)
