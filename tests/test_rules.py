"""The rules of a game of Shogi as ``keisei.shogi.Game`` applies them, on real positions.

Every position below is built from an SFEN and checked (legal moves, check) before the
rule under test is asserted, so that each test passes for the reason it names. Most
positions are given for Black and turned into the same position for White with
``flip_sfen`` / ``flip_move`` (the board rotated 180 degrees, colours swapped).
"""

from __future__ import annotations

import random
import re

import pytest
from rsshogi.record import Record

from keisei.shogi import STARTPOS, Color, Game, IllegalMoveError, Result, Termination, _native, declaration_points

# --- helpers -------------------------------------------------------------------------------


def _rank_tokens(rank: str) -> list[str]:
    """'4+P3' -> ['1', '1', '1', '1', '+P', '1', '1', '1']: one token per square."""
    tokens, i = [], 0
    while i < len(rank):
        if rank[i].isdigit():
            tokens += ["1"] * int(rank[i])
            i += 1
        elif rank[i] == "+":
            tokens.append(rank[i : i + 2])
            i += 2
        else:
            tokens.append(rank[i])
            i += 1
    return tokens


def _join_rank(tokens: list[str]) -> str:
    out, empty = "", 0
    for token in tokens:
        if token == "1":
            empty += 1
            continue
        if empty:
            out += str(empty)
            empty = 0
        out += token
    return out + (str(empty) if empty else "")


def flip_sfen(sfen: str) -> str:
    """The same position with the board rotated 180 degrees and the colours swapped."""
    board, side, hand, *rest = sfen.split()
    ranks = [
        _join_rank([t.swapcase() for t in reversed(_rank_tokens(r))]) for r in reversed(board.split("/"))
    ]
    side = "w" if side == "b" else "b"
    hand = hand if hand == "-" else hand.swapcase()
    return " ".join([*("/".join(ranks), side, hand), *rest])


def _flip_square(square: str) -> str:
    return f"{10 - int(square[0])}{chr(ord('a') + ord('i') - ord(square[1]))}"


def flip_move(usi: str) -> str:
    if usi[1] == "*":
        return usi[:2] + _flip_square(usi[2:4])
    return _flip_square(usi[:2]) + _flip_square(usi[2:4]) + usi[4:]


def play(game: Game, moves: list[str]) -> Game:
    for index, usi in enumerate(moves):
        assert not game.is_over, f"game ended ({game.termination}) before move {index} ({usi})"
        game.push(usi)
    return game


def position_key(game: Game) -> str:
    """Board, side to move and hands (the SFEN without its move number)."""
    return " ".join(game.sfen().split()[:3])


def drops(game: Game, piece: str) -> set[str]:
    return {m for m in game.legal_usi() if m.startswith(f"{piece}*")}


def moves_from(game: Game, square: str) -> set[str]:
    return {m for m in game.legal_usi() if m.startswith(square)}


def assert_running(game: Game) -> None:
    assert not game.is_over
    assert game.result is None
    assert game.termination is None
    assert game.winner is None
    assert game.legal_usi()


def assert_over(game: Game, result: Result, termination: Termination) -> None:
    assert game.is_over
    assert game.result is result
    assert game.termination is termination
    assert game.legal_usi() == []
    winner = {Result.BLACK_WIN: Color.BLACK, Result.WHITE_WIN: Color.WHITE, Result.DRAW: None}[result]
    assert game.winner is winner


COLOURS = pytest.mark.parametrize("colour", [Color.BLACK, Color.WHITE])


def for_colour(colour: Color, sfen: str, *moves: str) -> tuple[str, ...]:
    """``sfen`` and ``moves`` (or squares) written for Black, turned into White's if ``colour`` is White."""
    if colour is Color.BLACK:
        return (sfen, *moves)
    return (
        flip_sfen(sfen) if sfen else sfen,
        *(_flip_square(m) if len(m) == 2 else flip_move(m) for m in moves),
    )


def test_flip_helpers() -> None:
    assert flip_sfen(STARTPOS) == STARTPOS.replace(" b ", " w ")
    sfen = "l6nl/5+P1gk/2np1S3/p1p4Pp/3P2Sp1/1PPb2P1P/P5GS1/R8/LN4bKL w GR5pnsg 1"
    assert flip_sfen(flip_sfen(sfen)) == sfen
    assert flip_sfen("4k4/9/4+P4/9/9/9/9/9/4K4 b 2P 1") == "4k4/9/9/9/9/9/4+p4/9/4K4 w 2p 1"
    assert [flip_move(m) for m in ("7g7f", "8h2b+", "P*5e", "1c1b")] == ["3c3d", "2b8h+", "P*5e", "9g9h"]
    # the flipped start position has the flipped legal moves
    black = Game(STARTPOS)
    white = Game(flip_sfen(STARTPOS))
    assert sorted(white.legal_usi()) == sorted(flip_move(m) for m in black.legal_usi())


# --- repetition (sennichite) --------------------------------------------------------------

BARE_KINGS = "4k4/9/9/9/9/9/9/9/4K4 b - 1"
KING_SHUFFLE = ["5i4i", "5a4a", "4i5i", "4a5a"]


def test_third_occurrence_is_not_a_draw_fourth_is() -> None:
    game = Game(BARE_KINGS)
    start = position_key(game)
    play(game, KING_SHUFFLE * 2)
    assert position_key(game) == start  # 3rd occurrence
    assert_running(game)
    play(game, KING_SHUFFLE[:3])
    assert game.ply == 11
    assert_running(game)
    game.push(KING_SHUFFLE[3])
    assert position_key(game) == start  # 4th occurrence
    assert game.ply == 12
    assert_over(game, Result.DRAW, Termination.SENNICHITE)


def test_repetition_with_a_long_cycle() -> None:
    # Each king walks round a loop of 10 squares: a 20-ply cycle in which no position repeats.
    black = ["5i4i", "4i3i", "3i2i", "2i1i", "1i1h", "1h2h", "2h3h", "3h4h", "4h5h", "5h5i"]
    white = ["5a6a", "6a7a", "7a8a", "8a9a", "9a9b", "9b8b", "8b7b", "7b6b", "6b5b", "5b5a"]
    cycle = [move for pair in zip(black, white) for move in pair]
    game = Game(BARE_KINGS)
    seen = [position_key(game)]
    for usi in cycle[:-1]:
        game.push(usi)
        seen.append(position_key(game))
    assert len(set(seen)) == 20  # one cycle holds 20 different positions
    game.push(cycle[-1])
    play(game, cycle)  # ply 40: 3rd occurrence of the start
    assert game.ply == 40
    assert_running(game)
    play(game, cycle[:-1])
    assert game.ply == 59
    assert_running(game)
    game.push(cycle[-1])
    assert game.ply == 60
    assert_over(game, Result.DRAW, Termination.SENNICHITE)


