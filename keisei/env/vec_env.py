"""``VecEnv``: N Shogi games stepped in lockstep for self-play.

Each step takes one action label per game (the move of that game's side to move),
plays it, adjudicates, restarts finished games and encodes every position for the
network. Rewards are from the view of the player who just moved: +1 if that move
won the game, -1 if it lost it, 0 for a draw or a game still running. The other
player's last move in a finished game is worth the opposite (zero-sum); a trainer
assigns it.

The arrays in a ``StepResult`` are buffers owned by the environment and are
overwritten by the next ``step``/``reset``: copy what you keep.

Random openings are keyed by the game, not by the order of draws: the k-th game
played in env ``i`` opens with moves drawn from a generator seeded by
``(seed, i, k)``. So a ``VecEnv`` over a slice of the envs (``env_offset``), as the
worker processes of ``keisei.env.workers`` run, plays exactly the games of the same
envs of one ``VecEnv`` over all of them.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from rsshogi.core import Move

from keisei.shogi import (
    MAX_PLIES,
    NUM_ACTIONS,
    OBSERVATION_SHAPE,
    Encoder,
    Game,
    IllegalMoveError,
    Result,
    Termination,
    random_opening,
)


@dataclass(frozen=True)
class StepResult:
    """What ``reset`` and ``step`` return (arrays indexed by env, length N).

    obs: uint8 (N, 125, 9, 9), planes of each current position (new game if one just ended).
    legal_mask: bool (N, 2187), the legal action labels of each current position.
    to_play: int8 (N,), side to move in ``obs``: 0 Black, 1 White.
    reward: float32 (N,), for the player who just moved.
    terminated: bool (N,), the game ended by the rules (mate, repetition, declaration, ...).
    truncated: bool (N,), the game hit ``max_plies`` (a draw; bootstrap from ``final_obs``).
    termination: int8 (N,), ``Termination`` code of games that just ended, else 0.
    final_obs: uint8 (N, 125, 9, 9), for envs whose game just ended, the planes of its
        final position (side to move's view); rows of other envs are stale.
    """

    obs: np.ndarray
    legal_mask: np.ndarray
    to_play: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    termination: np.ndarray
    final_obs: np.ndarray

    @classmethod
    def allocate(cls, n: int) -> StepResult:
        """Zeroed arrays for ``n`` envs."""
        return cls(**{name: np.zeros((n, *shape), dtype=dtype) for name, (shape, dtype) in STEP_FIELDS.items()})

    def rows(self, start: int, stop: int) -> StepResult:
        """Views of the rows ``start:stop`` of every array."""
        return StepResult(**{name: getattr(self, name)[start:stop] for name in STEP_FIELDS})


#: Shape of one env's row and dtype of each ``StepResult`` field.
STEP_FIELDS: dict[str, tuple[tuple[int, ...], type]] = {
    "obs": (OBSERVATION_SHAPE, np.uint8),
    "legal_mask": ((NUM_ACTIONS,), np.bool_),
    "to_play": ((), np.int8),
    "reward": ((), np.float32),
    "terminated": ((), np.bool_),
    "truncated": ((), np.bool_),
    "termination": ((), np.int8),
    "final_obs": (OBSERVATION_SHAPE, np.uint8),
}


class Env(Protocol):
    """What a trainer needs of an environment: ``VecEnv`` or ``keisei.env.workers.WorkerVecEnv``."""

    num_envs: int

    def reset(self, seed: int | None = None) -> StepResult: ...
    def step(self, actions: np.ndarray | list[int]) -> StepResult: ...
    @property
    def current(self) -> StepResult: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> StepResult: ...
    def pop_finished(self) -> list[Game]: ...
    def close(self) -> None: ...


def new_seed() -> int:
    """A fresh random seed (128 bits of OS entropy), for ``reset(seed=None)``."""
    return int(np.random.SeedSequence().entropy)


class VecEnv:
    """``num_envs`` games of Shogi with batched observations and legal masks.

    Args:
        num_envs: number of games stepped together.
        max_plies: a game that reaches this many moves is a draw (reported as truncated).
        declaration: whether the CSA 27-point entering-king declaration ends games.
        opening_plies: uniformly random legal moves played at the start of every game
            (drawn from a generator keyed by the ``reset`` seed, the env and the game), for
            opening diversity. 0 disables.
        start_sfen: start position of every game (default: the standard one).
        keep_finished: how many finished games ``pop_finished`` keeps (oldest dropped).
        env_offset: the global index of this env's first game, when it runs a slice of a
            larger set of envs (the openings of env ``i`` here are those of env
            ``env_offset + i``).
        buffers: arrays to write the ``StepResult`` into (e.g. views of shared memory), as
            made by ``StepResult.allocate(num_envs)``; by default they are allocated.
    """

    def __init__(self, num_envs: int, *, max_plies: int = MAX_PLIES, declaration: bool = True,
                 opening_plies: int = 0, start_sfen: str | None = None, keep_finished: int = 1024,
                 env_offset: int = 0, buffers: StepResult | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if opening_plies < 0:
            raise ValueError(f"opening_plies must be >= 0, got {opening_plies}")
        if opening_plies >= max_plies:
            raise ValueError(f"opening_plies ({opening_plies}) must be below max_plies ({max_plies})")
        self.num_envs = num_envs
        self.max_plies = max_plies
        self.declaration = declaration
        self.opening_plies = opening_plies
        self.start_sfen = start_sfen
        self.env_offset = env_offset
        self._template = Game(start_sfen, max_plies=max_plies, declaration=declaration)
        if self._template.is_over:
            raise ValueError(f"start position {start_sfen!r} is already decided "
                             f"({self._template.termination.name.lower()})")
        self._seed = 0
        self._game_counts = [0] * num_envs  # games started in each env since reset (the opening key)
        self._finished: deque[Game] = deque(maxlen=keep_finished)
        self.games: list[Game] = []

        n = num_envs
        if buffers is None:
            buffers = StepResult.allocate(n)
        for name, (shape, dtype) in STEP_FIELDS.items():
            array = getattr(buffers, name)
            if array.shape != (n, *shape) or array.dtype != dtype or not array.flags.c_contiguous:
                raise ValueError(f"buffers.{name} must be a C-contiguous {np.dtype(dtype)} array of shape "
                                 f"{(n, *shape)}, got {array.dtype} {array.shape}")
        self._result = buffers
        self._encoder = Encoder(n, obs=buffers.obs, mask=buffers.legal_mask, to_play=buffers.to_play.view(np.uint8),
                                index=False, track=True)

    def reset(self, seed: int | None = None) -> StepResult:
        """Start every game afresh. ``seed`` fixes the random opening moves (None: a fresh random seed)."""
        self._seed = new_seed() if seed is None else int(seed)
        self._game_counts = [0] * self.num_envs
        self.games = [self._new_game(i) for i in range(self.num_envs)]
        self._clear_step_arrays()
        self._encoder.encode(self.games)
        return self._result

    def step(self, actions: np.ndarray | list[int]) -> StepResult:
        """Play one action label in every game; see ``StepResult``."""
        if not self.games:
            raise RuntimeError("call reset() before step()")
        moves = self._moves(actions)
        self._clear_step_arrays()
        games = self.games
        over = list(map(Game.play, games, moves))
        self._encoder.advance(moves)  # the encoder follows the boards without reading them again
        if any(over):
            self._finish_games([i for i, game_over in enumerate(over) if game_over])
        self._encoder.encode_tracked(games)
        return self._result

    def _moves(self, actions: np.ndarray | list[int]) -> list[Move]:
        """The legal move of each game labelled by its action. The encoder checks every label against
        the game's legal moves as it finds them; a bad one is reported by ``check_actions`` (naming the
        env, the action and the position), before anything is played."""
        array = np.asarray(actions)
        if array.shape == (self.num_envs,) and array.dtype.kind in "iu":
            try:
                return self._encoder.moves(array)
            except ValueError:
                pass
        array = check_actions(actions, self.num_envs, self._result.legal_mask, lambda i: self.games[i].sfen())
        return self._encoder.moves(array)

    @property
    def current(self) -> StepResult:
        """What the last ``reset``, ``step`` or ``load_state_dict`` returned (the current positions)."""
        return self._result

    def state_dict(self) -> dict[str, Any]:
        """The games in progress and the opening keys, for exact resumption (plain data).

        ``{"games": [[start_sfen, [usi, ...]], ...], "seed": int, "game_counts": [int, ...]}``:
        the same for any split of the envs over worker processes.
        """
        return {"games": [[g.start_sfen, g.moves] for g in self.games], "seed": self._seed,
                "game_counts": list(self._game_counts)}

    def load_state_dict(self, state: dict[str, Any]) -> StepResult:
        """Restore what ``state_dict`` saved (replaying each game's moves) and encode it.

        A state of the older format with one shared opening generator (``"rng"``, see
        ``upgrade_state``) loads too: its games are restored exactly, and the openings of later
        games come from a seed drawn from that generator (deterministic).
        """
        state = upgrade_state(state, self.num_envs)
        self.games = [Game.replay(start, moves, max_plies=self.max_plies, declaration=self.declaration)
                      for start, moves in state["games"]]
        self._seed, self._game_counts = state["seed"], state["game_counts"]
        self._clear_step_arrays()
        self._encoder.encode(self.games)
        return self._result

    def pop_finished(self) -> list[Game]:
        """The games that ended since the last call (oldest first, by env within a step), for records and
        statistics."""
        games = list(self._finished)
        self._finished.clear()
        return games

    def close(self) -> None:
        """Nothing to release (the same interface as ``WorkerVecEnv``)."""

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _finish_games(self, ended: list[int]) -> None:
        out = self._result
        for i in ended:
            game = self.games[i]
            self._encoder.planes([i], out.final_obs[i:i + 1], [game])
            mover = game.turn.opponent
            if game.result is not Result.DRAW:
                out.reward[i] = 1.0 if game.winner is mover else -1.0
            if game.termination is Termination.MAX_PLIES:
                out.truncated[i] = True
            else:
                out.terminated[i] = True
            out.termination[i] = int(game.termination)
            self._finished.append(game)
            self.games[i] = self._new_game(i)
        self._encoder.reload(ended, [self.games[i] for i in ended])

    def _new_game(self, i: int) -> Game:
        """The next game of env ``i``: its opening is drawn from the key (seed, global env index, game count)."""
        count = self._game_counts[i]
        self._game_counts[i] = count + 1
        if not self.opening_plies:
            return self._template.copy()
        rng = np.random.default_rng([self._seed, self.env_offset + i, count])
        return random_opening(self._template, self.opening_plies, rng)

    def _clear_step_arrays(self) -> None:
        out = self._result
        for array in (out.reward, out.terminated, out.truncated, out.termination):
            array.fill(0)


def upgrade_state(state: dict[str, Any], num_envs: int) -> dict[str, Any]:
    """``state`` (of ``state_dict``) in the current format, checked against ``num_envs``. The format
    before per-env openings had one opening generator (``"rng"``): its seed for later games is drawn
    from that generator, so loading it is deterministic."""
    games = state["games"]
    if len(games) != num_envs:
        raise ValueError(f"state holds {len(games)} games, this env has {num_envs}")
    if "seed" in state:
        seed, counts = int(state["seed"]), [int(c) for c in state["game_counts"]]
    else:
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        seed, counts = int(rng.integers(2**63)), [0] * num_envs
    if len(counts) != num_envs:
        raise ValueError(f"state holds {len(counts)} game counts, this env has {num_envs} envs")
    return {"games": games, "seed": seed, "game_counts": counts}


def check_actions(actions: np.ndarray | list[int], n: int, mask: np.ndarray, sfen: Any) -> np.ndarray:
    """``actions`` as an int64 array of shape (n,), each a legal label of its env in ``mask``; else
    ``ValueError`` (shape, dtype) or ``IllegalMoveError`` naming the first bad env (``sfen(i)``: its
    position, for the message)."""
    actions = np.asarray(actions)
    if actions.shape != (n,) or actions.dtype.kind not in "iu":
        raise ValueError(f"actions must be integers of shape ({n},), got {actions.dtype} of shape {actions.shape}")
    actions = actions.astype(np.int64, copy=False)
    out_of_range = actions.view(np.uint64) >= NUM_ACTIONS  # negative labels are huge as unsigned
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        raise IllegalMoveError(f"env {i}: action {int(actions[i])} is outside 0..{NUM_ACTIONS - 1}")
    legal = mask[_rows(n), actions]
    if not legal.all():
        i = int(np.flatnonzero(~legal)[0])
        raise IllegalMoveError(f"env {i}: action {int(actions[i])} is not a legal move in position {sfen(i)}")
    return actions


@functools.cache
def _rows(n: int) -> np.ndarray:
    rows = np.arange(n)
    rows.setflags(write=False)
    return rows
