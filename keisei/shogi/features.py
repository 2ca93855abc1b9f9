"""Observations: a stack of 125 binary 9x9 planes from the side to move's view.

dlshogi's input features (62 board planes + 57 hand/check planes) with three mate planes
after the board planes (``mate_in_one_to``/``_from``: the squares of every move that mates at once;
``opp_mate_in_one_to``: where the opponent would mate at once if it were its move); then
``white_to_move`` and the repetition planes ``repeated_ge1``/``repeated_ge2``;
docs/observations.md describes every plane. Square ``s`` of a plane is
``file_index * 9 + rank_index`` in the side-to-move frame (White's view is the board
rotated 180 degrees), the same numbering as the to-square of an action label, so
``obs.reshape(125, 9, 9)[c, file_index, rank_index]``.

The C extension's plane encoders write the mate planes 0; ``fill_mate_planes`` sets them (the
environment's encoder, ``keisei.shogi.encoding``, from the positions it keeps). The repetition
planes need the game's history: ``keisei.shogi.encoding`` fills them from the ``Game``; the planes
of bare SFENs here have them at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rsshogi.core import Board

from keisei.shogi import _native

NUM_PLANES = _native.NUM_PLANES
OBSERVATION_SHAPE = (NUM_PLANES, 9, 9)

#: Version of the observation planes *and* the action labels. Checkpoints store it;
#: bump it whenever either encoding changes.
ENCODING_VERSION = "keisei-obs125-dlshogi2187-v3"

PIECE_NAMES = ("pawn", "lance", "knight", "silver", "bishop", "rook", "gold", "king",
               "pro_pawn", "pro_lance", "pro_knight", "pro_silver", "horse", "dragon")
HAND_PLANES = (("pawn", 8), ("lance", 4), ("knight", 4), ("silver", 4), ("gold", 4),
               ("bishop", 2), ("rook", 2))

#: Material value of each piece in pawns (promoted minor pieces count as golds; the king none):
#: the heuristic player's captures and the model's material potential (``material_weights``).
PIECE_VALUES = {"pawn": 1, "lance": 3, "knight": 4, "silver": 5, "bishop": 8, "rook": 10, "gold": 6, "king": 0,
                "pro_pawn": 6, "pro_lance": 6, "pro_knight": 6, "pro_silver": 6, "horse": 10, "dragon": 12}


def _plane_names() -> tuple[str, ...]:
    names = [f"own_{p}" for p in PIECE_NAMES] + [f"opp_{p}" for p in PIECE_NAMES]
    names += [f"own_attacks_by_{p}" for p in PIECE_NAMES] + [f"opp_attacks_by_{p}" for p in PIECE_NAMES]
    names += [f"own_attackers_ge{k}" for k in (1, 2, 3)] + [f"opp_attackers_ge{k}" for k in (1, 2, 3)]
    names += ["mate_in_one_to", "mate_in_one_from", "opp_mate_in_one_to"]
    for side in ("own", "opp"):
        names += [f"{side}_hand_{p}_ge{k}" for p, n in HAND_PLANES for k in range(1, n + 1)]
    names.append("in_check")
    names.append("white_to_move")
    names += ["repeated_ge1", "repeated_ge2"]
    return tuple(names)


#: Name of each plane, in order (len == NUM_PLANES).
PLANE_NAMES = _plane_names()
assert len(PLANE_NAMES) == NUM_PLANES

#: The three mate planes (``fill_mate_planes``).
MATE_PLANE = PLANE_NAMES.index("mate_in_one_to")
assert PLANE_NAMES[MATE_PLANE:MATE_PLANE + 3] == ("mate_in_one_to", "mate_in_one_from", "opp_mate_in_one_to")

#: Planes ``[BOARD_PLANES, NUM_PLANES)`` (hands, check, side to move, repetition) are all ones or all
#: zeros: one number per position spread over the board. The network's first convolution uses that
#: (``keisei.model.StemConv``).
BOARD_PLANES = PLANE_NAMES.index("own_hand_pawn_ge1")


def fill_mate_planes(boards: Sequence[Board], obs: np.ndarray) -> None:
    """Set the mate planes of ``obs[i]`` (uint8 (n, 125, 9, 9); the other planes are left as they are)
    from ``boards[i]``: ``mate_in_one_to`` and ``_from`` mark the to- and from-squares of every legal
    move of the side to move that checkmates at once (a drop has no from-square),
    ``opp_mate_in_one_to`` the to-squares of the opponent's mating moves if the side to move passed
    (nothing while in check: passing then is not a position). Every mating move, not one: the planes
    of a position and of its colour-flipped twin are the same.

    The C extension finds them (``_native.mate_planes_boards``, from each board's packed SFEN) by
    trying only the moves that can give check, under rsshogi's rules: checkmate is check with no
    legal reply, a pawn drop that mates is illegal. The environment's encoder computes the same
    planes from the positions it keeps (``_native.mate_planes``); benchmarks/env_throughput.py
    measures what they cost."""
    _native.mate_planes_boards(boards, obs)


def encode_observations(sfens: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
    """Planes of many positions at once: uint8 array of shape (len(sfens), 125, 9, 9).

    An SFEN carries no history, so ``repeated_ge1``/``repeated_ge2`` are 0 here (as for a game
    that starts at that SFEN); ``keisei.shogi.encode(games)`` fills them from each game."""
    n = len(sfens)
    if out is None:
        out = np.empty((n, *OBSERVATION_SHAPE), dtype=np.uint8)
    elif out.dtype != np.uint8 or out.shape != (n, *OBSERVATION_SHAPE) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {(n, *OBSERVATION_SHAPE)}, "
                         f"got {out.dtype} {out.shape}")
    turns = np.empty(n, dtype=np.uint8)
    _native.encode_planes(sfens, out, turns)
    fill_mate_planes([Board(sfen) for sfen in sfens], out)
    return out


def encode_observation(sfen: str) -> np.ndarray:
    """Planes of one position: uint8 array of shape (125, 9, 9) (repetition planes 0, as
    ``encode_observations``)."""
    return encode_observations([sfen])[0]


def material_weights() -> np.ndarray:
    """Per plane, the material (in pawns, ``PIECE_VALUES``) that one set square of it stands for, from
    the side to move's view: ``(obs.sum((2, 3)) * material_weights()).sum(1)`` is the material balance
    of each position, board and hands (a hand plane "at least k" is all ones: 1/81 per square)."""
    weights = np.zeros(NUM_PLANES, dtype=np.float32)
    for i, name in enumerate(PLANE_NAMES):
        side, _, rest = name.partition("_")
        sign = {"own": 1.0, "opp": -1.0}.get(side, 0.0)
        if rest in PIECE_VALUES:
            weights[i] = sign * PIECE_VALUES[rest]
        elif rest.startswith("hand_"):
            weights[i] = sign * PIECE_VALUES[rest[len("hand_"):].rsplit("_", 1)[0]] / 81
    return weights
