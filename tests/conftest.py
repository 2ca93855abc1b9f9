"""Shared fixtures and helpers: positions reached by random legal play (real rsshogi, fixed seeds),
and checks that processes are gone."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from keisei.shogi import Game

#: A training run that takes seconds: the MLP, 8 games x 16 steps (128 env steps an update).
TINY = ["model=mlp", "training=smoke", "env.num_envs=8", "algorithm.num_steps=16", "algorithm.minibatch_size=64",
        "logging.progress_bar=false"]


def clean_env() -> dict[str, str]:
    """This environment without the variables that change how a launched train.py reports."""
    return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_MODE")}


def metric_steps(run_dir: Path) -> list[int]:
    """The ``global_step`` of each training row of a run dir's ``metrics.jsonl`` (evaluation rows skipped)."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [row["global_step"] for row in map(json.loads, lines) if "global_step" in row]


def play_random_games(seed: int, games: int, max_plies: int = 200) -> list[Game]:
    """Snapshots of every position of ``games`` random games (both colours to move)."""
    rng = random.Random(seed)
    positions = []
    for _ in range(games):
        game = Game(max_plies=max_plies)
        while not game.is_over:
            positions.append(game.copy())
            game.push(rng.choice(game.legal_usi()))
        positions.append(game)
    return positions


#: Black to move mates with G*5b (the gold is protected by the pawn on 5c).
MATE_IN_ONE = "4k4/9/4P4/9/9/9/9/9/4K4 b G 1"


@pytest.fixture(scope="session")
def random_positions() -> list[Game]:
    """About 2,000 positions from 12 random games (captures, drops, promotions, both colours)."""
    return play_random_games(seed=20261124, games=12, max_plies=160)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait up to ``seconds`` for the processes to end; the pids still alive then."""
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def assert_clean_error(proc: subprocess.CompletedProcess[str], *named: str, returncode: int | None = None) -> str:
    """A failed launch: non-zero exit (``returncode`` if given), one ``Error:`` line on stderr naming
    each of ``named``, no traceback; returns the line."""
    assert proc.returncode != 0 if returncode is None else proc.returncode == returncode, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    for text in named:
        assert text in lines[0], lines[0]
    return lines[0]
