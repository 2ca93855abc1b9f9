"""Observation planes, checked against rsshogi's own attack and check queries; the mate planes against
a brute-force search over the legal moves; the side-to-move and repetition planes against the games
they come from."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MATE_IN_ONE
from rsshogi.core import Board
from rsshogi.types import Color as RsColor
from rsshogi.types import PieceType, Square

from keisei.shogi import (
    ENCODING_VERSION,
    NUM_PLANES,
    PLANE_NAMES,
    STARTPOS,
    Color,
    Game,
    Termination,
    encode,
    encode_observation,
    encode_observations,
    random_opening,
)
from keisei.shogi.features import BOARD_PLANES, HAND_PLANES, PIECE_NAMES

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
    assert NUM_PLANES == len(PLANE_NAMES) == 125
    assert len(set(PLANE_NAMES)) == NUM_PLANES
    assert PLANE_NAMES[62:65] == ("mate_in_one_to", "mate_in_one_from", "opp_mate_in_one_to")
    assert PLANE_NAMES[BOARD_PLANES] == "own_hand_pawn_ge1" and BOARD_PLANES == 65
    assert PLANE_NAMES[121:] == ("in_check", "white_to_move", "repeated_ge1", "repeated_ge2")
    assert ENCODING_VERSION == "keisei-obs125-dlshogi2187-v3"
    obs = encode_observation(STARTPOS)
    assert obs.shape == (125, 9, 9) and obs.dtype == np.uint8
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
    assert counts["mate_in_one_to"] == counts["mate_in_one_from"] == counts["opp_mate_in_one_to"] == 0
    assert counts["white_to_move"] == counts["repeated_ge1"] == counts["repeated_ge2"] == 0
    # Symmetric start: White sees exactly what Black sees, but for the side-to-move plane.
    white = encode_observation(STARTPOS.replace(" b ", " w "))
    assert set(plane(white, "white_to_move")) == {1}
    assert np.array_equal(without_side(obs), without_side(white))


def without_side(obs: np.ndarray) -> np.ndarray:
    return np.delete(obs, PLANE_NAMES.index("white_to_move"), axis=0)


def test_colour_flipped_twin_gives_identical_planes_but_the_side_to_move(random_positions: list[Game]) -> None:
    for game in random_positions[::3]:
        sfen = game.sfen()
        twin = Board(sfen).to_sfen_flipped()
        assert twin != sfen
        obs, twin_obs = encode_observation(sfen), encode_observation(twin)
        assert np.array_equal(without_side(obs), without_side(twin_obs)), sfen
        assert set(plane(obs, "white_to_move")) == {int(game.turn is Color.WHITE)}
        assert set(plane(twin_obs, "white_to_move")) == {int(game.turn is Color.BLACK)}


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
        assert set(plane(obs, "white_to_move")) == {int(board.turn == RsColor.WHITE)}
        assert set(plane(obs, "repeated_ge1")) == set(plane(obs, "repeated_ge2")) == {0}  # an SFEN has no history
    assert checks_seen > 0


WHITE_MATE_IN_ONE = "4k4/9/9/9/9/9/4p4/9/4K4 w g 1"  # G*5h


def mating_moves(sfen: str) -> list[tuple[int, int | None]]:
    """(to, from) squares (board numbering; from None for a drop) of every legal move of ``sfen`` that
    ends the game by checkmate, each move played in a fresh ``Game``."""
    found = []
    for move in Game(sfen).legal_moves:
        game = Game(sfen)
        game.play(move)
        if game.termination is Termination.CHECKMATE:
            found.append((move.to_sq.value, None if move.is_drop() else move.from_sq.value))
    return found


def passed(sfen: str) -> str:
    """The position with the other side to move (nothing else changed)."""
    fields = sfen.split(" ")
    fields[1] = {"b": "w", "w": "b"}[fields[1]]
    return " ".join(fields)


def squares(obs: np.ndarray, name: str) -> set[int]:
    return set(np.flatnonzero(plane(obs, name)).tolist())


def test_mate_planes_mark_every_mating_move(random_positions: list[Game]) -> None:
    """For every position: ``mate_in_one_to``/``_from`` mark the to- and from-squares of all legal moves
    that mate (no from-square for a drop); ``opp_mate_in_one_to`` the to-squares of the opponent's mating
    moves with the side to move passing, nothing while in check. Checked by playing every legal move, on
    random positions and on positions played out from mate-in-one starts."""
    rng = np.random.default_rng(5)
    sfens = [g.sfen() for g in random_positions[::4]]
    for start in (MATE_IN_ONE, WHITE_MATE_IN_ONE, "8k/9/9/9/9/9/9/9/K8 b 2r2b4g4s4n4l18p 1"):
        template = Game(start, max_plies=400)
        sfens += [random_opening(template, int(rng.integers(0, 6)), rng, tries=10_000).sfen() for _ in range(30)]
    seen = {"mate": 0, "several": 0, "drop": 0, "threat": 0, "none": 0}
    for sfen in sfens:
        board = Board(sfen)
        obs = encode_observation(sfen)
        mates = mating_moves(sfen)
        assert squares(obs, "mate_in_one_to") == {frame_square(board, to) for to, _ in mates}, sfen
        assert squares(obs, "mate_in_one_from") == {frame_square(board, frm) for _, frm in mates
                                                    if frm is not None}, sfen
        seen["mate"] += bool(mates)
        seen["several"] += len({to for to, _ in mates}) > 1
        seen["drop"] += any(frm is None for _, frm in mates)
        seen["none"] += not mates
        threat = squares(obs, "opp_mate_in_one_to")
        if board.is_in_check():
            assert threat == set(), sfen
            continue
        threats = {frame_square(board, to) for to, _ in mating_moves(passed(sfen))}
        assert threat == threats, sfen
        seen["threat"] += bool(threats)
    assert min(seen.values()) > 0, seen  # every case met


def test_batch_equals_single(random_positions: list[Game]) -> None:
    sfens = [g.sfen() for g in random_positions[:50]]
    batch = encode_observations(sfens)
    for sfen, obs in zip(sfens, batch):
        assert np.array_equal(obs, encode_observation(sfen))


@pytest.mark.parametrize("bad", ["", "lnsgkgsnl/9 b - 1", STARTPOS.replace(" b ", " x ")])
def test_malformed_sfen_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="SFEN"):
        encode_observation(bad)


# --- side to move and repetitions, from games ----------------------------------------------

#: Both kings step out and back: after every 4 plies the start position recurs (the 4th
#: occurrence, after 12 plies, ends the game as sennichite).
KING_SHUFFLE = ["5i5h", "5a5b", "5h5i", "5b5a"]


def extra_planes(obs: np.ndarray) -> tuple[int, int, int]:
    """(white_to_move, repeated_ge1, repeated_ge2) of one observation, each plane checked to be uniform."""
    values = []
    for name in ("white_to_move", "repeated_ge1", "repeated_ge2"):
        (value,) = set(plane(obs, name).tolist())
        values.append(value)
    return tuple(values)


def expected_planes(game: Game) -> np.ndarray:
    """The planes of ``game`` by an independent path: its SFEN's planes, the repetition planes set from
    ``Game.repetitions``."""
    obs = encode_observation(game.sfen())
    obs[PLANE_NAMES.index("repeated_ge1")] = game.repetitions >= 1
    obs[PLANE_NAMES.index("repeated_ge2")] = game.repetitions >= 2
    return obs


def test_side_to_move_plane_for_both_colours() -> None:
    game = Game()
    for ply, usi in enumerate(["7g7f", "3c3d", "2g2f", "8c8d"]):
        assert extra_planes(encode([game])[0][0]) == (ply % 2, 0, 0)
        game.push(usi)
    assert game.turn is Color.BLACK and extra_planes(encode([game])[0][0]) == (0, 0, 0)
    white_start = Game(STARTPOS.replace(" b ", " w "))
    assert extra_planes(encode([white_start])[0][0]) == (1, 0, 0)


def test_repetition_planes_count_earlier_occurrences() -> None:
    game = Game()
    seen: list[tuple[int, int, int]] = []
    for usi in KING_SHUFFLE * 3:
        obs = encode([game])[0][0]
        seen.append(extra_planes(obs))
        assert np.array_equal(obs, expected_planes(game))
        game.push(usi)
    # each of the 4 positions of the cycle: first time 0/0, second 1/0, third 1/1
    assert seen == [(p % 2, 0, 0) for p in range(4)] + [(p % 2, 1, 0) for p in range(4)] + [(p % 2, 1, 1)
                                                                                          for p in range(4)]
    assert game.is_over and game.termination is Termination.SENNICHITE and game.repetitions == 3
    assert extra_planes(encode([game])[0][0]) == (0, 1, 1)  # the 4th occurrence: at least twice before
    assert extra_planes(encode_observation(game.sfen())) == (0, 0, 0)  # an SFEN alone has no history


def test_a_repetition_is_the_whole_position() -> None:
    """The same board with the other side to move, or with a piece in the other hand, is a new position."""
    # Black's king goes round a triangle, White's steps out and back: the start board, White to move.
    game = Game()
    for usi in ["5i5h", "5a5b", "5h4h", "5b5a", "4h5i"]:
        game.push(usi)
    assert game.sfen().split()[:3] == STARTPOS.replace(" b ", " w ").split()[:3]
    assert game.repetitions == 0 and extra_planes(encode([game])[0][0]) == (1, 0, 0)
    # The pawn Black drops is taken, the rook goes back, both kings return: the start board, Black
    # to move, the pawn in White's hand instead of Black's.
    start = "8k/9/4r4/9/9/9/9/9/K8 b P 1"
    game = Game(start)
    for usi in ["P*5d", "5c5d", "9i9h", "1a1b", "9h8h", "5d5c", "8h9i", "1b1a"]:
        game.push(usi)
    assert game.sfen().split()[:3] == ["8k/9/4r4/9/9/9/9/9/K8", "b", "p"]
    assert game.repetitions == 0 and extra_planes(encode([game])[0][0]) == (0, 0, 0)
    assert Board(start).zobrist_hash() != Board(game.sfen()).zobrist_hash()
    assert Board(STARTPOS).zobrist_hash() != Board(STARTPOS.replace(" b ", " w ")).zobrist_hash()


def test_copies_play_lines_and_replays_keep_their_own_counts() -> None:
    game = Game()
    for usi in KING_SHUFFLE:
        game.push(usi)
    copy = game.copy()
    for usi in KING_SHUFFLE:
        copy.push(usi)
    assert (game.repetitions, copy.repetitions) == (1, 2)
    obs, _ = encode([game, copy])
    assert [extra_planes(o) for o in obs] == [(0, 1, 0), (0, 1, 1)]
    # play_line pushes every move of the line, so the count sees the positions in between
    played, line, moves = Game(), Game(), []
    for usi in KING_SHUFFLE * 2:
        moves.append(next(m for m in played.legal_moves if m.to_usi() == usi))
        played.play(moves[-1])
    line.play_line(moves)
    assert line.sfen() == played.sfen() and line.repetitions == played.repetitions == 2
    replayed = Game.from_usi_position("startpos moves " + " ".join(KING_SHUFFLE * 2))
    assert replayed.repetitions == 2
    assert np.array_equal(encode([replayed])[0], encode([line])[0])
