"""Shogi rules (via rsshogi), action labels and observation planes."""

from keisei.shogi.actions import NUM_ACTIONS, action_to_move, legal_mask, move_to_action
from keisei.shogi.features import (
    ENCODING_VERSION,
    NUM_PLANES,
    OBSERVATION_SHAPE,
    PLANE_NAMES,
    encode_observation,
    encode_observations,
)
from keisei.shogi.game import (
    STARTPOS,
    Color,
    Game,
    IllegalMoveError,
    Result,
    Termination,
    declaration_points,
    parse_sfen,
    random_opening,
)

__all__ = [
    "ENCODING_VERSION",
    "NUM_ACTIONS",
    "NUM_PLANES",
    "OBSERVATION_SHAPE",
    "PLANE_NAMES",
    "STARTPOS",
    "Color",
    "Game",
    "IllegalMoveError",
    "Result",
    "Termination",
    "action_to_move",
    "declaration_points",
    "encode_observation",
    "encode_observations",
    "legal_mask",
    "move_to_action",
    "parse_sfen",
    "random_opening",
]
