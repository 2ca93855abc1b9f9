"""Observation planes, checked against rsshogi's own attack and check queries."""

from __future__ import annotations

import numpy as np
import pytest
from rsshogi.core import Board
from rsshogi.types import Color as RsColor
from rsshogi.types import PieceType, Square

from keisei.shogi import (
    ENCODING_VERSION,
    NUM_PLANES,
    PLANE_NAMES,
    STARTPOS,
    Game,
    encode_observation,
    encode_observations,
)
from keisei.shogi.features import HAND_PLANES, PIECE_NAMES

PIECE_TYPES = [PieceType(v) for v in range(1, 15)]  # rsshogi order, as PIECE_NAMES
HAND_LETTERS = "PLNSGBR"  # dlshogi hand order, as HAND_PLANES


def plane(obs: np.ndarray, name: str) -> np.ndarray:
    return obs[PLANE_NAMES.index(name)].reshape(81)


def frame_square(board: Board, square: int) -> int:
    """Index of a board square in the side-to-move frame (rotated for White)."""
    return square if board.turn == RsColor.BLACK else 80 - square


def bitboard_in_frame(board: Board, bb) -> np.ndarray:
    out = np.zeros(81, dtype=np.uint8)
    for sq in range(81):
        if bb.test(Square.from_index(sq)):
            out[frame_square(board, sq)] = 1
    return out


def test_layout_and_version() -> None:
    assert NUM_PLANES == len(PLANE_NAMES) == 119
    assert len(set(PLANE_NAMES)) == NUM_PLANES
    assert isinstance(ENCODING_VERSION, str) and ENCODING_VERSION
    obs = encode_observation(STARTPOS)
    assert obs.shape == (119, 9, 9) and obs.dtype == np.uint8
    assert set(np.unique(obs)) <= {0, 1}


def test_start_position_by_hand() -> None:
    obs = encode_observation(STARTPOS)
    counts = {name: int(plane(obs, name).sum()) for name in PLANE_NAMES}
    assert counts["own_pawn"] == counts["opp_pawn"] == 9
    assert counts["own_king"] == counts["opp_king"] == 1
    # Worked out on a board: rook 1h-7h + 2g + 2i, bishop 9g 7g 9i 7i, golds 8 squares.
    assert counts["own_attacks_by_rook"] == 9
    assert counts["own_attacks_by_bishop"] == 4
    assert counts["own_attacks_by_gold"] == 8
    assert counts["own_attacks_by_knight"] == 4
    assert plane(obs, "own_pawn")[6 * 9 + 6] == 1  # a pawn on 7g
    assert sum(v for k, v in counts.items() if "hand" in k) == 0
    assert counts["in_check"] == 0
    # Symmetric start: White sees exactly what Black sees.
    assert np.array_equal(obs, encode_observation(STARTPOS.replace(" b ", " w ")))


def test_colour_flipped_twin_gives_identical_planes(random_positions: list[Game]) -> None:
    for game in random_positions[::3]:
        sfen = game.sfen()
        twin = Board(sfen).to_sfen_flipped()
        assert twin != sfen
        assert np.array_equal(encode_observation(sfen), encode_observation(twin)), sfen


def test_planes_match_rsshogi(random_positions: list[Game]) -> None:
    checks_seen = 0
    for game in random_positions[::5]:
        board = Board(game.sfen())
        obs = encode_observation(game.sfen())
        me, them = board.turn, board.turn.opponent()
        for side, colour in (("own", me), ("opp", them)):
            counts = np.zeros(81, dtype=np.int64)
            for name, piece_type in zip(PIECE_NAMES, PIECE_TYPES):
                pieces = bitboard_in_frame(board, board.pieces_for(piece_type, colour))
                assert np.array_equal(plane(obs, f"{side}_{name}"), pieces), (game.sfen(), side, name)
                attacks = bitboard_in_frame(board, board.attacks_by(colour, piece_type))
                assert np.array_equal(plane(obs, f"{side}_attacks_by_{name}"), attacks), (game.sfen(), name)
            for sq in range(81):
                attackers = board.attackers_to_color_current(colour, Square.from_index(sq)).count()
                counts[frame_square(board, sq)] = attackers
            for k in (1, 2, 3):
                assert np.array_equal(plane(obs, f"{side}_attackers_ge{k}"), (counts >= k).astype(np.uint8))
            hand = board.hand_counts(colour)
            for (name, limit), letter in zip(HAND_PLANES, HAND_LETTERS):
                for k in range(1, limit + 1):
                    expected = 1 if hand[letter] >= k else 0
                    assert set(plane(obs, f"{side}_hand_{name}_ge{k}")) == {expected}
        in_check = board.is_in_check()
        checks_seen += in_check
        assert set(plane(obs, "in_check")) == {int(in_check)}
    assert checks_seen > 0


def test_batch_equals_single(random_positions: list[Game]) -> None:
    sfens = [g.sfen() for g in random_positions[:50]]
    batch = encode_observations(sfens)
    for sfen, obs in zip(sfens, batch):
        assert np.array_equal(obs, encode_observation(sfen))


@pytest.mark.parametrize("bad", ["", "lnsgkgsnl/9 b - 1", STARTPOS.replace(" b ", " x ")])
def test_malformed_sfen_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="SFEN"):
        encode_observation(bad)