def test_same_board_with_the_other_side_to_move_is_another_position() -> None:
    # Black's king walks a triangle (3 moves), White's shuffles (2 moves): the start board
    # comes back with White to move at ply 5, 17, 29 and with Black to move at ply 12, 24, 36.
    game = Game(BARE_KINGS)
    board = BARE_KINGS.split()[0]
    black, white = ["5i4i", "4i4h", "4h5i"], ["5a4a", "4a5a"]
    sides = []
    for k in range(18):
        game.push(black[k % 3])
        if game.sfen().split()[0] == board:
            sides.append((game.ply, game.turn))
        if game.ply < 36:
            assert_running(game)
        game.push(white[k % 2])
        if game.sfen().split()[0] == board:
            sides.append((game.ply, game.turn))
        if game.ply < 36:
            assert_running(game)
    assert sides == [
        (5, Color.WHITE),
        (12, Color.BLACK),
        (17, Color.WHITE),
        (24, Color.BLACK),
        (29, Color.WHITE),
        (36, Color.BLACK),
    ]
    assert game.ply == 36
    assert_over(game, Result.DRAW, Termination.SENNICHITE)


def test_same_board_with_other_hands_is_another_position() -> None:
    # Black holds a pawn; it is dropped and captured, and the same board comes back with
    # White holding the pawn.
    game = Game("4k4/4r4/9/9/9/9/9/9/K8 b P 1")
    shuffle = ["9i8i", "5a4a", "8i9i", "4a5a"]
    play(game, shuffle * 2)
    assert game.sfen().startswith("4k4/4r4/9/9/9/9/9/9/K8 b P ")  # 3rd occurrence
    play(game, ["P*5e", "5b5e", "9i8i", "5e5b", "8i9h", "5a6a", "9h9i", "6a5a"])
    assert game.sfen().startswith("4k4/4r4/9/9/9/9/9/9/K8 b p ")  # same board, White has the pawn
    assert game.ply == 16
    assert_running(game)
    play(game, shuffle * 2)  # 3rd occurrence of the new position
    assert_running(game)
    play(game, shuffle[:3])
    assert_running(game)
    game.push(shuffle[3])
    assert game.ply == 28
    assert_over(game, Result.DRAW, Termination.SENNICHITE)


# --- perpetual check ------------------------------------------------------------------------

# Black's rook checks White's king from 5e and 4e while the king steps between 5a and 4a.
ROOK_CHECKS = "4k4/9/9/9/5R3/9/9/9/8K b - 1"
ROOK_CHECK_CYCLE = ["4e5e", "5a4a", "5e4e", "4a5a"]


@pytest.mark.parametrize("start_with_checker", [True, False])
@COLOURS
def test_perpetual_check_loses_for_the_checking_side(colour: Color, start_with_checker: bool) -> None:
    sfen, *cycle = for_colour(colour, ROOK_CHECKS, *ROOK_CHECK_CYCLE)
    if not start_with_checker:  # start after the first check: the checked side moves first
        game = Game(sfen)
        game.push(cycle[0])
        sfen, cycle = game.sfen(), [*cycle[1:], cycle[0]]
    game = Game(sfen)
    checker = colour
    for usi in cycle:
        mover = game.turn
        game.push(usi)
        assert game.is_in_check() is (mover is checker), usi
    play(game, cycle)
    play(game, cycle[:3])
    assert game.ply == 11
    assert_running(game)
    game.push(cycle[3])
    assert game.ply == 12
    assert_over(game, Result.win_for(checker.opponent), Termination.PERPETUAL_CHECK)


@COLOURS
def test_repetition_with_checks_on_some_moves_only_is_a_draw(colour: Color) -> None:
    # The rook checks from 5e, the king steps to 6a, the rook goes back to 4e without check.
    sfen, *cycle = for_colour(colour, ROOK_CHECKS, "4e5e", "5a6a", "5e4e", "6a5a")
    game = Game(sfen)
    checks = []
    for usi in cycle:
        game.push(usi)
        checks.append(game.is_in_check())
    assert checks == [True, False, False, False]
    play(game, cycle)
    play(game, cycle[:3])
    assert_running(game)
    game.push(cycle[3])
    assert game.ply == 12
    assert_over(game, Result.DRAW, Termination.SENNICHITE)


# --- checkmate and no legal move ------------------------------------------------------------

HEAD_GOLD_MATE = ("4k4/9/4P4/9/9/9/9/9/4K4 b G 1", "G*5b")


@COLOURS
def test_checkmate_wins(colour: Color) -> None:
    sfen, mate = for_colour(colour, *HEAD_GOLD_MATE)
    game = Game(sfen)
    assert_running(game)
    assert not game.is_in_check()
    assert mate in game.legal_usi()
    game.push(mate)
    assert game.is_in_check()
    assert_over(game, Result.win_for(colour), Termination.CHECKMATE)
    with pytest.raises(IllegalMoveError):
        game.push(game.moves[-1])


@COLOURS
def test_mated_position_given_as_sfen_is_over_at_once(colour: Color) -> None:
    (sfen,) = for_colour(colour, "4k4/4G4/4P4/9/9/9/9/9/4K4 w - 1")
    game = Game(sfen)
    assert game.is_in_check()
    assert game.ply == 0
    assert_over(game, Result.win_for(colour), Termination.CHECKMATE)


@COLOURS
def test_check_with_an_escape_is_not_mate(colour: Color) -> None:
    # Without the pawn on 5c the king takes the gold.
    sfen, check, capture = for_colour(colour, "4k4/9/9/9/9/9/9/9/4K4 b G 1", "G*5b", "5a5b")
    game = Game(sfen)
    game.push(check)
    assert game.is_in_check()
    assert_running(game)
    assert game.legal_usi() == [capture]


# White's king on 1a is not attacked, but 2a and 1b/2b are covered by Black's rooks.
STALEMATE = "8k/R8/9/9/9/9/9/9/K6R1 w - 1"


@COLOURS
def test_no_legal_move_without_check_loses(colour: Color) -> None:
    (sfen,) = for_colour(colour, STALEMATE)
    game = Game(sfen)
    assert not game.is_in_check()
    assert game.turn is colour.opponent
    assert_over(game, Result.win_for(colour), Termination.NO_LEGAL_MOVES)


