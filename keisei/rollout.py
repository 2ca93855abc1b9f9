"""Rollouts: play ``num_steps`` moves in every game of a ``VecEnv`` and return the learner's batch.

``collect(policy, env, pool, ...)`` is one rollout: at each step the policy picks a move in
every game (a past snapshot from the ``OpponentPool`` plays its side of the pool's games),
the env plays them, and the buffers record what the PPO update needs. Advantages come from
``keisei.ppo.two_player_gae`` over the whole (T, N) rollout; the batch keeps only the
learner's moves.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from keisei.checkpoint import load_model_state, model_state
from keisei.config import OpponentPoolConfig
from keisei.env import VecEnv
from keisei.policy import Policy
from keisei.ppo import Batch, two_player_gae
from keisei.shogi import NUM_ACTIONS, OBSERVATION_SHAPE


class OpponentPool:
    """Past snapshots of the learner, played in a share of the games (``size`` 0: pure self-play).

    Each rollout draws one snapshot (with ``generator``) for envs ``[0, fraction * num_envs)``;
    in env ``i`` of those the learner plays colour ``i % 2``.
    """

    def __init__(self, cfg: OpponentPoolConfig, opponent: Policy | None, generator: torch.Generator) -> None:
        self.cfg = cfg
        self.opponent = opponent  # a network of the learner's shape that holds the drawn snapshot
        self.generator = generator
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def add(self, policy: Policy, update: int) -> None:
        """Keep a snapshot of ``policy`` when ``update`` is a multiple of the snapshot interval."""
        if self.cfg.size and update % self.cfg.snapshot_interval == 0:
            self.snapshots = [*self.snapshots, model_state(policy.model)][-self.cfg.size:]

    def draw(self, num_envs: int) -> int:
        """Load a random snapshot into ``opponent``; the number of envs it plays in (0: self-play only)."""
        if self.opponent is None or not self.snapshots:
            return 0
        pick = int(torch.randint(len(self.snapshots), (1,), generator=self.generator))
        load_model_state(self.opponent.model, self.snapshots[pick])
        return round(self.cfg.fraction * num_envs)


def collect(policy: Policy, env: VecEnv, pool: OpponentPool, num_steps: int, gamma: float, gae_lambda: float
            ) -> tuple[Batch, dict[str, float]]:
    """One rollout of ``num_steps`` moves per game from ``env.current``; the learner's batch and the
    seconds spent in inference and in the env."""
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

    pool_envs = pool.draw(n)
    learner_colour = torch.arange(n, device=dev) % 2
    self_play_env = torch.arange(n, device=dev) >= pool_envs

    policy.model.eval()  # no BatchNorm statistics from rollout batches
    timing: Counter[str] = Counter()
    out = env.current
    for t in range(num_steps):
        t0 = time.perf_counter()
        obs[t] = torch.from_numpy(out.obs).to(dev)
        masks[t] = torch.from_numpy(out.legal_mask).to(dev)
        if pool_envs:
            learner[t] = self_play_env | (torch.from_numpy(out.to_play).to(dev) == learner_colour)
        if pool_envs and not bool(learner[t].all()):
            mine, theirs = learner[t], ~learner[t]  # only the learner's moves are trained on
            actions[t, mine], logprobs[t, mine], values[t, mine] = policy.act(obs[t][mine], masks[t][mine])
            actions[t, theirs] = pool.opponent.act(obs[t][theirs], masks[t][theirs])[0]
        else:
            actions[t], logprobs[t], values[t] = policy.act(obs[t], masks[t])
        t1 = time.perf_counter()
        out = env.step(actions[t].cpu().numpy())
        t2 = time.perf_counter()
        rewards[t] = torch.from_numpy(out.reward).to(dev)
        ended[t] = torch.from_numpy(out.terminated | out.truncated).to(dev)
        truncated[t] = torch.from_numpy(out.truncated).to(dev)
        if out.truncated.any():
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
    return batch, dict(timing)
