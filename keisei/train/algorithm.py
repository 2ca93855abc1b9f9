"""Ways of training, behind one small interface: ``collect`` experience (played in the env: PPO's sampled
moves or ``algorithm=gumbel_az``'s searched ones; or read from files: ``algorithm=supervised``), ``learn``
from it. An algorithm with state of its own (a replay buffer, the row counts of its files) also has
``state_dict`` / ``load_state_dict`` (``Stateful``): the checkpoint keeps it per rank.

The training loop (``keisei.train.loop``) and its scaffolding (``keisei.train.run``: checks, run
dir, checkpoints, metrics, periodic evaluation, preemption) are the same for every algorithm; an
algorithm adds its own collect / learn pair here, its config schema (``keisei.config.ALGORITHMS``)
and ``conf/algorithm/<name>.yaml``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from keisei.config import ConfigError, GumbelAZConfig, PPOConfig, SupervisedConfig, TrainConfig
from keisei.train.gumbel_az import Replay, SelfPlay, gumbel_az_update
from keisei.train.ppo import Batch, ppo_update
from keisei.train.rollout import RolloutStats, collect
from keisei.train.state import TrainState
from keisei.train.supervised import HcpeStream, Positions, rank_and_world, supervised_update, validation_metrics


class Algorithm(Protocol):
    #: The run's objective when periodic evaluation is off: (the metric of an update that sets it, what it is).
    objective: tuple[str, str]

    def collect(self) -> tuple[Any, RolloutStats]:
        """The experience to learn from (played in the env's games, or read) and what happened in the games."""
        ...

    def learn(self, batch: Any) -> dict[str, float]:
        """Update the network from ``batch``; the metrics of the update (``losses/...``, and any others the
        algorithm logs with them, such as supervised training's ``val/...``)."""
        ...


class Stateful(Protocol):
    """An algorithm with state of its own beyond the network and the env (``algorithm=gumbel_az``: its replay
    buffer): each rank's ``state_dict()`` is saved in the checkpoint with that rank's own state
    (``keisei.train.state.TrainState.attach``), and a resumed run gives it back to ``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PPO:
    """``algorithm=ppo``: a rollout of ``num_steps`` moves per game, then clipped PPO epochs on it."""

    objective = ("losses/explained_variance", "explained variance of the value head in the last update")

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


class Supervised:
    """``algorithm=supervised``: a batch of positions read from hcpe files (best move, value target),
    then one optimiser step on it; every ``validation_interval`` updates and at the last one, the
    held-out positions' ``val/...`` metrics join the update's (``keisei.train.supervised``)."""

    objective = ("val/accuracy", "move accuracy on the held-out positions at the latest validation")

    def __init__(self, cfg: SupervisedConfig, state: TrainState) -> None:
        self.cfg, self.state = cfg, state
        self.stream = HcpeStream(cfg, state.cfg.seed, state.policy.device)

    @staticmethod
    def steps_per_update(cfg: TrainConfig) -> int:
        """Positions of one rank per update: one env step is one training position."""
        return cfg.algorithm.batch_size

    def collect(self) -> tuple[Positions, RolloutStats]:
        return self.stream.batch(self.state.global_step)

    def learn(self, batch: Positions) -> dict[str, float]:
        s = self.state
        metrics = supervised_update(s.policy, s.optimizer, batch, self.cfg, s.cfg.training.max_grad_norm, s.scaler)
        if self.stream.rank == 0 and self._validation_due():
            metrics.update(validation_metrics(s.policy, self.stream.held_out()))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """The names of the files this run reads and their row counts (those of its start): a file that grows
        meanwhile (label.py still writing it) changes neither the split nor the order of a resumed run."""
        return {"rows": list(self.stream.data.rows), "files": [path.name for path in self.stream.data.paths]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume on the files the run started on (by name: a folder moved keeps them; checkpoints without
        names are checked by the files' number only) and their rows of that time."""
        started, now = state.get("files"), [path.name for path in self.stream.data.paths]
        if started is not None and started != now:
            raise ConfigError(f"algorithm.train: the files {now}, {started} when this run started: resume with "
                              "the files it started on, or start a new run")
        self.stream.resume(state["rows"])

    def _validation_due(self) -> bool:
        """This update (not counted yet in the state) is a multiple of ``validation_interval`` or the last."""
        s = self.state
        last = s.global_step + self.cfg.batch_size * self.stream.world >= s.cfg.training.total_timesteps
        return (s.update + 1) % self.cfg.validation_interval == 0 or last


class GumbelAZ:
    """``algorithm=gumbel_az``: ``num_steps`` moves per game, each chosen by a Gumbel-root search, the
    finished games' positions into a replay buffer, then ``samples_per_position`` optimiser steps' worth of
    minibatches from it (``keisei.train.gumbel_az``). Its buffer and the positions of the games in
    progress are part of each rank's checkpoint state (``Stateful``)."""

    objective = ("losses/accuracy", "share of sampled positions whose most likely move is the search's, last update")

    def __init__(self, cfg: GumbelAZConfig, state: TrainState) -> None:
        self.cfg, self.state = cfg, state
        rank, _ = rank_and_world()
        seed = int(np.random.SeedSequence([state.cfg.seed % 2**63, rank]).generate_state(1)[0])
        self.selfplay = SelfPlay(cfg, state.env, state.policy, state.generator, seed)

    @staticmethod
    def steps_per_update(cfg: TrainConfig) -> int:
        """Moves of one rank per collect / learn pair: ``num_steps`` in every game."""
        return cfg.env.num_envs * cfg.algorithm.num_steps

    def collect(self) -> tuple[Replay, RolloutStats]:
        return self.selfplay.collect()

    def learn(self, batch: Replay) -> dict[str, float]:
        s = self.state
        return gumbel_az_update(s.policy, s.optimizer, batch, self.cfg, s.cfg.training.max_grad_norm, s.scaler)

    def state_dict(self) -> dict[str, Any]:
        return self.selfplay.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selfplay.load_state_dict(state)


#: The algorithm of each ``algorithm`` config type.
BY_CONFIG: dict[type, type] = {PPOConfig: PPO, SupervisedConfig: Supervised, GumbelAZConfig: GumbelAZ}


def build_algorithm(cfg: TrainConfig, state: TrainState) -> Algorithm:
    """The algorithm ``cfg.algorithm`` names, training ``state``."""
    return BY_CONFIG[type(cfg.algorithm)](cfg.algorithm, state)


def objective(cfg: TrainConfig) -> tuple[str, str]:
    """The metric that is the run's objective when periodic evaluation is off, and what it is."""
    return BY_CONFIG[type(cfg.algorithm)].objective


def batch_size(cfg: TrainConfig, world: int) -> int:
    """Env steps of all ranks per update (one collect / learn pair of ``cfg.algorithm``)."""
    return BY_CONFIG[type(cfg.algorithm)].steps_per_update(cfg) * world
