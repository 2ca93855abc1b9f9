"""The mate planes (``mate_in_one_to``/``_from``, ``opp_mate_in_one_to``) against a slow reference built
here from rsshogi alone.

The reference tries every legal move of the side to move and keeps those after which the other side is
in check with no legal reply; for ``opp_mate_in_one_to`` it does the same on a board set up from the
SFEN with the other side to move (nothing while the side to move is in check). The planes under test
come from the C extension, by both of its paths: ``encode_observations`` (rsshogi boards) and the
environment's encoder (the positions it keeps). Positions: tests/data/mate_positions.json (each with a
note on what it covers and its mating moves), the colour-flipped twin of each, and random play.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rsshogi.core import Board, Move

from keisei.env.vec_env import VecEnv
from keisei.shogi import encode_observations
from keisei.shogi.features import MATE_PLANE

POSITIONS = json.loads((Path(__file__).parent / "data" / "mate_positions.json").read_text(encoding="utf-8"))
# a middle game with every kind of piece in hand: drops make mates in one frequent
HANDS = "ln5nl/4k4/p1ppppp1p/9/9/9/P1PPPPP1P/4K4/LN5NL b RBGSrbgs2p 1"


def mating_moves(board: Board) -> list[Move]:
    """The legal moves of ``board``'s side to move after which the other side is in check with no legal
    reply (``board`` is played on and restored)."""
    found = []
    for move in board.legal_moves():
        board.push_move(move)
        if board.is_in_check() and not board.legal_moves():
            found.append(move)
        board.undo_move(move)
    return found


def passed(board: Board) -> Board:
    """A board of ``board``'s position with the other side to move (no history)."""
    fields = board.to_sfen().split(" ")
    fields[1] = "w" if fields[1] == "b" else "b"
    return Board(" ".join(fields))


def threats(board: Board) -> list[Move]:
    """The opponent's mating moves were the side to move to pass; none while it is in check."""
    return [] if board.is_in_check() else mating_moves(passed(board))


def reference_planes(board: Board) -> np.ndarray:
    """The three mate planes of ``board`` (uint8, 3 x 81) in the side to move's frame (White's view
    rotated: square s is 80 - s)."""
    view = (lambda sq: 80 - sq) if board.turn.is_white() else (lambda sq: sq)
    planes = np.zeros((3, 81), dtype=np.uint8)
    for move in mating_moves(board.copy()):
        planes[0, view(move.to_sq.value)] = 1
        if not move.is_drop():
            planes[1, view(move.from_sq.value)] = 1
    for move in threats(board):
        planes[2, view(move.to_sq.value)] = 1
    return planes


def fast_planes(sfens: list[str]) -> np.ndarray:
    """The mate planes of ``sfens`` as the encoder writes them (uint8, n x 3 x 81)."""
    return encode_observations(sfens)[:, MATE_PLANE:MATE_PLANE + 3].reshape(len(sfens), 3, 81)


def random_positions(seed: int, plies: int = 300, every: int = 2) -> list[str]:
    """SFENs of one random game from the start (every ``every``-th position, up to ``plies`` plies)."""
    rng = random.Random(seed)
    board, sfens = Board(), []
    for ply in range(plies):
        moves = board.legal_moves()
        if not moves:
            break
        if ply % every == 0:
            sfens.append(board.to_sfen())
        board.push_move(rng.choice(moves))
    return sfens


@pytest.mark.parametrize("entry", POSITIONS, ids=range(len(POSITIONS)))
def test_listed_positions_have_the_listed_mates(entry: dict[str, Any]) -> None:
    """The reference finds the mating moves the data lists (so each position covers what its note says)."""
    board = Board(entry["sfen"])
    assert sorted({m.to_usi() for m in mating_moves(board.copy())}) == entry["mates"]
    assert sorted({m.to_usi() for m in threats(board)}) == entry["threats"]
    if "illegal_drop" in entry:  # a pawn drop that would mate (the position after it is mate) is not legal
        assert entry["illegal_drop"] not in {m.to_usi() for m in board.legal_moves()}
        after = Board(entry["after_drop"])
        assert after.is_in_check() and not after.legal_moves()


def test_listed_positions_and_their_twins_match_the_reference() -> None:
    """Every listed position and its colour-flipped twin (board rotated, colours swapped): the planes are
    the reference's, and the same for both."""
    sfens = [e["sfen"] for e in POSITIONS]
    twins = [Board(s).to_sfen_flipped() for s in sfens]
    planes, twin_planes = fast_planes(sfens), fast_planes(twins)
    for k, sfen in enumerate(sfens):
        assert np.array_equal(planes[k], reference_planes(Board(sfen))), POSITIONS[k]["note"]
        assert np.array_equal(twin_planes[k], reference_planes(Board(twins[k]))), POSITIONS[k]["note"]
        assert np.array_equal(planes[k], twin_planes[k]), POSITIONS[k]["note"]


@pytest.mark.parametrize("seed", range(6))
def test_random_play_matches_the_reference(seed: int) -> None:
    """Positions of random games, every other one of a game and the late middle game (plies 150-299) of
    another, about 270 per seed, a tenth of them with mates: the planes bit for bit."""
    sfens = random_positions(seed) + random_positions(100 + seed, every=1)[150:]
    planes = fast_planes(sfens)
    reference = np.stack([reference_planes(Board(s)) for s in sfens])
    mismatched = [sfens[k] for k in range(len(sfens)) if not np.array_equal(planes[k], reference[k])]
    assert not mismatched, mismatched[:3]
    assert reference[:, 0].any(axis=1).sum() >= 3 and reference[:, 2].any(axis=1).sum() >= 3


@pytest.mark.parametrize("start", [None, HANDS], ids=["startpos", "hands"])
def test_environment_planes_match_the_reference(start: str | None) -> None:
    """The environment's own path (planes from the positions it keeps and moves along), every step and
    in the final observation of every finished game, for random actions."""
    env = VecEnv(8, start_sfen=start, opening_plies=2, max_plies=160)
    rng = np.random.default_rng(0)
    out = env.reset(seed=0)
    marked = finished = 0
    for _ in range(200):
        for i, game in enumerate(env.games):
            expected = reference_planes(game.board)
            assert np.array_equal(out.obs[i, MATE_PLANE:MATE_PLANE + 3].reshape(3, 81), expected), game.sfen()
            marked += int(expected.any())
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in out.legal_mask])
        out = env.step(actions)
        ended = np.flatnonzero(out.terminated | out.truncated)
        for i, game in zip(ended, env.pop_finished()):
            final = out.final_obs[i, MATE_PLANE:MATE_PLANE + 3].reshape(3, 81)
            assert np.array_equal(final, reference_planes(game.board)), game.sfen()
            finished += 1
    assert marked >= 10 and finished >= 8
