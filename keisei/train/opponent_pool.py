"""Training opponents besides the learner itself: past snapshots of the network and the heuristic
player, each assigned to a share of the games (``training.opponent_pool``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from keisei.config import OpponentPoolConfig
from keisei.env import Env
from keisei.nn.checkpoint import load_model_state, model_state
from keisei.nn.policy import Policy
from keisei.play.players import HeuristicPlayer
from keisei.shogi import move_to_action

#: ``OpponentPool.opponent`` of a self-play game and of a game against the heuristic player
#: (snapshot games hold the snapshot's id, >= 0).
SELF_PLAY, HEURISTIC = -1, -2


class OpponentPool:
    """Opponents other than the learner itself in a share of the games: past snapshots of the
    learner and the heuristic player (``size`` 0 and ``heuristic_fraction`` 0: pure self-play).

    Every new game is assigned when it starts: with probability ``heuristic_fraction`` it is
    played against ``keisei.play.players.HeuristicPlayer``, with probability ``fraction`` (once the
    pool holds a snapshot) against a snapshot drawn at random, the learner taking a random
    colour in both cases; otherwise it is a self-play game. A game keeps its opponent until it
    ends. Draws use ``generator``; the assignments and the heuristic player's generator are part
    of the checkpoint (``state_dict``).
    """

    def __init__(self, cfg: OpponentPoolConfig, make_policy: Callable[[], Policy] | None,
                 generator: torch.Generator, seed: int = 0) -> None:
        self.cfg = cfg
        self.make_policy = make_policy  # a fresh network of the learner's shape, for one snapshot
        self.generator = generator
        self.heuristic = HeuristicPlayer(seed=seed) if cfg.heuristic_fraction > 0 else None
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}  # id -> weights (the newest ``size``)
        self.next_id = 0
        self.opponent = np.full(0, -1, dtype=np.int64)  # per env: snapshot id of its game, -1 self-play
        self.learner_colour = np.zeros(0, dtype=np.int8)  # per env, for pool games: 0 Black, 1 White
        self._policies: dict[int, Policy] = {}

    def add(self, policy: Policy, update: int) -> None:
        """Keep a snapshot of ``policy`` when ``update`` is a multiple of the snapshot interval."""
        if self.cfg.size and update % self.cfg.snapshot_interval == 0:
            self.snapshots[self.next_id] = model_state(policy.model)
            self.next_id += 1
            for old in sorted(self.snapshots)[:-self.cfg.size]:
                if old in self.opponent:
                    self.policy(old)  # a game assigned it keeps it, even one whose opponent has not moved yet
                del self.snapshots[old]

    def assign(self, envs: np.ndarray | list[int], num_envs: int) -> None:
        """Draw the opponent of the new games in ``envs``."""
        if self.opponent.shape[0] != num_envs:
            self.opponent = np.full(num_envs, -1, dtype=np.int64)
            self.learner_colour = np.zeros(num_envs, dtype=np.int8)
        self.opponent[np.asarray(envs, dtype=np.int64)] = SELF_PLAY
        ids = sorted(self.snapshots) if self.make_policy is not None else []
        heuristic = self.cfg.heuristic_fraction if self.heuristic is not None else 0.0
        if not ids and not heuristic:
            return  # pure self-play (or an empty pool): nothing to draw, no network to keep
        for i in envs:
            u, pick, colour = torch.rand(3, generator=self.generator).tolist()
            if u < heuristic:
                self.opponent[i] = HEURISTIC
            elif ids and u < heuristic + self.cfg.fraction:
                self.opponent[i] = ids[min(int(pick * len(ids)), len(ids) - 1)]
            else:
                continue
            self.learner_colour[i] = int(colour < 0.5)
        live = set(self.opponent.tolist())
        self._policies = {k: v for k, v in self._policies.items() if k in live}

    def policy(self, snapshot: int) -> Policy:
        """The network of snapshot ``snapshot`` (loaded once, kept while a game plays it)."""
        if snapshot not in self._policies:
            assert self.make_policy is not None
            weights = self.snapshots[snapshot]
            self._policies[snapshot] = policy = self.make_policy()
            load_model_state(policy.model, weights)
        return self._policies[snapshot]

    def _weights(self, snapshot: int) -> dict[str, torch.Tensor]:
        if snapshot in self.snapshots:
            return self.snapshots[snapshot]
        return model_state(self._policies[snapshot].model)

    def state_dict(self) -> dict:
        """Snapshots (those still played included) and each env's assignment, for exact resume."""
        live = {int(k) for k in self.opponent.tolist() if k >= 0}
        state = {"snapshots": {k: self._weights(k) for k in sorted(set(self.snapshots) | live)},
                 "pool": sorted(self.snapshots), "next_id": self.next_id,
                 "opponent": self.opponent.tolist(), "learner_colour": self.learner_colour.tolist()}
        if self.heuristic is not None:
            state["heuristic_rng"] = self.heuristic.rng.bit_generator.state
        return state

    def load_state_dict(self, state: dict | list) -> None:
        if isinstance(state, list):  # written before games kept their opponent: snapshots only
            self.snapshots = dict(enumerate(state))
            self.next_id = len(state)
            self.opponent = np.full(0, -1, dtype=np.int64)
            return
        weights = {int(k): v for k, v in state["snapshots"].items()}
        self.snapshots = {k: weights[k] for k in state["pool"]}
        self.next_id = state["next_id"]
        self.opponent = np.array(state["opponent"], dtype=np.int64)
        # A resume that turned an opponent off: the games in progress against it go on as self-play games.
        if self.make_policy is None:
            self.opponent[self.opponent >= 0] = SELF_PLAY
        if self.heuristic is None:
            self.opponent[self.opponent == HEURISTIC] = SELF_PLAY
        self.learner_colour = np.array(state["learner_colour"], dtype=np.int8)
        if self.heuristic is not None and "heuristic_rng" in state:
            self.heuristic.rng.bit_generator.state = state["heuristic_rng"]
        self._policies = {}
        for k in {int(k) for k in self.opponent.tolist() if k >= 0}:
            self._policies[k] = self.make_policy()  # type: ignore[misc]
            load_model_state(self._policies[k].model, weights[k])


def heuristic_actions(pool: OpponentPool, env: Env, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """The heuristic player's action label in each game of ``rows`` (a boolean mask over the envs)."""
    games = getattr(env, "games", None)
    if games is None or pool.heuristic is None:
        raise RuntimeError("the heuristic player needs the games in this process (env.workers=1)")
    playing = [games[i] for i in np.flatnonzero(rows).tolist()]
    labels = [move_to_action(move, game.turn.value) for move, game in zip(pool.heuristic.choose(playing), playing)]
    return torch.tensor(labels, dtype=torch.long, device=device)
