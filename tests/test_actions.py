"""Action labels: every legal move has a distinct label that maps back to it."""

from __future__ import annotations

import numpy as np
import pytest
from rsshogi.core import Board
from rsshogi.policy import move_label
from rsshogi.types import Color as RsColor

from keisei.shogi import NUM_ACTIONS, Game, IllegalMoveError, action_to_move, legal_mask, move_to_action


def test_label_round_trip_for_every_legal_move(random_positions: list[Game]) -> None:
    colours_seen = set()
    moves_checked = 0
    for game in random_positions:
        if game.is_over:
            continue
        turn = game.turn.value
        colours_seen.add(turn)
        labels = {}
        for usi in game.legal_usi():
            label = move_to_action(usi, turn)
            assert 0 <= label < NUM_ACTIONS
            assert label not in labels, f"{usi} and {labels[label]} share label {label} in {game.sfen()}"
            labels[label] = usi
            assert action_to_move(label, game) == usi
            moves_checked += 1
        mask = legal_mask(game)
        assert mask.dtype == np.bool_ and mask.shape == (NUM_ACTIONS,)
        assert set(np.flatnonzero(mask).tolist()) == set(labels)
    assert colours_seen == {"b", "w"}
    assert moves_checked > 50_000


def test_labels_are_rsshogi_move_labels(random_positions: list[Game]) -> None:
    for game in random_positions[::7]:
        colour = RsColor.BLACK if game.turn == "b" else RsColor.WHITE
        expected = {move_label(usi, colour) for usi in game.legal_usi()}
        assert set(np.flatnonzero(legal_mask(game)).tolist()) == expected


def test_colour_flipped_move_has_the_same_label() -> None:
    game = Game.from_usi_position("startpos moves 7g7f 3c3d 8h2b+ 3a2b B*4e")
    flipped = Game(Board(game.sfen()).to_sfen_flipped())
    for usi in game.legal_usi():
        twin = _flip_usi(usi)
        assert twin in flipped.legal_usi()
        assert move_to_action(usi, game.turn.value) == move_to_action(twin, flipped.turn.value)


def _flip_usi(usi: str) -> str:
    def square(s: str) -> str:
        return f"{10 - int(s[0])}{chr(ord('a') + ord('i') - ord(s[1]))}"

    if usi[1] == "*":
        return usi[:2] + square(usi[2:4])
    return square(usi[:2]) + square(usi[2:4]) + usi[4:]


def test_known_labels() -> None:
    # 7g7f is an "up" move (direction 0) to square 7f = file index 6, rank index 5.
    assert move_to_action("7g7f", "b") == 0 * 81 + 6 * 9 + 5
    # The same move for White is seen with the board rotated: 3c3d lands on 7f's twin.
    assert move_to_action("3c3d", "w") == move_to_action("7g7f", "b")
    # Drops use directions 20..26 (P first).
    assert move_to_action("P*5e", "b") == 20 * 81 + 4 * 9 + 4


def test_bad_labels_and_moves_are_refused() -> None:
    game = Game()
    with pytest.raises(IllegalMoveError, match="action 0 is not a legal move"):
        action_to_move(0, game)
    with pytest.raises(IllegalMoveError, match="2187"):
        action_to_move(NUM_ACTIONS, game)
    with pytest.raises(ValueError, match="malformed move 'x9'"):
        move_to_action("x9", "b")
    with pytest.raises(ValueError, match="turn"):
        move_to_action("7g7f", "black")
