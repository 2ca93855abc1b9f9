"""Shogi rules (via rsshogi), action labels, observation planes and the encoder of games for the network.

Modules, lowest first: ``actions`` (labels), ``features`` (planes of SFENs), ``game`` (rules,
adjudication, records), ``encoding`` (games -> planes and masks; labels -> moves).
"""

from keisei.shogi.actions import NUM_ACTIONS, move_to_action
from keisei.shogi.encoding import Encoder, action_to_move, encode, legal_mask
from keisei.shogi.features import (
    ENCODING_VERSION,
    NUM_PLANES,
    OBSERVATION_SHAPE,
    PLANE_NAMES,
    encode_observation,
    encode_observations,
)
from keisei.shogi.game import (
    MAX_PLIES,
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
    "MAX_PLIES",
    "NUM_ACTIONS",
    "NUM_PLANES",
    "OBSERVATION_SHAPE",
    "PLANE_NAMES",
    "STARTPOS",
    "Color",
    "Encoder",
    "Game",
    "IllegalMoveError",
    "Result",
    "Termination",
    "action_to_move",
    "declaration_points",
    "encode",
    "encode_observation",
    "encode_observations",
    "legal_mask",
    "move_to_action",
    "parse_sfen",
    "random_opening",
]
