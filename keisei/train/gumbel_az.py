"""Gumbel AlphaZero self-play (``algorithm=gumbel_az``; Danihelka et al., ICLR 2022, "Policy improvement
by planning with Gumbel").

``SelfPlay.collect``: ``num_steps`` moves in every game of the env (a ``VecEnv``: its own games, so that
the env's checkpoint state keeps the games in progress), each move chosen by a Gumbel-root search
(``keisei.play.search.Search``: Gumbel top-m sampling with noise, Sequential Halving, PUCT below; one
``run`` for all the games, whose leaves go through the network together). Each position searched is
recorded with the search's improved policy ``softmax(logits + sigma(completed Q))`` as its policy target
and the search's value of the move played; when its game ends, the positions get the result ``z`` from
their side to move's view (a game cut at ``env.max_plies`` is a draw, 0) and enter the replay buffer
(``keisei.train.replay``). Then minibatches are drawn from the buffer, uniformly:
``samples_per_position`` samples per move played, once the buffer holds ``minibatch_size`` positions
(on every rank); before that the update learns nothing (``charts/minibatches`` 0).

``gumbel_az_update``: per minibatch, the cross-entropy between the policy target and the network's
masked policy plus ``value_coef`` times the MSE between the value and ``(1 - w) * z + w * search value``
(``w``: ``root_value_weight``), one optimiser step (gradients averaged over the ranks).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from keisei.config import ConfigError, GumbelAZConfig, SearchConfig, SearchRoot
from keisei.env import Env, VecEnv
from keisei.nn.policy import Policy, logprob_entropy
from keisei.play.search import Search, SearchResult
from keisei.shogi import Color, Game, move_to_action
from keisei.train import distributed
from keisei.train.optim import optimizer_step
from keisei.train.replay import Block, Pending, ReplayBuffer, Targets, pack
from keisei.train.rollout import RolloutStats
from keisei.train.supervised import explained_variance

#: The ``losses/...`` metrics of an update, averaged over its minibatches (NaN when it learnt nothing).
LOSS_NAMES = ("policy_loss", "value_loss", "entropy", "policy_entropy_target", "accuracy", "explained_variance")


def search_config(cfg: GumbelAZConfig) -> SearchConfig:
    """The self-play search: a Gumbel root with its noise on (the move played is sampled), no tree kept
    between moves (a resumed run could not restore it)."""
    return SearchConfig(simulations=cfg.simulations, root=SearchRoot.gumbel, gumbel_noise=True,
                        gumbel_actions=cfg.gumbel_actions, gumbel_c_visit=cfg.c_visit, gumbel_c_scale=cfg.c_scale,
                        mate_plies=cfg.mate_plies, reuse_tree=False)


class TimedPolicy(Policy):
    """``policy``'s network, with the seconds of its forward passes added up in ``seconds``."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy.model, forward=policy.forward, autocast_dtype=policy.autocast_dtype)
        self.seconds = 0.0

    def logits_and_value(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        try:
            return super().logits_and_value(obs, mask)
        finally:
            self.seconds += time.perf_counter() - start


def policy_target(result: SearchResult, turn: Color, legal: np.ndarray) -> np.ndarray:
    """``result.policy`` (USI move -> probability) as the probabilities of the labels of ``legal`` (a legal
    mask, bool (2187,)), in label order: the layout ``keisei.train.replay`` stores."""
    assert result.policy is not None, "the search has no Gumbel root"
    labels = np.array([move_to_action(usi, turn.value) for usi in result.policy], dtype=np.int64)
    order = np.argsort(labels)
    if not np.array_equal(labels[order], np.flatnonzero(legal)):
        raise RuntimeError("the search's root moves are not the legal moves of the env's position")
    return np.fromiter(result.policy.values(), dtype=np.float64, count=len(labels))[order]


def search_groups(games: Sequence[Game]) -> list[list[int]]:
    """The indices of ``games`` in groups without two games of the same position (the k-th game of each
    position is in group k). ``Search.run`` searches a position once per call and gives each copy of it
    the same move: copies (every game at the start of a run without random openings, say) are searched
    in calls of their own, so that each draws its own noise."""
    seen: Counter[str] = Counter()
    groups: list[list[int]] = []
    for i, game in enumerate(games):
        key = game.sfen()
        if seen[key] == len(groups):
            groups.append([])
        groups[seen[key]].append(i)
        seen[key] += 1
    return groups


@dataclass
class Replay:
    """What ``collect`` returns: the buffer and the positions of each minibatch to learn from (rows of
    ``index``; none before the buffer holds a minibatch), and the collect's own metrics."""

    buffer: ReplayBuffer
    index: np.ndarray  # int64 (minibatches, minibatch_size)
    metrics: dict[str, float] = field(default_factory=dict)


class SelfPlay:
    """The games (``env``, a ``VecEnv``), the search that plays them (seeded with ``seed``), the positions
    waiting for their games' results and the replay buffer of one rank; ``generator`` draws the samples."""

    def __init__(self, cfg: GumbelAZConfig, env: Env, policy: Policy, generator: torch.Generator, seed: int) -> None:
        if not isinstance(env, VecEnv):
            raise ConfigError("algorithm=gumbel_az needs env.workers=1 (the search reads the games in this process)")
        self.cfg, self.env, self.generator = cfg, env, generator
        self.policy = TimedPolicy(policy)
        self.search = Search(self.policy, search_config(cfg), seed=seed)
        self.pending = Pending(env.num_envs)
        self.buffer = ReplayBuffer(cfg.buffer_size)

    def collect(self) -> tuple[Replay, RolloutStats]:
        """``num_steps`` searched moves in every game; the finished games' positions into the buffer;
        the minibatches drawn from it."""
        stats = RolloutStats(timing=Counter())
        finished: list[Block] = []
        for _ in range(self.cfg.num_steps):
            actions = self._search_and_record(stats.timing)
            start = time.perf_counter()
            out = self.env.step(actions)
            stats.timing["env"] += time.perf_counter() - start
            finished += self._finish_games(out.terminated | out.truncated, stats)
        start = time.perf_counter()
        added = sum(len(block) for block in finished)
        if finished:
            self.buffer.add(Block.concat(finished))
        replay = Replay(self.buffer, self._draw(), {"charts/buffer_size": len(self.buffer),
                                                     "charts/positions_added": added,
                                                     "charts/pending_positions": len(self.pending)})
        replay.metrics["charts/minibatches"] = len(replay.index)
        stats.timing["buffer"] += time.perf_counter() - start
        stats.timing = dict(stats.timing)
        return replay, stats

    def _search_and_record(self, timing: Counter[str]) -> np.ndarray:
        """Search every game's position, record it with its targets; the labels of the moves to play."""
        games = self.env.games
        start, self.policy.seconds = time.perf_counter(), 0.0
        results = self._search(games)
        searched = time.perf_counter()
        timing["inference"] += self.policy.seconds
        timing["search"] += searched - start - self.policy.seconds
        self.pending.record(self._positions(games, results))
        actions = np.array([move_to_action(r.move, g.turn.value) for r, g in zip(results, games)], dtype=np.int64)
        timing["buffer"] += time.perf_counter() - searched
        return actions

    def _search(self, games: list[Game]) -> list[SearchResult]:
        """The search's result for every game, in order (copies of a position in calls of their own)."""
        results: list[SearchResult] = [None] * len(games)  # type: ignore[list-item]
        for group in search_groups(games):
            for i, result in zip(group, self.search.run([games[i] for i in group])):
                results[i] = result
        return results

    def _positions(self, games: list[Game], results: list[SearchResult]) -> Block:
        """The env's current positions (those of ``games``) with the searches' targets, packed; no result yet."""
        current = self.env.current
        targets = [policy_target(r, g.turn, current.legal_mask[i]) for i, (r, g) in enumerate(zip(results, games))]
        obs, mask = pack(current.obs, current.legal_mask)
        return Block(obs, mask, np.array([len(t) for t in targets], dtype=np.int16),
                     np.concatenate(targets).astype(np.float16), current.to_play.astype(np.int8),
                     np.array([r.value for r in results], dtype=np.float32), np.zeros(len(games), dtype=np.int8))

    def _finish_games(self, ended: np.ndarray, stats: RolloutStats) -> list[Block]:
        """The positions of the games that just ended, with their results (the games go to ``stats``)."""
        envs = np.flatnonzero(ended).tolist()
        if not envs:
            return []
        games = self.env.pop_finished()
        if len(games) != len(envs):
            raise RuntimeError(f"the env kept {len(games)} of the {len(envs)} games that ended in one step: "
                               "create it with keep_finished >= num_envs")
        stats.games += games
        return [self.pending.finish(i, None if g.winner is None else int(g.winner is Color.WHITE))
                for i, g in zip(envs, games)]

    def _draw(self) -> np.ndarray:
        """The positions of this update's minibatches: ``samples_per_position`` per move played, in
        minibatches of ``minibatch_size``, once every rank's buffer holds a minibatch (the ranks step
        together)."""
        cfg = self.cfg
        ready = distributed.all_reduce(len(self.buffer) >= cfg.minibatch_size, "min")
        count = minibatches(cfg, self.env.num_envs) if ready else 0
        return self.buffer.sample(count * cfg.minibatch_size, self.generator).reshape(count, cfg.minibatch_size)

    def state_dict(self) -> dict[str, Any]:
        """This rank's own: the buffer, the positions of the games in progress, the search's generator."""
        return {"buffer": self.buffer.state_dict(), "pending": self.pending.state_dict(),
                "search_rng": self.search.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])  # a smaller buffer_size keeps the latest positions
        self.pending.load_state_dict(state["pending"])
        self.search.rng.bit_generator.state = state["search_rng"]