@COLOURS
def test_move_that_leaves_the_opponent_without_moves_wins(colour: Color) -> None:
    sfen, move = for_colour(colour, "8k/R8/9/9/9/9/9/9/K5R2 b - 1", "3i2i")
    game = Game(sfen)
    game.push(move)
    assert game.ply == 1
    assert not game.is_in_check()
    assert_over(game, Result.win_for(colour), Termination.NO_LEGAL_MOVES)


def test_king_with_a_move_left_is_not_stalemated() -> None:
    game = Game("8k/R8/9/9/9/9/9/9/K5R2 w - 1")  # rook on 3i: 2a is free
    assert game.legal_usi() == ["1a2a"]
    assert_running(game)


# --- pawn-drop mate -------------------------------------------------------------------------

# White's king on 1a: 2a is covered by the silver on 3b, 2b and 1b by the gold on 2c.
PAWN_DROP_MATE = ("8k/6S2/7G1/9/9/9/9/9/K8 b P 1", "P*1b")


@COLOURS
def test_pawn_drop_mate_is_illegal(colour: Color) -> None:
    sfen, drop, other_drop = for_colour(colour, *PAWN_DROP_MATE, "P*1c")
    game = Game(sfen)
    assert drop not in game.legal_usi()
    assert other_drop in game.legal_usi()  # pawn drops as such are allowed here
    with pytest.raises(IllegalMoveError, match=re.escape(drop)):
        game.push(drop)
    assert game.sfen() == Game(sfen).sfen()
    assert game.ply == 0


@COLOURS
def test_lance_drop_mate_is_legal(colour: Color) -> None:
    sfen, drop = for_colour(colour, "8k/6S2/7G1/9/9/9/9/9/K8 b L 1", "L*1b")
    game = Game(sfen)
    game.push(drop)
    assert_over(game, Result.win_for(colour), Termination.CHECKMATE)


@COLOURS
def test_pawn_drop_check_that_is_not_mate_is_legal(colour: Color) -> None:
    # Without the silver the king escapes to 2a.
    sfen, drop, escape = for_colour(colour, "8k/9/7G1/9/9/9/9/9/K8 b P 1", "P*1b", "1a2a")
    game = Game(sfen)
    assert drop in game.legal_usi()
    game.push(drop)
    assert game.is_in_check()
    assert game.legal_usi() == [escape]
    assert_running(game)


@COLOURS
def test_mate_by_pushing_a_pawn_is_legal(colour: Color) -> None:
    sfen, push = for_colour(colour, "8k/6S2/7GP/9/9/9/9/9/K8 b - 1", "1c1b")
    game = Game(sfen)
    assert push in game.legal_usi()
    game.push(push)
    assert game.is_in_check()
    assert_over(game, Result.win_for(colour), Termination.CHECKMATE)


# --- nifu, dead drops, forced promotion ---------------------------------------------------------


@COLOURS
def test_nifu(colour: Color) -> None:
    sfen, drop_on_pawn_file, drop_elsewhere = for_colour(
        colour, "4k4/9/9/9/9/9/4P4/9/4K4 b P 1", "P*5e", "P*4e"
    )
    game = Game(sfen)
    assert drop_on_pawn_file not in game.legal_usi()
    assert drop_elsewhere in game.legal_usi()
    pawn_file = drop_on_pawn_file[2]
    assert not any(m[2] == pawn_file for m in drops(game, "P"))
    with pytest.raises(IllegalMoveError):
        game.push(drop_on_pawn_file)
    # the opponent's pawn and the own tokin on the file do not count
    for board in ("4k4/9/9/9/9/9/4p4/9/4K4 b P 1", "4k4/9/4+P4/9/9/9/9/9/4K4 b P 1"):
        sfen, drop = for_colour(colour, board, "P*5e")
        assert drop in Game(sfen).legal_usi(), board


@COLOURS
def test_dead_drops(colour: Color) -> None:
    # Nothing on the board but the kings on 5a and 5i (no pawn drop can mate: the king takes it).
    (sfen,) = for_colour(colour, "4k4/9/9/9/9/9/9/9/4K4 b PLNG 1")
    game = Game(sfen)
    ranks = "abcdefghi" if colour is Color.BLACK else "ihgfedcba"  # from the far rank
    empty = {f"{f}{r}" for f in range(1, 10) for r in ranks} - {"5a", "5i"}

    def allowed(first_rank: int) -> set[str]:
        return {sq for sq in empty if ranks.index(sq[1]) >= first_rank}

    for piece, first_rank in (("P", 1), ("L", 1), ("N", 2), ("G", 0)):
        assert drops(game, piece) == {f"{piece}*{sq}" for sq in allowed(first_rank)}, piece
    for dead in (f"P*1{ranks[0]}", f"L*1{ranks[0]}", f"N*1{ranks[0]}", f"N*1{ranks[1]}"):
        with pytest.raises(IllegalMoveError):
            game.push(dead)
    assert game.ply == 0


@COLOURS
def test_forced_and_optional_promotion(colour: Color) -> None:
    # Pawn 7b, knights 5d and 8e, lance 3d, pawn 2d; White's king on 1a.
    sfen, *expected = for_colour(
        colour,
        "8k/2P6/9/4N1LP1/1N7/9/9/9/4K4 b - 1",
        "7b7a+",  # pawn to the last rank: promotion forced
        "5d4b+",
        "5d6b+",  # knight to the second-to-last rank: forced
        "3d3a+",
        "3d3b",
        "3d3b+",
        "3d3c",
        "3d3c+",  # lance: forced on the last rank only
        "2d2c",
        "2d2c+",  # pawn into the zone, not the last ranks: optional
        "8e7c",
        "8e7c+",
        "8e9c",
        "8e9c+",  # knight to the third rank: optional
    )
    game = Game(sfen)
    # the own king's square and the unpromoted forms of the forced promotions
    (_, king, *unpromoted) = for_colour(colour, "", "5i", "7b7a", "5d4b", "5d6b", "3d3a")
    pieces = {m for m in game.legal_usi() if not m.startswith(king)}
    assert pieces == set(expected)
    for usi in unpromoted:
        with pytest.raises(IllegalMoveError, match=re.escape(usi)):
            game.push(usi)
    assert game.ply == 0


