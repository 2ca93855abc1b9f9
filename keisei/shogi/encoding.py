"""The one encoder from games to network inputs: observation planes and legal-action masks.

``encode(games)`` returns both for a batch of games; an ``Encoder`` does the same into
buffers it owns (the environment's hot path) and remembers which legal move each label
stands for, so that ``Encoder.move(i, action)`` turns the network's choice back into a move.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rsshogi.core import Move

from keisei.shogi import _native
from keisei.shogi.actions import NUM_ACTIONS, label_table
from keisei.shogi.features import OBSERVATION_SHAPE
from keisei.shogi.game import Game, IllegalMoveError


class Encoder:
    """Planes and masks of up to ``capacity`` games at a time, written into owned buffers.

    After ``encode(games)``: ``obs[:n]`` uint8 (n, 119, 9, 9), ``mask[:n]`` bool (n, 2187),
    ``to_play[:n]`` (0 Black, 1 White); ``move(i, action)`` is the legal move of game ``i``
    with label ``action``. The buffers are overwritten by the next ``encode``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, *OBSERVATION_SHAPE), dtype=np.uint8)
        self.mask = np.zeros((capacity, NUM_ACTIONS), dtype=np.bool_)
        self.index = np.zeros((capacity, NUM_ACTIONS), dtype=np.int16)  # label -> position in legal list
        self.to_play = np.zeros(capacity, dtype=np.uint8)
        self._table = label_table()
        self._legal: list[list[Move]] = []

    def encode(self, games: Sequence[Game]) -> tuple[np.ndarray, np.ndarray]:
        """Planes and legal masks of ``games`` (views of the owned buffers, length ``len(games)``)."""
        n = len(games)
        if n > self.capacity:
            raise ValueError(f"{n} games exceed this encoder's capacity of {self.capacity}")
        sfens = [game._board.to_sfen() for game in games]
        self._legal = [game._legal for game in games]
        obs, mask, index, to_play = self.obs[:n], self.mask[:n], self.index[:n], self.to_play[:n]
        _native.encode_planes(sfens, obs, to_play)
        _native.fill_masks(self._legal, to_play, self._table, mask, index)
        return obs, mask

    def move(self, i: int, action: int) -> Move:
        """The legal move of game ``i`` (of the last ``encode``) labelled ``action``; ``IllegalMoveError``
        when no legal move has that label."""
        if not 0 <= action < NUM_ACTIONS or not self.mask[i, action]:
            raise IllegalMoveError(f"action {action} is not a legal move of game {i}")
        return self._legal[i][self.index[i, action]]


def encode(games: Sequence[Game]) -> tuple[np.ndarray, np.ndarray]:
    """Observation planes uint8 (n, 119, 9, 9) and legal masks bool (n, 2187) of ``games`` (new arrays)."""
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
