"""Rollouts: play ``num_steps`` moves in every game of a ``VecEnv`` and return the learner's batch.

``collect(policy, env, pool, ...)`` is one rollout: at each step the policy picks a move in
every game (a past snapshot or the heuristic player from the ``OpponentPool`` plays its side of
the pool's games), the env plays them, and the buffers record what the PPO update needs.
Advantages come from ``keisei.train.ppo.two_player_gae`` over the whole (T, N) rollout; the
batch keeps only the learner's moves.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from keisei.env import Env, StepResult
from keisei.nn.policy import Policy
from keisei.shogi import NUM_ACTIONS, OBSERVATION_SHAPE, Game
from keisei.train.opponent_pool import HEURISTIC, SELF_PLAY, OpponentPool, heuristic_actions
from keisei.train.ppo import Batch, two_player_gae


@dataclass
class RolloutStats:
    """What a rollout reports besides the batch."""

    timing: dict[str, float]  # seconds in inference and in the env
    games: list[Game] = field(default_factory=list)  # self-play games that ended
    pool_scores: list[float] = field(default_factory=list)  # the learner's score (1, 0.5, 0) per snapshot game
    heuristic_scores: list[float] = field(default_factory=list)  # the same, per game against the heuristic player


class Buffers:
    """The (T, N) tensors of one rollout, on the policy's device."""

    def __init__(self, num_steps: int, n: int, device: torch.device) -> None:
        shape = (num_steps, n)
        self.obs = torch.zeros((*shape, *OBSERVATION_SHAPE), dtype=torch.uint8, device=device)
        self.masks = torch.zeros((*shape, NUM_ACTIONS), dtype=torch.bool, device=device)
        self.actions = torch.zeros(shape, dtype=torch.long, device=device)
        self.logprobs, self.values, self.rewards, self.final_values = (torch.zeros(shape, device=device)
                                                                       for _ in range(4))
        self.ended = torch.zeros(shape, dtype=torch.bool, device=device)
        self.truncated = torch.zeros(shape, dtype=torch.bool, device=device)
        self.learner = torch.ones(shape, dtype=torch.bool, device=device)  # moves the batch keeps

    def batch(self, advantages: torch.Tensor, returns: torch.Tensor) -> Batch:
        """The learner's moves, flattened."""
        keep = self.learner.reshape(-1)
        return Batch(self.obs.reshape(-1, *OBSERVATION_SHAPE)[keep], self.masks.reshape(-1, NUM_ACTIONS)[keep],
                     *(x.reshape(-1)[keep] for x in (self.actions, self.logprobs, self.values, advantages, returns)))


def collect(policy: Policy, env: Env, pool: OpponentPool, num_steps: int, gamma: float, gae_lambda: float,
            bootstrap_truncated: bool = True) -> tuple[Batch, RolloutStats]:
    """One rollout of ``num_steps`` moves per game from ``env.current``: the learner's batch, the games
    that ended (self-play games apart from pool games) and the seconds spent in inference and in the env.
    A game cut at the env's max plies bootstraps from the value of its final position
    (``bootstrap_truncated``) or ends there as a draw (target 0, as a match scores it)."""
    n, dev = env.num_envs, policy.device
    buf = Buffers(num_steps, n, dev)
    if pool.opponent.shape[0] != n:  # the first rollout: every game in progress is new to the pool
        pool.assign(range(n), n)
    policy.model.eval()  # the same function as the update (see ppo_update)
    stats = RolloutStats(timing=Counter())
    out = env.current
    for t in range(num_steps):
        t0 = time.perf_counter()
        moved_learner = _act(policy, env, pool, buf, t, out)
        t1 = time.perf_counter()
        out = env.step(buf.actions[t].cpu().numpy())
        t2 = time.perf_counter()
        _record_step(policy, env, pool, buf, t, out, moved_learner, stats, bootstrap_truncated)
        stats.timing["inference"] += t1 - t0 + time.perf_counter() - t2
        stats.timing["env"] += t2 - t1
    t0 = time.perf_counter()
    next_value = policy.value(torch.from_numpy(out.obs).to(dev))
    advantages, returns = two_player_gae(buf.rewards, buf.ended, buf.truncated, buf.values, buf.final_values,
                                         next_value, gamma, gae_lambda)
    stats.timing["inference"] += time.perf_counter() - t0
    stats.timing = dict(stats.timing)
    return buf.batch(advantages, returns), stats


def _act(policy: Policy, env: Env, pool: OpponentPool, buf: Buffers, t: int, out: StepResult) -> np.ndarray:
    """Fill step ``t``'s observations and actions: the learner's moves by ``policy`` (with their
    log-probabilities and values), the opponents' by the pool. Returns where the learner moved."""
    dev = buf.obs.device
    buf.obs[t] = torch.from_numpy(out.obs).to(dev)
    buf.masks[t] = torch.from_numpy(out.legal_mask).to(dev)
    opponent_rows = (pool.opponent != SELF_PLAY) & (out.to_play != pool.learner_colour)
    if not opponent_rows.any():
        buf.actions[t], buf.logprobs[t], buf.values[t] = policy.act(buf.obs[t], buf.masks[t])
        return ~opponent_rows
    buf.learner[t] = mine = torch.from_numpy(~opponent_rows).to(dev)  # only the learner's moves are trained on
    buf.actions[t, mine], buf.logprobs[t, mine], buf.values[t, mine] = policy.act(buf.obs[t][mine],
                                                                                  buf.masks[t][mine])
    for snapshot in np.unique(pool.opponent[opponent_rows]).tolist():
        rows = opponent_rows & (pool.opponent == snapshot)
        picked = torch.from_numpy(rows).to(dev)
        if snapshot == HEURISTIC:
            buf.actions[t, picked] = heuristic_actions(pool, env, rows, dev)
        else:
            buf.actions[t, picked] = pool.policy(snapshot).act(buf.obs[t][picked], buf.masks[t][picked])[0]
    return ~opponent_rows


def _record_step(policy: Policy, env: Env, pool: OpponentPool, buf: Buffers, t: int, out: StepResult,
                 moved_learner: np.ndarray, stats: RolloutStats, bootstrap_truncated: bool) -> None:
    """Store step ``t``'s rewards and ends; score the games that ended and draw the new games' opponents."""
    dev = buf.obs.device
    ended_envs = np.flatnonzero(out.terminated | out.truncated)
    if ended_envs.size:
        finished = env.pop_finished()  # this step's games, in env order
        if len(finished) != ended_envs.size:
            raise RuntimeError(f"the env kept {len(finished)} of the {ended_envs.size} games that ended in "
                               "one step: create it with keep_finished >= num_envs")
        for i, game in zip(ended_envs.tolist(), finished):
            if pool.opponent[i] == SELF_PLAY:
                stats.games.append(game)
                continue
            mover_score = (float(out.reward[i]) + 1) / 2
            scores = stats.heuristic_scores if pool.opponent[i] == HEURISTIC else stats.pool_scores
            scores.append(mover_score if moved_learner[i] else 1 - mover_score)
        pool.assign(ended_envs, buf.obs.shape[1])
    buf.rewards[t] = torch.from_numpy(out.reward).to(dev)
    buf.ended[t] = torch.from_numpy(out.terminated | out.truncated).to(dev)
    if bootstrap_truncated and out.truncated.any():
        buf.truncated[t] = torch.from_numpy(out.truncated).to(dev)
        rows = torch.from_numpy(np.flatnonzero(out.truncated)).to(dev)
        buf.final_values[t, rows] = policy.value(torch.from_numpy(out.final_obs[out.truncated]).to(dev))