@COLOURS
def test_move_outside_the_zone_cannot_promote(colour: Color) -> None:
    sfen, move = for_colour(colour, "4k4/9/9/9/9/2P6/9/9/4K4 b - 1", "7f7e")
    game = Game(sfen)
    assert moves_from(game, move[:2]) == {move}
    with pytest.raises(IllegalMoveError):
        game.push(move + "+")


def test_pinned_piece_and_king_moves_into_check_are_illegal() -> None:
    game = Game("k8/9/9/9/4r4/9/9/4G4/4K4 b - 1")  # the rook on 5e pins the gold on 5h
    assert moves_from(game, "5h") == {"5h5g"}
    for usi in ("5h4h", "5h6h", "5h4g", "5h6g"):
        with pytest.raises(IllegalMoveError):
            game.push(usi)
    game = Game("k8/9/9/9/3r5/9/9/9/4K4 b - 1")  # the rook on 6e covers file 6
    assert moves_from(game, "5i") == {"5i4h", "5i4i", "5i5h"}


# --- entering-king declaration (CSA 27 points) -----------------------------------------------

# Black: king on 4b; golds 9a-6a, silvers 5a-2a, rooks 9b 8b, bishops 7b 6b: 12 pieces, 28 points.
DECL_BLACK_28 = "GGGGSSSS1/RRBB1K3/9/9/9/9/9/9/4k4 b - 1"
# White: king on 6h; golds 1i-4i, silvers 5i-7i, rooks 1h 2h, bishops 3h 4h: 11 pieces, 27 points.
DECL_WHITE_27 = "4K4/9/9/9/9/9/9/3k1bbrr/2sssgggg w - 1"


@pytest.mark.parametrize(
    ("sfen", "expected"),
    [
        pytest.param(DECL_BLACK_28, (12, 28), id="black-12-pieces-28-points"),
        pytest.param("GGGGSSS2/RRBB1K3/9/9/9/9/9/9/4k4 b P 1", (11, 28), id="black-27-on-board-plus-pawn"),
        pytest.param("GGGGSS3/RRBB1K3/9/9/9/9/9/9/4k4 b 2P 1", (10, 28), id="black-10-pieces"),
        pytest.param("GGGGSSSS1/+R+R+B+B1K3/9/9/9/9/9/9/4k4 b - 1", (12, 28), id="black-promoted-big-pieces"),
        pytest.param("GGGGSSSS1/R1B2K3/9/9/9/9/9/9/4k4 b BR 1", (10, 28), id="black-big-pieces-in-hand"),
        pytest.param("GGGGSSSS1/RRBB5/5K3/9/9/9/9/9/4k4 b - 1", (12, 28), id="black-king-on-third-rank"),
        pytest.param("GGGGSSS2/RRBB1K3/8S/9/9/9/9/9/4k4 b - 1", (12, 28), id="black-piece-on-third-rank"),
        pytest.param(DECL_WHITE_27, (11, 27), id="white-11-pieces-27-points"),
        pytest.param("4K4/9/9/9/9/9/9/3k1bbrr/3ssgggg w p 1", (10, 27), id="white-26-on-board-plus-pawn"),
        pytest.param("4K4/9/9/9/9/9/3k5/4bbrr1/2sssgggg w - 1", (11, 27), id="white-king-on-third-rank"),
    ],
)
def test_declaration_wins(sfen: str, expected: tuple[int, int]) -> None:
    game = Game(sfen)
    assert not game.is_in_check()
    assert declaration_points(game._board) == expected
    assert game.ply == 0
    assert_over(game, Result.win_for(game.turn), Termination.DECLARATION)


@pytest.mark.parametrize(
    "sfen",
    [
        pytest.param("GGGGSSS2/RRBB1K3/9/9/9/9/9/9/4k4 b - 1", id="black-27-points"),
        pytest.param("GGGGSSSS1/R1B2K3/9/9/9/9/9/9/4k4 b R 1", id="black-23-points-rook-in-hand"),
        pytest.param("GGGGSSS2/RRBB1K3/9/9/9/9/9/9/4k4 b p 1", id="black-27-opponent-holds-pawn"),
        pytest.param("GGGGSSS1p/RRBB1K3/9/9/9/9/9/9/4k4 b - 1", id="black-27-opponent-piece-in-camp"),
        pytest.param("GGGGS4/RRBB1K3/9/9/9/9/9/9/4k4 b 3P 1", id="black-9-pieces-28-points"),
        pytest.param("GGGGSSS2/RRBB1K3/9/8S/9/9/9/9/4k4 b - 1", id="black-11th-piece-on-fourth-rank"),
        pytest.param("GGGGSSSS1/RRBB5/9/5K3/9/9/9/9/4k4 b - 1", id="black-king-outside-camp"),
        pytest.param("GGGGSSSS1/RRBB1K3/5+p3/9/9/9/9/9/4k4 b - 1", id="black-king-in-check"),
        pytest.param(DECL_BLACK_28.replace(" b ", " w "), id="black-qualifies-white-to-move"),
        pytest.param("4K4/9/9/9/9/9/9/3k1bbrr/3ssgggg w - 1", id="white-26-points"),
        pytest.param("4K4/9/9/9/9/9/9/3k1bbrr/3ssgggg w P 1", id="white-26-opponent-holds-pawn"),
        pytest.param("4K4/9/9/9/9/9/9/3kbbrr1/4sgggg w 2p 1", id="white-9-pieces-27-points"),
        pytest.param("4K4/9/9/9/9/3k5/9/4bbrr1/2sssgggg w - 1", id="white-king-outside-camp"),
        pytest.param(DECL_WHITE_27.replace(" w ", " b "), id="white-qualifies-black-to-move"),
    ],
)
def test_no_declaration(sfen: str) -> None:
    game = Game(sfen)
    assert declaration_points(game._board) is None
    assert_running(game)


def test_no_declaration_positions_are_what_they_claim() -> None:
    assert Game("GGGGSSSS1/RRBB1K3/5+p3/9/9/9/9/9/4k4 b - 1").is_in_check()
    # Black at 27 points does not declare; White at 27 points with the same material does.
    black_27 = flip_sfen("GGGGSSS2/RRBB1K3/9/9/9/9/9/9/4k4 b - 1")
    assert declaration_points(Game(black_27)._board) == (11, 27)
    assert Game(black_27).termination is Termination.DECLARATION


@pytest.mark.parametrize("sfen", [DECL_BLACK_28, DECL_WHITE_27])
def test_declaration_disabled(sfen: str) -> None:
    game = Game(sfen, declaration=False)
    assert declaration_points(game._board) is not None
    assert_running(game)
    game.push(game.legal_usi()[0])
    game.push(game.legal_usi()[0])
    assert game.ply == 2
    assert not game.is_over


