"""Ways of training, behind one small interface: ``collect`` experience from the env, ``learn`` from it.

The training loop (``keisei.train.loop``) and its scaffolding (``keisei.train.run``: checks, run
dir, checkpoints, metrics, periodic evaluation, preemption) are the same for every algorithm; an
algorithm adds its own collect / learn pair here, its config schema (``keisei.config.ALGORITHMS``)
and ``conf/algorithm/<name>.yaml``.
"""

from __future__ import annotations

from typing import Protocol

from keisei.config import PPOConfig, TrainConfig
from keisei.train.ppo import Batch, ppo_update
from keisei.train.rollout import RolloutStats, collect
from keisei.train.state import TrainState


class Algorithm(Protocol):
    def collect(self) -> tuple[Batch, RolloutStats]:
        """Play on in the env's games; the experience to learn from and what happened in the games."""
        ...

    def learn(self, batch: Batch) -> dict[str, float]:
        """Update the network from ``batch``; the ``losses/...`` metrics."""
        ...


class PPO:
    """``algorithm=ppo``: a rollout of ``num_steps`` moves per game, then clipped PPO epochs on it."""

    def __init__(self, cfg: PPOConfig, state: TrainState) -> None:
        self.cfg, self.state = cfg, state

    def collect(self) -> tuple[Batch, RolloutStats]:
        s, c = self.state, self.cfg
        return collect(s.policy, s.env, s.pool, c.num_steps, c.gamma, c.gae_lambda, c.bootstrap_truncated)

    def learn(self, batch: Batch) -> dict[str, float]:
        s = self.state
        return ppo_update(s.policy, s.optimizer, batch, self.cfg, s.cfg.training.max_grad_norm, s.generator,
                          s.scaler)


def build_algorithm(cfg: TrainConfig, state: TrainState) -> Algorithm:
    """The algorithm ``cfg.algorithm`` names, training ``state``."""
    if isinstance(cfg.algorithm, PPOConfig):
        return PPO(cfg.algorithm, state)
    raise ValueError(f"algorithm={cfg.algorithm.name}: no such algorithm")


def batch_size(cfg: TrainConfig, world: int) -> int:
    """Env steps of all ranks per update (one collect / learn pair of ``cfg.algorithm``)."""
    if isinstance(cfg.algorithm, PPOConfig):
        return cfg.env.num_envs * cfg.algorithm.num_steps * world
    raise ValueError(f"algorithm={cfg.algorithm.name}: no such algorithm")
