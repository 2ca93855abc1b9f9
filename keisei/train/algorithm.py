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

    @staticmethod
    def steps_per_update(cfg: TrainConfig) -> int:
        """Env steps of one rank per collect / learn pair: a rollout of every game."""
        return cfg.env.num_envs * cfg.algorithm.num_steps

    def collect(self) -> tuple[Batch, RolloutStats]:
        s, c = self.state, self.cfg
        return collect(s.policy, s.env, s.pool, c.num_steps, c.gamma, c.gae_lambda, c.bootstrap_truncated)

    def learn(self, batch: Batch) -> dict[str, float]:
        s = self.state
        return ppo_update(s.policy, s.optimizer, batch, self.cfg, s.cfg.training.max_grad_norm, s.generator,
                          s.scaler, s.init_policy)


#: The algorithm of each ``algorithm`` config type.
BY_CONFIG: dict[type, type] = {PPOConfig: PPO}


def build_algorithm(cfg: TrainConfig, state: TrainState) -> Algorithm:
    """The algorithm ``cfg.algorithm`` names, training ``state``."""
    return BY_CONFIG[type(cfg.algorithm)](cfg.algorithm, state)


def batch_size(cfg: TrainConfig, world: int) -> int:
    """Env steps of all ranks per update (one collect / learn pair of ``cfg.algorithm``)."""
    return BY_CONFIG[type(cfg.algorithm)].steps_per_update(cfg) * world