@pytest.mark.parametrize(
    ("sfen", "opponent_move"),
    [
        (DECL_BLACK_28.replace(" b ", " w "), "5i5h"),
        (DECL_WHITE_27.replace(" w ", " b "), "5a5b"),
    ],
)
def test_declaration_after_the_opponents_move(sfen: str, opponent_move: str) -> None:
    game = Game(sfen)
    assert_running(game)
    declarer = game.turn.opponent
    game.push(opponent_move)
    assert game.turn is declarer
    assert game.ply == 1
    assert_over(game, Result.win_for(declarer), Termination.DECLARATION)


def test_declaration_after_the_king_enters_the_camp() -> None:
    game = Game("GGGGSSSS1/RRBB5/9/5K3/9/9/9/9/4k4 b - 1")
    assert_running(game)
    game.push("4d4c")
    assert_running(game)  # White to move: White does not qualify
    game.push("5i5h")
    assert_over(game, Result.BLACK_WIN, Termination.DECLARATION)


# --- max plies ------------------------------------------------------------------------------------


def test_max_plies_is_a_draw() -> None:
    game = Game(max_plies=4)
    play(game, ["7g7f", "3c3d", "2g2f"])
    assert_running(game)
    game.push("8c8d")
    assert game.ply == 4
    assert_over(game, Result.DRAW, Termination.MAX_PLIES)
    with pytest.raises(IllegalMoveError, match="2f2e"):
        game.push("2f2e")


def test_max_plies_counts_moves_of_this_game_not_the_move_number() -> None:
    game = Game("4k4/9/9/9/9/9/9/9/4K4 b - 200", max_plies=2)
    game.push("5i4i")
    assert_running(game)
    game.push("5a4a")
    assert_over(game, Result.DRAW, Termination.MAX_PLIES)
    assert Game(max_plies=1).max_plies == 1
    assert Game().max_plies == 320


@pytest.mark.parametrize("max_plies", [0, -1, 2.5, "10"])
def test_invalid_max_plies(max_plies: object) -> None:
    with pytest.raises(ValueError, match="max_plies"):
        Game(max_plies=max_plies)  # type: ignore[arg-type]


def test_game_ending_on_the_last_ply_keeps_its_real_result() -> None:
    game = Game(HEAD_GOLD_MATE[0], max_plies=1)
    game.push(HEAD_GOLD_MATE[1])
    assert_over(game, Result.BLACK_WIN, Termination.CHECKMATE)
    game = Game(BARE_KINGS, max_plies=12)
    play(game, KING_SHUFFLE * 3)
    assert_over(game, Result.DRAW, Termination.SENNICHITE)
    game = Game(DECL_BLACK_28.replace(" b ", " w "), max_plies=1)
    game.push("5i5h")
    assert_over(game, Result.BLACK_WIN, Termination.DECLARATION)


# --- illegal and malformed moves, resignation ----------------------------------------------------


@pytest.mark.parametrize(
    "usi",
    [
        "7g7e",
        "3c3d",
        "7g7f+",
        "P*5e",
        "8h2b",
        "5i6i",
        "5i5g",
        "7G7F",
        " 7g7f",
        "7g7f ",
        "7g7f++",
        "K*5e",
        "P*5e+",
        "xyz",
        "",
        "7g",
        "0g0f",
        "7j7i",
        "5i5i",
        "resign",
        "7g7f 3c3d",
    ],
)
def test_illegal_or_malformed_move_raises_and_leaves_the_game_unchanged(usi: str) -> None:
    game = Game()
    before = (game.sfen(), game.ply, game.moves, game.legal_usi())
    with pytest.raises(IllegalMoveError) as info:
        game.push(usi)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert repr(usi) in message
    assert STARTPOS in message
    assert (game.sfen(), game.ply, game.moves, game.legal_usi()) == before
    assert_running(game)
    game.push("7g7f")  # the game goes on
    assert game.ply == 1


def test_illegal_move_later_in_a_game_names_the_current_position() -> None:
    game = Game.from_usi_position("startpos moves 7g7f 3c3d")
    sfen = game.sfen()
    assert sfen != STARTPOS
    with pytest.raises(IllegalMoveError) as info:
        game.push("3c3d")
    assert "3c3d" in str(info.value)
    assert sfen in str(info.value)
    assert game.sfen() == sfen
    assert game.ply == 2
    assert game.moves == ["7g7f", "3c3d"]


@pytest.mark.parametrize("bad", [None, 76, b"7g7f"])
def test_non_string_move_raises(bad: object) -> None:
    game = Game()
    with pytest.raises(IllegalMoveError):
        game.push(bad)  # type: ignore[arg-type]
    assert game.ply == 0


@pytest.mark.parametrize("how", ["checkmate", "resign"])
def test_push_after_the_end_raises(how: str) -> None:
    if how == "checkmate":
        game = play(Game(HEAD_GOLD_MATE[0]), [HEAD_GOLD_MATE[1]])
        move = "5a4a"  # would be the king's move, were the game not over
    else:
        game = Game()
        game.resign()
        move = "7g7f"
    assert game.is_over
    sfen, ply = game.sfen(), game.ply
    with pytest.raises(IllegalMoveError, match=rf"'{move}'.*over"):
        game.push(move)
    assert (game.sfen(), game.ply, game.is_over) == (sfen, ply, True)
    for end in (game.resign, lambda: game.forfeit(Termination.ILLEGAL_MOVE)):
        with pytest.raises(IllegalMoveError):
            end()
    assert game.termination is (Termination.CHECKMATE if how == "checkmate" else Termination.RESIGN)


@pytest.mark.parametrize("moves", [[], ["7g7f"]])
def test_resign(moves: list[str]) -> None:
    game = play(Game(), moves)
    loser = game.turn
    game.resign()
    assert_over(game, Result.win_for(loser.opponent), Termination.RESIGN)
    assert game.ply == len(moves)


@pytest.mark.parametrize("moves", [[], ["7g7f"]])
def test_forfeit_illegal_move(moves: list[str]) -> None:
    game = play(Game(), moves)
    loser = game.turn
    game.forfeit(Termination.ILLEGAL_MOVE)
    assert_over(game, Result.win_for(loser.opponent), Termination.ILLEGAL_MOVE)


