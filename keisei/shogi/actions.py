"""The action space: 2187 = 27 x 81 move labels in the dlshogi layout.

A label is ``direction * 81 + to_square`` seen from the side to move (for White the
board is rotated 180 degrees): directions 0-9 are the ten ways a piece can arrive
(up, up-left, up-right, left, right, down, down-left, down-right, and the two knight
jumps), 10-19 the same with promotion, 20-26 drops of P, L, N, S, G, B, R.
The labels are exactly ``rsshogi.policy.move_label``; this module only makes them
fast to apply to whole lists of moves (one table lookup per move, in ``keisei.shogi.encoding``).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from rsshogi.policy import MOVE_LABEL_COUNT, move_label
from rsshogi.types import Color as RsColor

from keisei.shogi import _native

NUM_ACTIONS = MOVE_LABEL_COUNT
assert NUM_ACTIONS == _native.NUM_LABELS == 2187

#: rsshogi's 16-bit move: to-square in bits 0-6, from-square (or dropped piece type) 7-13, these flags.
DROP_FLAG = 1 << 14
PROMOTE_FLAG = 1 << 15
_DROPPABLE = range(1, 8)  # rsshogi PieceType values P, L, N, S, B, R, G


@cache
def label_table() -> np.ndarray:
    """``table[turn, move_value & 0xffff]`` -> label (-1 where no move has that value).

    Built once from rsshogi's own ``move_label`` for every 16-bit move value a legal
    move can have (from x to x promotion, and drops), for both sides to move.
    """
    table = np.full((2, 1 << 16), -1, dtype=np.int16)
    values = [frm << 7 | to | promo for frm in range(81) for to in range(81) if frm != to
              for promo in (0, PROMOTE_FLAG)]
    values += [DROP_FLAG | pt << 7 | to for pt in _DROPPABLE for to in range(81)]
    for turn, color in enumerate((RsColor.BLACK, RsColor.WHITE)):
        for value in values:
            try:
                table[turn, value] = move_label(value, color)
            except ValueError:  # geometry no piece can make: never a legal move
                continue
    table.setflags(write=False)
    return table


def move_to_action(move: str, turn: str) -> int:
    """Label of the USI move ``move`` played by ``turn`` ("b" or "w")."""
    if turn not in ("b", "w"):
        raise ValueError(f"turn must be 'b' or 'w', got {turn!r}")
    try:
        return move_label(move, RsColor.BLACK if turn == "b" else RsColor.WHITE)
    except ValueError as exc:
        raise ValueError(f"malformed move {move!r}: {exc}") from None
