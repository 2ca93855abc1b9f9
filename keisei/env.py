"""``VecEnv``: N Shogi games stepped in lockstep for self-play.

Each step takes one action label per game (the move of that game's side to move),
plays it, adjudicates, restarts finished games and encodes every position for the
network. Rewards are from the view of the player who just moved: +1 if that move
won the game, -1 if it lost it, 0 for a draw or a game still running. The other
player's last move in a finished game is worth the opposite (zero-sum); a trainer
assigns it.

The arrays in a ``StepResult`` are buffers owned by the environment and are
overwritten by the next ``step``/``reset``: copy what you keep.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from keisei.shogi import (
    NUM_ACTIONS,
    OBSERVATION_SHAPE,
    Encoder,
    Game,
    IllegalMoveError,
    Result,
    Termination,
    encode_observations,
    random_opening,
)


@dataclass(frozen=True)
class StepResult:
    """What ``reset`` and ``step`` return (arrays indexed by env, length N).

    obs: uint8 (N, 119, 9, 9), planes of each current position (new game if one just ended).
    legal_mask: bool (N, 2187), the legal action labels of each current position.
    to_play: int8 (N,), side to move in ``obs``: 0 Black, 1 White.
    reward: float32 (N,), for the player who just moved.
    terminated: bool (N,), the game ended by the rules (mate, repetition, declaration, ...).
    truncated: bool (N,), the game hit ``max_plies`` (a draw; bootstrap from ``final_obs``).
    termination: int8 (N,), ``Termination`` code of games that just ended, else 0.
    final_obs: uint8 (N, 119, 9, 9), for envs whose game just ended, the planes of its
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


class VecEnv:
    """``num_envs`` games of Shogi with batched observations and legal masks.

    Args:
        num_envs: number of games stepped together.
        max_plies: a game that reaches this many moves is a draw (reported as truncated).
        declaration: whether the CSA 27-point entering-king declaration ends games.
        opening_plies: uniformly random legal moves played at the start of every game
            (drawn from the ``reset`` seed), for opening diversity. 0 disables.
        start_sfen: start position of every game (default: the standard one).
        keep_finished: how many finished games ``pop_finished`` keeps (oldest dropped).
    """

    def __init__(self, num_envs: int, *, max_plies: int = 320, declaration: bool = True,
                 opening_plies: int = 0, start_sfen: str | None = None, keep_finished: int = 1024) -> None:
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
        self._template = Game(start_sfen, max_plies=max_plies, declaration=declaration)
        if self._template.is_over:
            raise ValueError(f"start position {start_sfen!r} is already decided "
                             f"({self._template.termination.name.lower()})")
        self._rng = np.random.default_rng()
        self._finished: deque[Game] = deque(maxlen=keep_finished)
        self.games: list[Game] = []

        n = num_envs
        self._encoder = Encoder(n)
        self._mask = self._encoder.mask
        self._final_obs = np.zeros((n, *OBSERVATION_SHAPE), dtype=np.uint8)
        self._reward = np.zeros(n, dtype=np.float32)
        self._terminated = np.zeros(n, dtype=np.bool_)
        self._truncated = np.zeros(n, dtype=np.bool_)
        self._termination = np.zeros(n, dtype=np.int8)
        self._rows = np.arange(n)
        self._result = StepResult(self._encoder.obs, self._mask, self._encoder.to_play.view(np.int8),
                                  self._reward, self._terminated, self._truncated, self._termination,
                                  self._final_obs)

    def reset(self, seed: int | None = None) -> StepResult:
        """Start every game afresh. ``seed`` fixes the random opening moves."""
        self._rng = np.random.default_rng(seed)
        self.games = [self._new_game() for _ in range(self.num_envs)]
        self._clear_step_arrays()
        self._encoder.encode(self.games)
        return self._result

    def step(self, actions: np.ndarray | list[int]) -> StepResult:
        """Play one action label in every game; see ``StepResult``."""
        if not self.games:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(f"actions must be integers of shape ({self.num_envs},), "
                             f"got {actions.dtype} of shape {actions.shape}")
        out_of_range = (actions < 0) | (actions >= NUM_ACTIONS)
        if out_of_range.any():
            i = int(np.flatnonzero(out_of_range)[0])
            raise IllegalMoveError(f"env {i}: action {int(actions[i])} is outside 0..{NUM_ACTIONS - 1}")
        illegal = ~self._mask[self._rows, actions]
        if illegal.any():
            i = int(np.flatnonzero(illegal)[0])
            raise IllegalMoveError(f"env {i}: action {int(actions[i])} is not a legal move "
                                   f"in position {self.games[i].sfen()}")

        self._clear_step_arrays()
        ended = []
        moves = self._encoder.index[self._rows, actions].tolist()
        for i, game in enumerate(self.games):
            game.play(game.legal[moves[i]])
            if game.is_over:
                ended.append(i)
        if ended:
            self._finish_games(ended)
        self._encoder.encode(self.games)
        return self._result

    @property
    def current(self) -> StepResult:
        """What the last ``reset``, ``step`` or ``load_state_dict`` returned (the current positions)."""
        return self._result

    def state_dict(self) -> dict:
        """The games in progress and the opening generator, for exact resumption (plain data)."""
        return {"games": [[g.start_sfen, g.moves] for g in self.games],
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> StepResult:
        """Restore what ``state_dict`` saved (replaying each game's moves) and encode it."""
        games = state["games"]
        if len(games) != self.num_envs:
            raise ValueError(f"state holds {len(games)} games, this VecEnv has {self.num_envs}")
        self.games = []
        for start, moves in games:
            game = Game(start, max_plies=self.max_plies, declaration=self.declaration)
            for move in moves:
                game.push(move)
            self.games.append(game)
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._clear_step_arrays()
        self._encoder.encode(self.games)
        return self._result

    def pop_finished(self) -> list[Game]:
        """The games that ended since the last call (oldest first), for records and statistics."""
        games = list(self._finished)
        self._finished.clear()
        return games

    def _finish_games(self, ended: list[int]) -> None:
        finals = [self.games[i] for i in ended]
        self._final_obs[ended] = encode_observations([g.sfen() for g in finals])
        for i, game in zip(ended, finals):
            mover = game.turn.opponent
            if game.result is not Result.DRAW:
                self._reward[i] = 1.0 if game.winner is mover else -1.0
            if game.termination is Termination.MAX_PLIES:
                self._truncated[i] = True
            else:
                self._terminated[i] = True
            self._termination[i] = int(game.termination)
            self._finished.append(game)
            self.games[i] = self._new_game()

    def _new_game(self) -> Game:
        return random_opening(self._template, self.opening_plies, self._rng)

    def _clear_step_arrays(self) -> None:
        for array in (self._reward, self._terminated, self._truncated, self._termination):
            array.fill(0)