def test_copy_is_independent() -> None:
    game = Game.from_usi_position("startpos moves 7g7f")
    twin = game.copy()
    twin.push("3c3d")
    twin.resign()
    assert game.moves == ["7g7f"]
    assert game.sfen() == Game.from_usi_position("startpos moves 7g7f").sfen()
    assert_running(game)
    assert "3c3d" in game.legal_usi()


# --- SFEN parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sfen",
    [
        "",
        "garbage",
        "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1 b - 1",  # 8 ranks
        "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R11/LNSGKGSNL b - 1",  # 10 squares
        "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL x - 1",  # side
        "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - x",  # move number
        "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNX b - 1",  # piece letter
        "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b Q 1",  # hand piece
        "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b 19P 1",  # too many pawns
        "4k4/9/9/9/9/9/9/9/4K4 b K 1",  # king in hand
        "4k4/9/9/9/9/9/9/9/4K4 b",  # no hand
        "9/9/9/9/9/9/9/9/9 b - 1",  # no kings
        "4k4/9/9/9/9/9/9/9/9 b - 1",  # no Black king
        "4k4/9/9/9/9/9/9/9/3KK4 b - 1",  # two Black kings
        "4kP3/9/9/9/9/9/9/9/4K4 b - 1",  # Black pawn on the last rank
        "4k4/1N7/9/9/9/9/9/9/4K4 b - 1",  # Black knight on the second rank
        "4k4/9/9/9/9/9/9/9/p3K4 b - 1",  # White pawn on the last rank
        "4k4/9/9/9/P8/9/9/P8/4K4 b - 1",  # nifu on the board
    ],
)
def test_malformed_sfen_raises_value_error_naming_it(sfen: str) -> None:
    with pytest.raises(ValueError) as info:
        Game(sfen)
    assert sfen in str(info.value)


@pytest.mark.parametrize(
    "sfen",
    [
        "4k4/4R4/9/9/9/9/9/9/4K4 b - 1",  # White's king attacked by the rook, Black to move
        "4k4/4K4/9/9/9/9/9/9/9 b - 1",  # kings side by side
    ],
)
def test_sfen_with_the_side_not_to_move_in_check_is_rejected(sfen: str) -> None:
    with pytest.raises(ValueError) as info:
        Game(sfen)
    assert sfen in str(info.value)


@pytest.mark.parametrize("sfen", [BARE_KINGS + " moves 5i4i", BARE_KINGS + " extra"])
def test_sfen_with_trailing_fields_is_rejected(sfen: str) -> None:
    with pytest.raises(ValueError) as info:
        Game(sfen)
    assert sfen in str(info.value)


def test_non_string_sfen_raises_value_error() -> None:
    with pytest.raises(ValueError):
        Game(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("sfen", [STARTPOS, "startpos", "sfen " + STARTPOS, STARTPOS.rsplit(" ", 1)[0]])
def test_accepted_sfen_spellings(sfen: str) -> None:
    game = Game(sfen)
    assert game.sfen() == STARTPOS
    assert game.turn is Color.BLACK
    assert game.turn == "b"
    assert len(game.legal_usi()) == 30


def test_white_to_move_sfen() -> None:
    game = Game("lnsgkgsnl/1r5b1/ppppppppp/9/9/2P6/PP1PPPPPP/1B5R1/LNSGKGSNL w - 2")
    assert game.turn is Color.WHITE
    assert game.turn.opponent is Color.BLACK
    assert "3c3d" in game.legal_usi()
    assert "7g7f" not in game.legal_usi()


# --- USI positions and records ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "position",
    [
        "startpos",
        "startpos moves 7g7f 3c3d 8h2b+ 3a2b B*4e",
        "sfen 4k4/9/4P4/9/9/9/9/9/4K4 b G 1",
        "sfen 4k4/9/4P4/9/9/9/9/9/4K4 b G 1 moves G*5b",
        f"sfen {DECL_BLACK_28.replace(' b ', ' w ')} moves 5i5h",
        f"sfen {BARE_KINGS} moves {' '.join(KING_SHUFFLE * 3)}",
    ],
)
def test_usi_position_round_trip(position: str) -> None:
    game = Game.from_usi_position(position)
    assert game.to_usi_position() == position
    again = Game.from_usi_position("position " + game.to_usi_position())
    assert (again.sfen(), again.moves, again.result, again.termination) == (
        game.sfen(),
        game.moves,
        game.result,
        game.termination,
    )
    # the same game played move by move
    tokens = position.split()
    start = STARTPOS if tokens[0] == "startpos" else " ".join(tokens[1:5])
    moves = tokens[tokens.index("moves") + 1 :] if "moves" in tokens else []
    played = play(Game(start), moves)
    assert (played.sfen(), played.moves, played.termination) == (game.sfen(), game.moves, game.termination)


def test_from_usi_position_passes_options_and_ends_games() -> None:
    game = Game.from_usi_position("startpos moves 7g7f 3c3d", max_plies=2)
    assert_over(game, Result.DRAW, Termination.MAX_PLIES)
    game = Game.from_usi_position(f"sfen {DECL_BLACK_28}", declaration=False)
    assert_running(game)
    game = Game.from_usi_position("sfen 4k4/9/4P4/9/9/9/9/9/4K4 b G 1 moves G*5b")
    assert_over(game, Result.BLACK_WIN, Termination.CHECKMATE)


@pytest.mark.parametrize(
    ("position", "match"),
    [
        ("startpos moves 7g7f 7g7f", r"move 2 .*'7g7f'"),
        ("startpos moves 7g7f 3c3d 2g2x", r"move 3 .*'2g2x'"),
        ("sfen 4k4/9/4P4/9/9/9/9/9/4K4 b G 1 moves G*5b 5a4a", r"move 2 .*over"),
    ],
)
def test_from_usi_position_with_an_illegal_move(position: str, match: str) -> None:
    with pytest.raises(IllegalMoveError, match=match):
        Game.from_usi_position(position)


@pytest.mark.parametrize("position", ["foo", "startpos 7g7f", "sfen 4k4 b", ""])
def test_malformed_usi_position(position: str) -> None:
    with pytest.raises(ValueError):
        Game.from_usi_position(position)


def _checkmate() -> Game:
    return play(Game(HEAD_GOLD_MATE[0]), [HEAD_GOLD_MATE[1]])


def _no_legal_moves() -> Game:
    return play(Game("8k/R8/9/9/9/9/9/9/K5R2 b - 1"), ["3i2i"])


def _sennichite() -> Game:
    return play(Game(BARE_KINGS), KING_SHUFFLE * 3)


