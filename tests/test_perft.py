"""Perft: move-generation counts through the public ``Game`` API against published numbers.

Leaves are counted in bulk at depth 1 (``len(legal_moves())``); every other node is
expanded with ``copy()`` + ``push()``, so a wrong legal-move list, a ``copy`` that
shares state, or a ``push`` that plays something else changes the counts.
Repetition, declaration and the ply limit cannot end a game within these depths
(declaration is off, ``max_plies`` is large); a mated position has no legal move.
"""

from __future__ import annotations

import pytest

from keisei.shogi import Game

STARTPOS = "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1"
MATSURI = "l6nl/5+P1gk/2np1S3/p1p4Pp/3P2Sp1/1PPb2P1P/P5GS1/R8/LN4bKL w GR5pnsg 1"
BENCH_OPENING = "lnsgkgsnl/1r7/p1ppp1bpp/1p3pp2/7P1/2P6/PP1PPPP1P/1B3S1R1/LNSGKG1NL b - 9"
HABU_KATO = "ln1g5/1r2S1k2/p2pppn2/2ps2p2/1p7/2P6/PPSPPPPLP/2G2K1pr/LN4G1b w BGSLPnp 62"

# Published perft counts, by depth.
STARTPOS_PERFT = {1: 30, 2: 900, 3: 25_470, 4: 719_731, 5: 19_861_490}
MATSURI_PERFT = {1: 207, 2: 28_684, 3: 4_809_015}
BENCH_OPENING_PERFT = {3: 37_189, 4: 1_307_221}
HABU_KATO_PERFT = {2: 16_440, 3: 864_786}


def perft(game: Game, depth: int) -> int:
    moves = game.legal_usi()
    assert len(set(moves)) == len(moves), f"duplicate legal moves in {game.sfen()}"
    if depth == 1:
        return len(moves)
    nodes = 0
    for usi in moves:
        child = game.copy()
        child.push(usi)
        nodes += perft(child, depth - 1)
    return nodes


def new_game(sfen: str) -> Game:
    return Game(sfen, declaration=False, max_plies=10_000)


# Measured on the 2-core development machine: startpos d5 takes about 4 s, matsuri d3
# about 0.6 s, everything else below 0.3 s; only startpos d5 is marked slow.
CASES = [
    *(pytest.param(STARTPOS, d, n, id=f"startpos-d{d}") for d, n in STARTPOS_PERFT.items() if d < 5),
    pytest.param(STARTPOS, 5, STARTPOS_PERFT[5], id="startpos-d5", marks=pytest.mark.slow),
    *(pytest.param(MATSURI, d, n, id=f"matsuri-d{d}") for d, n in MATSURI_PERFT.items()),
    *(pytest.param(BENCH_OPENING, d, n, id=f"bench_opening-d{d}") for d, n in BENCH_OPENING_PERFT.items()),
    *(pytest.param(HABU_KATO, d, n, id=f"habu_kato-d{d}") for d, n in HABU_KATO_PERFT.items()),
]


@pytest.mark.parametrize(("sfen", "depth", "expected"), CASES)
def test_perft(sfen: str, depth: int, expected: int) -> None:
    game = new_game(sfen)
    before = (game.sfen(), game.ply, game.moves)
    assert perft(game, depth) == expected
    assert (game.sfen(), game.ply, game.moves) == before  # the copies left the root alone


@pytest.mark.parametrize(
    "sfen",
    [STARTPOS, MATSURI, BENCH_OPENING, HABU_KATO],
    ids=["startpos", "matsuri", "bench_opening", "habu_kato"],
)
def test_positions_are_running_games(sfen: str) -> None:
    game = new_game(sfen)
    board, side, hand, number = game.sfen().split()
    assert [board, side, number] == [sfen.split()[i] for i in (0, 1, 3)]
    assert sorted(hand) == sorted(sfen.split()[2])  # the same hands, maybe in another order
    assert not game.is_over
    assert game.turn == sfen.split()[1]


def test_perft_of_the_start_position_for_white() -> None:
    # The start position with White to move is the same game seen from the other side.
    sfen = STARTPOS.replace(" b ", " w ")
    game = new_game(sfen)
    assert [perft(game, d) for d in (1, 2, 3)] == [STARTPOS_PERFT[d] for d in (1, 2, 3)]
