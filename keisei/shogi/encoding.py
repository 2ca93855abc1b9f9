"""The one encoder from games to network inputs: observation planes and legal-action masks.

``encode(games)`` returns both for a batch of games; an ``Encoder`` does the same into
buffers it owns (or is given: the environment's hot path) and remembers which legal move each
label stands for, so that ``Encoder.move(i, action)`` turns the network's choice back into a move.
The C extension reads each game's packed SFEN (rsshogi's 32-byte ``to_packed_sfen``), how often
its position occurred before (``Game.repetitions``: the ``repeated_ge1/ge2`` planes) and its list
of legal ``Move`` objects in one call for the whole batch; a second call sets the mate planes
(``features.fill_mate_planes``). The environment's encoder (``track=True``) keeps the decoded
positions and asks rsshogi for no legal moves at all: the C extension finds them in the kept
positions, under the same rules (``_native.legal_move_values``; the tests compare them with
rsshogi's), and writes planes, mate planes and masks in one call.
Every observation of a ``Game`` goes through here; the planes of bare SFENs
(``keisei.shogi.features``) have no history, so their repetition planes are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rsshogi.core import Move

from keisei.shogi import _native
from keisei.shogi.actions import NUM_ACTIONS, label_table
from keisei.shogi.features import OBSERVATION_SHAPE, fill_mate_planes
from keisei.shogi.game import Game, IllegalMoveError

# Where a Move keeps its 16-bit value, so that masks read it without a Python call per move
# (probed on Moves of known values; the slow path, same labels, stays when no offset fits); the
# probes' type is also the one of which the environment's encoder makes the moves it picks.
MOVE_LAYOUT = _native.set_move_layout([Move(v) for v in (0x0305, 0x4A2C, 0x8B17, 0x1234, 0xFEDC, 0x40A1)])


class Encoder:
    """Planes and masks of up to ``capacity`` games at a time, written into owned buffers.

    After ``encode(games)``: ``obs[:n]`` uint8 (n, 125, 9, 9), ``mask[:n]`` bool (n, 2187),
    ``to_play[:n]`` (0 Black, 1 White); ``move(i, action)`` is the legal move of game ``i``
    with label ``action``. The buffers are overwritten by the next ``encode``.

    ``obs``, ``mask`` and ``to_play`` may be given (C-contiguous arrays of those shapes and
    dtypes, e.g. views of shared memory); otherwise they are allocated. ``index`` (int16, n x 2187:
    label -> position of the move in ``legal`` lists) is kept only when asked for (``index=True``,
    the default): ``moves(actions)`` finds the moves of a whole batch without it, touching far less
    memory (the environment's way).

    With ``track=True`` (the environment's hot path) the encoder keeps the decoded position of each
    game of the last ``encode`` and moves it along: after the games have played ``moves``,
    ``advance(moves)`` applies them to the kept positions, ``reload(rows, games)`` reads the games
    that started anew, and ``encode_tracked(games)`` encodes without asking rsshogi for the
    positions again. The kept positions must follow the games exactly: every move played goes
    through ``advance``, every other change through ``reload`` or ``encode``. The legal moves come
    from the kept positions too (move values found in C: no rsshogi ``Move`` list is made), and
    ``move``/``moves`` return shared ``Move`` objects of those values; ``index`` then points into
    them. The repetition planes are not kept: they are read from the games (``Game.repetitions``) at
    every encoding (``planes`` takes the games for them).
    """

    def __init__(self, capacity: int, *, obs: np.ndarray | None = None, mask: np.ndarray | None = None,
                 to_play: np.ndarray | None = None, index: bool = True, track: bool = False) -> None:
        self.capacity = capacity
        self.obs = _buffer(obs, (capacity, *OBSERVATION_SHAPE), np.uint8, "obs")
        self.mask = _buffer(mask, (capacity, NUM_ACTIONS), np.bool_, "mask")
        self.index = np.zeros((capacity, NUM_ACTIONS), dtype=np.int16) if index else None
        self.to_play = _buffer(to_play, (capacity,), np.uint8, "to_play")
        self.positions = np.zeros((capacity, _native.POSITION_SIZE), dtype=np.uint8) if track else None
        # the legal moves of each tracked position (label << 16 | move value) and their number (track=True)
        self._entries = np.zeros((capacity, _native.MAX_LEGAL), dtype=np.uint32) if track else None
        self._counts = np.zeros(capacity, dtype=np.int32) if track else None
        self._table = label_table()
        self._legal: list[list[Move]] = []
        self._n = 0  # games of the last encoding

    def encode(self, games: Sequence[Game]) -> tuple[np.ndarray, np.ndarray]:
        """Planes and legal masks of ``games`` (views of the owned buffers, length ``len(games)``)."""
        n = len(games)
        if n > self.capacity:
            raise ValueError(f"{n} games exceed this encoder's capacity of {self.capacity}")
        if self.positions is not None:
            _native.reload_positions(games, range(n), self.positions)
            return self.encode_tracked(games)
        obs, mask = self.obs[:n], self.mask[:n]
        index = self.index[:n] if self.index is not None else None
        self._legal = _native.encode_games(games, self._table, obs, self.to_play[:n], mask, index)
        self._n = n
        fill_mate_planes([game.board for game in games], obs)
        return obs, mask

    def advance(self, moves: Sequence[Move]) -> None:
        """Apply ``moves[i]``, just played in game ``i``, to its kept position (``track=True``)."""
        _native.apply_moves(self._tracked(len(moves)), moves)

    def reload(self, rows: Sequence[int], games: Sequence[Game]) -> None:
        """Read the positions of ``games`` (started anew) from rsshogi into the kept ``rows``."""
        _native.reload_positions(games, rows, self._tracked(0))

    def planes(self, rows: Sequence[int], out: np.ndarray, games: Sequence[Game] | None = None) -> None:
        """The planes of the kept positions ``rows`` into ``out`` (uint8, len(rows) x 125 x 9 x 9); the
        repetition planes from ``games[k]``, the game at row ``rows[k]`` (0 without ``games``)."""
        positions = self._tracked(0)
        _native.encode_rows(positions, rows, out, games)
        _native.mate_planes(positions, out, rows)

    def encode_tracked(self, games: Sequence[Game]) -> tuple[np.ndarray, np.ndarray]:
        """As ``encode(games)``, planes and legal moves from the kept positions (which must be those of
        ``games``)."""
        n = len(games)
        obs, mask = self.obs[:n], self.mask[:n]
        index = self.index[:n] if self.index is not None else None
        _native.encode_tracked(self._tracked(n), games, self._table, obs, self.to_play[:n], mask, index,
                               self._entries, self._counts)
        self._n = n
        return obs, mask

    def _tracked(self, n: int) -> np.ndarray:
        if self.positions is None:
            raise RuntimeError("this Encoder does not track positions (track=False)")
        if n > self.capacity:
            raise ValueError(f"{n} games exceed this encoder's capacity of {self.capacity}")
        return self.positions

    def move(self, i: int, action: int) -> Move:
        """The legal move of game ``i`` (of the last ``encode``) labelled ``action``; ``IllegalMoveError``
        when no legal move has that label."""
        if not 0 <= action < NUM_ACTIONS or not self.mask[i, action]:
            raise IllegalMoveError(f"action {action} is not a legal move of game {i}")
        if self._entries is not None:
            return _native.pick_tracked(self._entries[i:i + 1], self._counts[i:i + 1],
                                        np.array([action], dtype=np.int64))[0]
        if self.index is None:
            return _native.pick_moves(self._legal[i:i + 1], self.to_play[i:i + 1], self._table,
                                      np.array([action], dtype=np.int64))[0]
        return self._legal[i][self.index[i, action]]

    def moves(self, actions: np.ndarray) -> list[Move]:
        """The legal move of every game of the last ``encode`` for its label in ``actions`` (int, one per
        game), unchecked: the caller has checked the labels against ``mask`` (a label that is not legal
        is a ``ValueError`` naming the first such game)."""
        n, actions = self._n, np.asarray(actions, dtype=np.int64)
        if self._entries is not None:
            return _native.pick_tracked(self._entries[:n], self._counts[:n], actions)
        return _native.pick_moves(self._legal, self.to_play[:n], self._table, actions)


def _buffer(given: np.ndarray | None, shape: tuple[int, ...], dtype: type, name: str) -> np.ndarray:
    if given is None:
        return np.zeros(shape, dtype=dtype)
    if given.shape != shape or given.dtype != dtype or not given.flags.c_contiguous or not given.flags.writeable:
        raise ValueError(f"{name} must be a writable C-contiguous {np.dtype(dtype)} array of shape {shape}, "
                         f"got {given.dtype} {given.shape}")
    return given


def encode(games: Sequence[Game]) -> tuple[np.ndarray, np.ndarray]:
    """Observation planes uint8 (n, 125, 9, 9) and legal masks bool (n, 2187) of ``games`` (new arrays)."""
    return Encoder(max(len(games), 1)).encode(games)


def legal_mask(game: Game) -> np.ndarray:
    """Boolean mask of shape (2187,) over the labels of ``game``'s legal moves."""
    return encode([game])[1][0]


def action_to_move(action: int, game: Game) -> str:
    """The legal move of ``game`` whose label is ``action`` (USI string).

    Raises ``IllegalMoveError`` when no legal move has that label.
    """
    encoder = Encoder(1)
    encoder.encode([game])
    try:
        return encoder.move(0, action).to_usi()
    except IllegalMoveError:
        raise IllegalMoveError(f"action {action} is not a legal move in position {game.sfen()}") from None