def _perpetual(colour: Color, checker_moves_last: bool) -> Game:
    sfen, *cycle = for_colour(colour, ROOK_CHECKS, *ROOK_CHECK_CYCLE)
    if checker_moves_last:  # the cycle starts with the checked side, ends with a check
        game = play(Game(sfen), cycle[:1])
        cycle = [*cycle[1:], cycle[0]]
        return play(Game(game.sfen()), cycle * 3)
    return play(Game(sfen), cycle * 3)


def _declaration(sfen: str, move: str) -> Game:
    return play(Game(sfen), [move])


def _max_plies() -> Game:
    return play(Game(max_plies=4), ["7g7f", "3c3d", "2g2f", "8c8d"])


def _resign() -> Game:
    game = play(Game(), ["7g7f", "3c3d", "8h2b+", "3a2b"])
    game.resign()
    return game


def _forfeit() -> Game:
    game = play(Game(), ["7g7f"])
    game.forfeit(Termination.ILLEGAL_MOVE)
    return game


@pytest.mark.parametrize(
    ("make", "termination", "csa_endings", "kif_ending"),
    [
        pytest.param(
            _checkmate, Termination.CHECKMATE, {"%TORYO", "%TSUMI"}, "まで1手で先手の勝ち", id="checkmate"
        ),
        pytest.param(
            _no_legal_moves,
            Termination.NO_LEGAL_MOVES,
            {"%TORYO"},
            "まで1手で先手の勝ち",
            id="no-legal-moves",
        ),
        pytest.param(
            _sennichite, Termination.SENNICHITE, {"%SENNICHITE"}, "まで12手で千日手", id="sennichite"
        ),
        # the side to move loses: %ILLEGAL_MOVE; or the checker named: %+ (Black) / %- (White)
        pytest.param(
            lambda: _perpetual(Color.BLACK, False),
            Termination.PERPETUAL_CHECK,
            {"%ILLEGAL_MOVE", "%+ILLEGAL_ACTION"},
            "まで12手で後手の反則勝ち",
            id="perpetual-black",
        ),
        pytest.param(
            lambda: _perpetual(Color.BLACK, True),
            Termination.PERPETUAL_CHECK,
            {"%+ILLEGAL_ACTION"},
            "まで12手で後手の反則勝ち",
            id="perpetual-black-white-to-move",
        ),
        pytest.param(
            lambda: _perpetual(Color.WHITE, False),
            Termination.PERPETUAL_CHECK,
            {"%ILLEGAL_MOVE", "%-ILLEGAL_ACTION"},
            "まで12手で先手の反則勝ち",
            id="perpetual-white",
        ),
        pytest.param(
            lambda: _declaration(DECL_BLACK_28.replace(" b ", " w "), "5i5h"),
            Termination.DECLARATION,
            {"%KACHI"},
            "まで1手で先手の入玉勝ち",
            id="declaration-black",
        ),
        pytest.param(
            lambda: _declaration(DECL_WHITE_27.replace(" w ", " b "), "5a5b"),
            Termination.DECLARATION,
            {"%KACHI"},
            "まで1手で後手の入玉勝ち",
            id="declaration-white",
        ),
        pytest.param(_max_plies, Termination.MAX_PLIES, {"%MAX_MOVES"}, "まで4手で最大手数", id="max-plies"),
        pytest.param(_resign, Termination.RESIGN, {"%TORYO"}, "まで4手で後手の勝ち", id="resign"),
        pytest.param(
            _forfeit,
            Termination.ILLEGAL_MOVE,
            {"%ILLEGAL_MOVE", "%-ILLEGAL_ACTION"},
            "まで1手で先手の反則勝ち",
            id="illegal-move",
        ),
    ],
)
def test_records_of_finished_games(
    make, termination: Termination, csa_endings: set[str], kif_ending: str
) -> None:
    game = make()
    assert game.termination is termination
    csa, kif = game.to_csa(), game.to_kif()
    assert csa.strip().splitlines()[-1] in csa_endings
    assert kif.strip().splitlines()[-1] == kif_ending
    # both records hold the start position and every move
    for record in (Record.from_csa_str(csa), Record.from_kif_str(kif)):
        # (CSA and KIF hold no move number: compare board, side to move and hands)
        assert record.init_position_sfen.split()[:3] == game.start_sfen.split()[:3]
        assert [entry.move.to_usi() for entry in record.moves] == game.moves
    assert [entry.move.to_usi() for entry in game.record().moves] == game.moves


def test_record_of_a_running_game_has_no_result() -> None:
    game = Game.from_usi_position("startpos moves 7g7f 3c3d")
    csa = game.to_csa()
    assert not any(line.startswith("%") for line in csa.splitlines())
    assert "+7776FU" in csa
    assert "-3334FU" in csa
    assert "まで" not in game.to_kif()
    assert "７六歩" in game.to_kif()


# --- the environment's legal moves, and the adjudication screen ------------------------------------
# The environment does not ask rsshogi for its lists of legal moves: the C extension finds the moves
# in the positions it keeps (``_native.legal_move_values`` reads them from a board for these tests),
# and ``Game.play`` screens each move with cheap rsshogi calls before deciding. Both are checked
# here against rsshogi's own lists and the full rules, position by position.

#: Starts for random play: the opening, middle games and endgames with every kind of piece in hand
#: (drops, pawn-drop mates, double checks, pins), bare kings (repetitions, and stalemates with the
#: rooks), entering kings (declarations) and the perft positions.
RANDOM_STARTS = [
    STARTPOS,
    "ln5nl/4k4/p1ppppp1p/9/9/9/P1PPPPP1P/4K4/LN5NL b RBGSrbgs2p 1",
    "4k4/9/9/9/9/9/9/9/4K4 b RBGSNLPrbgsnlp 1",
    "lnsgkgsnl/9/9/9/9/9/9/9/LNSGKGSNL b RBPPPPPPPPPrbppppppppp 1",
    "8k/9/9/9/9/9/9/9/K8 b G2S3Pgs3p 1",
    "4k4/9/9/9/9/9/9/9/4K4 b 9P9p 1",
    "8k/9/9/9/9/9/9/9/K8 b Rr 1",
    BARE_KINGS,
    "GGGGSSSS1/RRBB5/9/5K3/9/9/9/9/4k4 b - 1",
    flip_sfen("GGGGSSSS1/RRBB5/9/5K3/9/9/9/9/4k4 b - 1"),
    "l6nl/5+P1gk/2np1S3/p1p4Pp/3P2Sp1/1PPb2P1P/P5GS1/R8/LN4bKL w GR5pnsg 1",
    "ln1g5/1r2S1k2/p2pppn2/2ps2p2/1p7/2P6/PPSPPPPLP/2G2K1pr/LN4G1b w BGSLPnp 62",
]

