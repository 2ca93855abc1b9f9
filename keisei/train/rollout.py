"""Rollouts: play ``num_steps`` moves in every game of a ``VecEnv`` and return the learner's batch.

``collect(policy, env, pool, ...)`` is one rollout: at each step the policy picks a move in
every game (a past snapshot from the ``OpponentPool`` plays its side of the pool's games),
the env plays them, and the buffers record what the PPO update needs. Advantages come from
``keisei.train.ppo.two_player_gae`` over the whole (T, N) rollout; the batch keeps only the
learner's moves.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from keisei.config import OpponentPoolConfig
from keisei.env.vec_env import Env
from keisei.nn.checkpoint import load_model_state, model_state
from keisei.nn.policy import Policy
from keisei.play.players import HeuristicPlayer
from keisei.shogi import NUM_ACTIONS, OBSERVATION_SHAPE, Game, move_to_action
from keisei.train.ppo import Batch, two_player_gae

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
                del self.snapshots[old]  # games already playing it keep their opponent (see policy)

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
            self._policies[snapshot] = self.make_policy()
            load_model_state(self._policies[snapshot].model, self._weights(snapshot))
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
        self.learner_colour = np.array(state["learner_colour"], dtype=np.int8)
        if self.heuristic is not None and "heuristic_rng" in state:
            self.heuristic.rng.bit_generator.state = state["heuristic_rng"]
        self._policies = {}
        for k in {int(k) for k in self.opponent.tolist() if k >= 0}:
            self._policies[k] = self.make_policy()  # type: ignore[misc]
            load_model_state(self._policies[k].model, weights[k])


@dataclass
class RolloutStats:
    """What a rollout reports besides the batch."""

    timing: dict[str, float]  # seconds in inference and in the env
    games: list[Game] = field(default_factory=list)  # self-play games that ended
    pool_scores: list[float] = field(default_factory=list)  # the learner's score (1, 0.5, 0) per snapshot game
    heuristic_scores: list[float] = field(default_factory=list)  # the same, per game against the heuristic player


def heuristic_actions(pool: OpponentPool, env: Env, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """The heuristic player's action label in each game of ``rows`` (a boolean mask over the envs)."""
    games = getattr(env, "games", None)
    if games is None or pool.heuristic is None:
        raise RuntimeError("the heuristic player needs the games in this process (env.workers=1)")
    playing = [games[i] for i in np.flatnonzero(rows).tolist()]
    labels = [move_to_action(move, game.turn.value) for move, game in zip(pool.heuristic.choose(playing), playing)]
    return torch.tensor(labels, dtype=torch.long, device=device)