def minibatches(cfg: GumbelAZConfig, num_envs: int) -> int:
    """Minibatches of an update: ``samples_per_position`` samples per move played, at least one."""
    return max(1, round(cfg.samples_per_position * num_envs * cfg.num_steps / cfg.minibatch_size))


def gumbel_az_loss(policy: Policy, batch: Targets, value_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of the policy targets against the network's masked policy plus ``value_coef`` times
    the MSE of the values; and its parts (``LOSS_NAMES``, detached): ``entropy`` the network's,
    ``policy_entropy_target`` the targets', ``accuracy`` the share of positions whose most likely move
    is the target's."""
    logits, values = policy.logits_and_value(batch.obs, batch.legal_mask)
    top = batch.policy.argmax(dim=1)
    _, entropy = logprob_entropy(logits, top)
    policy_loss = -(batch.policy * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    value_loss = ((values - batch.value) ** 2).mean()
    with torch.no_grad():
        parts = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy.mean(),
                 "policy_entropy_target": -torch.special.xlogy(batch.policy, batch.policy).sum(dim=1).mean(),
                 "accuracy": (logits.argmax(dim=1) == top).float().mean(),
                 "explained_variance": explained_variance(values, batch.value)}
    return policy_loss + value_coef * value_loss, {k: v.detach() for k, v in parts.items()}


def gumbel_az_update(policy: Policy, optimizer: torch.optim.Optimizer, replay: Replay, cfg: GumbelAZConfig,
                     max_grad_norm: float, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One optimiser step per minibatch of ``replay`` (train mode; gradients averaged over the ranks,
    clipped); the ``losses/...`` means over the minibatches, measured before each step, and the collect's
    ``charts/...``."""
    policy.model.train()
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    device = policy.device
    for index in replay.index:
        batch = replay.buffer.decode(index, cfg.root_value_weight, device)
        loss, parts = gumbel_az_loss(policy, batch, cfg.value_coef)
        optimizer_step(policy.model, optimizer, loss, max_grad_norm, scaler)
        for key, value in parts.items():
            sums[key] += float(value)
    steps = len(replay.index)
    return {**{f"losses/{k}": v / steps if steps else float("nan") for k, v in sums.items()}, **replay.metrics}