#: Positions of the tests above, each with the rule it is about.
LISTED = [PAWN_DROP_MATE[0], "8k/6S2/7G1/9/9/9/9/9/K8 b L 1", "8k/9/7G1/9/9/9/9/9/K8 b P 1",
          "8k/6S2/7GP/9/9/9/9/9/K8 b - 1", "4k4/9/9/9/9/9/4P4/9/4K4 b P 1", "4k4/9/4+P4/9/9/9/9/9/4K4 b P 1",
          "4k4/9/9/9/9/9/9/9/4K4 b PLNG 1", "k8/9/9/9/4r4/9/9/4G4/4K4 b - 1", "k8/9/9/9/3r5/9/9/9/4K4 b - 1",
          HEAD_GOLD_MATE[0], STALEMATE, ROOK_CHECKS, DECL_BLACK_28, DECL_WHITE_27]


def rsshogi_values(board) -> list[int]:
    return sorted(int(move) for move in board.legal_moves())


def random_boards(seed: int, games: int = 24, plies: int = 200):
    """Boards of random games from ``RANDOM_STARTS`` (every position; each game until it has no legal move)."""
    rng = random.Random(seed)
    for g in range(games):
        board = Game(RANDOM_STARTS[g % len(RANDOM_STARTS)], declaration=False).board.copy()
        for _ in range(plies):
            yield board.copy()
            moves = board.legal_moves()
            if not moves:
                break
            board.push_move(rng.choice(moves))


@pytest.mark.parametrize("seed", range(3))
def test_environment_legal_moves_are_rsshogis_in_random_play(seed: int) -> None:
    boards = list(random_boards(seed))
    assert len(boards) > 2000
    assert _native.legal_move_values(boards) == [rsshogi_values(board) for board in boards]


def test_environment_legal_moves_are_rsshogis_in_the_listed_and_perft_positions() -> None:
    starts = [sfen for listed in LISTED for sfen in (listed, flip_sfen(listed))] + RANDOM_STARTS[-2:]
    boards = []
    for sfen in starts:  # each position and every position one and two moves after it
        board = Game(sfen, declaration=False).board
        boards.append(board)
        for move in board.legal_moves():
            child = board.copy()
            child.push_move(move)
            boards.append(child)
            for reply in child.legal_moves():
                grandchild = child.copy()
                grandchild.push_move(reply)
                boards.append(grandchild)
    assert len(boards) > 30_000
    assert _native.legal_move_values(boards) == [rsshogi_values(board) for board in boards]


def reference_ending(board, ply: int, max_plies: int, declaration: bool) -> Termination:
    """The ending of the position ``board`` reached after ``ply`` moves, by the full rules in their
    order (as ``Game`` decided before it screened moves): rsshogi's repetition state, its list of legal
    moves, the declaration points, the ply limit."""
    state = str(board.repetition_state())
    if state in ("rep_draw", "rep_win", "rep_lose"):
        return Termination.SENNICHITE if state == "rep_draw" else Termination.PERPETUAL_CHECK
    if not board.legal_moves():
        return Termination.CHECKMATE if board.is_in_check() else Termination.NO_LEGAL_MOVES
    if declaration and declaration_points(board) is not None:
        return Termination.DECLARATION
    return Termination.MAX_PLIES if ply >= max_plies else Termination.NONE


def board_repetitions(board) -> int:
    count = 0
    while count < 3 and board.is_repetition(count + 1):
        count += 1
    return count


def test_play_decides_every_position_as_the_full_rules() -> None:
    """Random games from starts where repetitions, declarations, stalemates and the ply limit happen,
    the moves often checks or steps back (for repetitions and perpetual checks): after every move,
    ``play``'s answer, the result and ``repetitions`` are those of the full rules."""
    rng = random.Random(0)
    starts = [*RANDOM_STARTS, "4k4/9/9/9/9/9/9/9/4K4 b G 1", "8k/9/9/9/9/9/9/9/K8 b R 1",
              DECL_BLACK_28.replace(" b ", " w "), DECL_WHITE_27.replace(" w ", " b ")]
    seen = set()
    for g in range(256):
        game = Game(starts[g % len(starts)], max_plies=150, declaration=g % 5 != 4)
        while not game.is_over:
            over = game.play(biased_move(game, rng))
            expected = reference_ending(game.board, game.ply, game.max_plies, game.declaration)
            assert over == (expected is not Termination.NONE) == game.is_over, game.sfen()
            assert game.repetitions == board_repetitions(game.board)
        assert game.termination is expected
        seen.add(expected)
    assert seen == {Termination.CHECKMATE, Termination.NO_LEGAL_MOVES, Termination.SENNICHITE,
                    Termination.PERPETUAL_CHECK, Termination.DECLARATION, Termination.MAX_PLIES}


def biased_move(game: Game, rng: random.Random):
    """A random legal move of ``game``, often a check or the side to move's last move backwards."""
    moves = game.legal_moves
    if rng.random() < 0.5:
        checks = [m for m in moves if gives_check(game, m)]
        if checks:
            return rng.choice(checks)
    if len(game.moves) >= 2 and rng.random() < 0.8:
        last = game.moves[-2]
        back = [m for m in moves if last[1] != "*" and m.to_usi() == last[2:4] + last[0:2]]
        if back:
            return back[0]
    return rng.choice(moves)


def gives_check(game: Game, move) -> bool:
    board = game.board.copy()
    board.push_move(move)
    return board.is_in_check()


@COLOURS
def test_declaration_when_the_king_arrives_from_afar(colour: Color) -> None:
    """``play`` looks at a king far from the enemy camp again only when it could have arrived (a rank
    per move of its side): here exactly on the ply it does."""
    sfen, *moves = for_colour(colour, "GGGGSSSS1/RRBB5/9/9/9/5K3/9/9/4k4 b - 1",
                              "4f4e", "5i5h", "4e4d", "5h5i", "4d4c", "5i5h")
    game = Game(sfen)
    for usi in moves[:-1]:
        game.push(usi)
        assert_running(game)
    game.push(moves[-1])
    assert game.ply == 6
    assert_over(game, Result.win_for(colour), Termination.DECLARATION)
