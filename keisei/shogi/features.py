"""Observations: a stack of 122 binary 9x9 planes from the side to move's view.

The first 119 follow dlshogi's input features (62 board planes + 57 hand/check planes);
then ``white_to_move`` and the repetition planes ``repeated_ge1``/``repeated_ge2``;
docs/observations.md describes every plane. Square ``s`` of a plane is
``file_index * 9 + rank_index`` in the side-to-move frame (White's view is the board
rotated 180 degrees), the same numbering as the to-square of an action label, so
``obs.reshape(122, 9, 9)[c, file_index, rank_index]``.

The repetition planes need the game's history: ``keisei.shogi.encoding`` fills them from
the ``Game``; the planes of bare SFENs here have them at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keisei.shogi import _native

NUM_PLANES = _native.NUM_PLANES
OBSERVATION_SHAPE = (NUM_PLANES, 9, 9)

#: Version of the observation planes *and* the action labels. Checkpoints store it;
#: bump it whenever either encoding changes.
ENCODING_VERSION = "keisei-obs122-dlshogi2187-v2"

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
    for side in ("own", "opp"):
        names += [f"{side}_hand_{p}_ge{k}" for p, n in HAND_PLANES for k in range(1, n + 1)]
    names.append("in_check")
    names.append("white_to_move")
    names += ["repeated_ge1", "repeated_ge2"]
    return tuple(names)


#: Name of each plane, in order (len == NUM_PLANES).
PLANE_NAMES = _plane_names()
assert len(PLANE_NAMES) == NUM_PLANES

#: Planes ``[BOARD_PLANES, NUM_PLANES)`` (hands, check, side to move, repetition) are all ones or all
#: zeros: one number per position spread over the board. The network's first convolution uses that
#: (``keisei.model.StemConv``).
BOARD_PLANES = PLANE_NAMES.index("own_hand_pawn_ge1")


def encode_observations(sfens: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
    """Planes of many positions at once: uint8 array of shape (len(sfens), 122, 9, 9).

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
    return out


def encode_observation(sfen: str) -> np.ndarray:
    """Planes of one position: uint8 array of shape (122, 9, 9) (repetition planes 0, as
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