def collect(policy: Policy, env: Env, pool: OpponentPool, num_steps: int, gamma: float, gae_lambda: float,
            bootstrap_truncated: bool = True) -> tuple[Batch, RolloutStats]:
    """One rollout of ``num_steps`` moves per game from ``env.current``: the learner's batch, the games
    that ended (self-play games apart from pool games) and the seconds spent in inference and in the env.
    A game cut at the env's max plies bootstraps from the value of its final position
    (``bootstrap_truncated``) or ends there as a draw (target 0, as a match scores it)."""
    n, dev = env.num_envs, policy.device
    obs = torch.zeros((num_steps, n, *OBSERVATION_SHAPE), dtype=torch.uint8, device=dev)
    masks = torch.zeros((num_steps, n, NUM_ACTIONS), dtype=torch.bool, device=dev)
    actions = torch.zeros((num_steps, n), dtype=torch.long, device=dev)
    logprobs = torch.zeros((num_steps, n), device=dev)
    values = torch.zeros((num_steps, n), device=dev)
    rewards = torch.zeros((num_steps, n), device=dev)
    ended = torch.zeros((num_steps, n), dtype=torch.bool, device=dev)
    truncated = torch.zeros((num_steps, n), dtype=torch.bool, device=dev)
    final_values = torch.zeros((num_steps, n), device=dev)
    learner = torch.ones((num_steps, n), dtype=torch.bool, device=dev)

    if pool.opponent.shape[0] != n:  # the first rollout: every game in progress is new to the pool
        pool.assign(range(n), n)
    policy.model.eval()  # the same function as the update (see ppo_update)
    stats = RolloutStats(timing=Counter())
    timing = stats.timing
    out = env.current
    for t in range(num_steps):
        t0 = time.perf_counter()
        obs[t] = torch.from_numpy(out.obs).to(dev)
        masks[t] = torch.from_numpy(out.legal_mask).to(dev)
        opponent_rows = (pool.opponent != SELF_PLAY) & (out.to_play != pool.learner_colour)
        if opponent_rows.any():
            learner[t] = torch.from_numpy(~opponent_rows).to(dev)  # only the learner's moves are trained on
            mine = learner[t]
            actions[t, mine], logprobs[t, mine], values[t, mine] = policy.act(obs[t][mine], masks[t][mine])
            for snapshot in np.unique(pool.opponent[opponent_rows]).tolist():
                rows = opponent_rows & (pool.opponent == snapshot)
                picked = torch.from_numpy(rows).to(dev)
                if snapshot == HEURISTIC:
                    actions[t, picked] = heuristic_actions(pool, env, rows, dev)
                else:
                    actions[t, picked] = pool.policy(snapshot).act(obs[t][picked], masks[t][picked])[0]
        else:
            actions[t], logprobs[t], values[t] = policy.act(obs[t], masks[t])
        t1 = time.perf_counter()
        moved_learner = ~opponent_rows
        out = env.step(actions[t].cpu().numpy())
        t2 = time.perf_counter()
        ended_envs = np.flatnonzero(out.terminated | out.truncated)
        if ended_envs.size:
            finished = env.pop_finished()  # this step's games, in env order
            if len(finished) != ended_envs.size:
                raise RuntimeError(f"the env kept {len(finished)} of the {ended_envs.size} games that ended in "
                                   "one step: create it with keep_finished >= num_envs")
            for i, game in zip(ended_envs.tolist(), finished):
                if pool.opponent[i] != SELF_PLAY:
                    mover_score = (float(out.reward[i]) + 1) / 2
                    scores = stats.heuristic_scores if pool.opponent[i] == HEURISTIC else stats.pool_scores
                    scores.append(mover_score if moved_learner[i] else 1 - mover_score)
                else:
                    stats.games.append(game)
            pool.assign(ended_envs, n)
        rewards[t] = torch.from_numpy(out.reward).to(dev)
        ended[t] = torch.from_numpy(out.terminated | out.truncated).to(dev)
        if bootstrap_truncated and out.truncated.any():
            truncated[t] = torch.from_numpy(out.truncated).to(dev)
            rows = torch.from_numpy(np.flatnonzero(out.truncated)).to(dev)
            final_values[t, rows] = policy.value(torch.from_numpy(out.final_obs[out.truncated]).to(dev))
        timing["inference"] += t1 - t0 + time.perf_counter() - t2
        timing["env"] += t2 - t1
    t0 = time.perf_counter()
    next_value = policy.value(torch.from_numpy(out.obs).to(dev))
    advantages, returns = two_player_gae(rewards, ended, truncated, values, final_values, next_value,
                                         gamma, gae_lambda)
    timing["inference"] += time.perf_counter() - t0
    keep = learner.reshape(-1)
    batch = Batch(obs.reshape(-1, *OBSERVATION_SHAPE)[keep], masks.reshape(-1, NUM_ACTIONS)[keep],
                  actions.reshape(-1)[keep], logprobs.reshape(-1)[keep], values.reshape(-1)[keep],
                  advantages.reshape(-1)[keep], returns.reshape(-1)[keep])
    stats.timing = dict(timing)
    return batch, stats
