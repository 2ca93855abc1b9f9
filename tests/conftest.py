"""Shared fixtures: positions reached by random legal play (real rsshogi, fixed seeds)."""

from __future__ import annotations

import random

import pytest

from keisei.shogi import Game


def play_random_games(seed: int, games: int, max_plies: int = 200) -> list[Game]:
    """Snapshots of every position of ``games`` random games (both colours to move)."""
    rng = random.Random(seed)
    positions = []
    for _ in range(games):
        game = Game(max_plies=max_plies)
        while not game.is_over:
            positions.append(game.copy())
            game.push(rng.choice(game.legal_moves()))
        positions.append(game)
    return positions


@pytest.fixture(scope="session")
def random_positions() -> list[Game]:
    """About 2,000 positions from 12 random games (captures, drops, promotions, both colours)."""
    return play_random_games(seed=20261124, games=12, max_plies=160)
