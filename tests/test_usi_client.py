"""The USI client: engines as players (fake ones that misbehave, and real ones)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from keisei.play.match import play_match
from keisei.play.players import RandomPlayer
from keisei.play.usi_client import EngineError, UsiPlayer
from keisei.shogi import Color, Game, Termination
from keisei.shogi.game import FORFEITS

ENGINES = Path(__file__).parent / "engines"
FAIRY_STOCKFISH = "/usr/games/fairy-stockfish"
GPSUSI = "/usr/games/gpsusi"


def installed_engine(path: str, package: str) -> str:
    """``path`` if the engine is installed; otherwise a failure in CI and a skip elsewhere."""
    if shutil.which(path) is None:
        reason = f"{path} is not installed (sudo apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def fake_engine(script: str, log: Path | None = None, **kwargs) -> UsiPlayer:
    """A fake engine of tests/engines run by this interpreter, logging to ``log`` if given."""
    args = [str(ENGINES / script)] + ([str(log)] if log is not None else [])
    return UsiPlayer(sys.executable, args=args, name=script.removesuffix(".py"), **kwargs)


def alive(pid: int) -> bool:
    """Whether a process (zombies included: a closed player must also have reaped it) exists."""
    return Path(f"/proc/{pid}").exists()


def logged(log: Path) -> tuple[list[int], list[str]]:
    """(pids started, commands received) from a fake engine's log."""
    lines = log.read_text().splitlines()
    pids = [int(line.split()[1]) for line in lines if line.startswith("start ")]
    return pids, [line for line in lines if not line.startswith("start ")]


def assert_engine_lost_all(games, termination: Termination, engine_is_a: bool = True) -> None:
    for k, m in enumerate(games):
        engine_colour = m.a_colour if engine_is_a else m.a_colour.opponent
        assert m.a_colour is (Color.BLACK if k % 2 == 0 else Color.WHITE)
        assert m.game.termination is termination, (k, m.game)
        assert m.game.winner is engine_colour.opponent, (k, m.game)
        # The engine forfeits its first move: at once as Black, after the random player's move as White.
        assert m.game.ply == (0 if engine_colour is Color.BLACK else 1)


# --- fake engines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["crash.py", "nomove.py"])
def test_an_engine_that_crashes_or_breaks_the_protocol_loses_every_game_and_is_restarted(tmp_path, script):
    """crash.py dies on its first ``go``; nomove.py answers a bare ``bestmove`` (no move): either forfeits the
    game as a crash, and the next game gets a fresh engine."""
    log = tmp_path / "engine.log"
    engine = fake_engine(script, log, movetime_ms=10, timeout_s=5)
    try:
        games = play_match(engine, RandomPlayer(seed=1), games=4, max_plies=50)
    finally:
        engine.close()
    assert_engine_lost_all(games, Termination.CRASH)
    pids, commands = logged(log)
    # One process per game: each forfeited on its one "go" and a fresh one played the next game.
    assert len(pids) == 4 and len(set(pids)) == 4
    assert commands.count("go") == 4
    assert commands.count("usi") == 4 and commands.count("isready") == 4
    assert not any(alive(pid) for pid in pids)


def test_crashing_engine_as_second_player(tmp_path):
    engine = fake_engine("crash.py", movetime_ms=10, timeout_s=5)
    try:
        games = play_match(RandomPlayer(seed=2), engine, games=2, max_plies=50)
    finally:
        engine.close()
    assert_engine_lost_all(games, Termination.CRASH, engine_is_a=False)


def test_illegal_move_forfeits_and_is_recorded(tmp_path):
    log = tmp_path / "illegal.log"
    engine = fake_engine("illegal.py", log, movetime_ms=10, timeout_s=5)
    try:
        games = play_match(engine, RandomPlayer(seed=3), games=4, max_plies=50)
        pid = engine._proc.pid
        assert alive(pid)  # an illegal move is no crash: the same process plays on
    finally:
        engine.close()
    assert_engine_lost_all(games, Termination.ILLEGAL_MOVE)
    assert [m.illegal_move for m in games] == ["5e5d"] * 4
    pids, commands = logged(log)
    assert pids == [pid] and commands.count("go") == 4
    assert not alive(pid)


def test_silent_engine_times_out_without_hanging_the_match(tmp_path):
    log = tmp_path / "silent.log"
    start = time.monotonic()
    engine = fake_engine("silent.py", log, movetime_ms=50, timeout_s=0.5)
    try:
        games = play_match(RandomPlayer(seed=4), engine, games=2, max_plies=50)
    finally:
        engine.close()
    elapsed = time.monotonic() - start
    assert elapsed < 30  # a hang guard, not a speed test
    assert_engine_lost_all(games, Termination.TIMEOUT, engine_is_a=False)
    assert all(m.illegal_move is None for m in games)
    pids, commands = logged(log)
    # The hung process cannot answer "quit": it must have been killed, and a fresh one started.
    assert len(pids) == 2 and commands.count("go") == 2
    assert not any(alive(pid) for pid in pids)


def test_resigning_engine(tmp_path):
    engine = fake_engine("resign.py", movetime_ms=10, timeout_s=5)
    try:
        games = play_match(engine, RandomPlayer(seed=5), games=4, max_plies=50)
    finally:
        engine.close()
    assert_engine_lost_all(games, Termination.RESIGN)
    assert all(m.illegal_move is None for m in games)


def test_close_ends_the_engine_process_and_is_idempotent():
    engine = fake_engine("resign.py", timeout_s=5)
    assert engine.engine_name == "fake resign"
    pid = engine._proc.pid
    assert alive(pid)
    engine.close()
    assert not alive(pid)
    engine.close()  # a second close is harmless


def test_engine_without_handshake_raises_in_bounded_time(tmp_path):
    log = tmp_path / "nohandshake.log"
    start = time.monotonic()
    with pytest.raises(EngineError, match="handshake"):
        fake_engine("nohandshake.py", log, timeout_s=0.2)
    elapsed = time.monotonic() - start
    assert elapsed < 60  # a hang guard: the handshake gives up after timeout_s + 5 s
    pids, commands = logged(log)
    assert commands[:1] == ["usi"] and "isready" not in commands
    assert len(pids) == 1 and not alive(pids[0])


def test_missing_engine_command_raises_engine_error_naming_it(tmp_path):
    command = str(tmp_path / "no-such-engine")
    with pytest.raises(EngineError) as info:
        UsiPlayer(command)
    assert command in str(info.value)


# --- real engines -------------------------------------------------------------------------------


def test_fairy_stockfish_beats_random():
    path = installed_engine(FAIRY_STOCKFISH, "fairy-stockfish")
    # At full skill the engine plays without chance (below 20 its Skill Level picks weaker moves at random).
    engine = UsiPlayer(path, options={"Threads": 1}, depth=1, timeout_s=10)
    try:
        assert engine.engine_name is not None and "Fairy-Stockfish" in engine.engine_name
        assert engine.name == "fairy-stockfish"
        games = play_match(engine, RandomPlayer(seed=6), games=4, max_plies=200)
    finally:
        engine.close()
    for m in games:
        assert m.game.termination not in FORFEITS, m.game
        assert m.illegal_move is None
        # Every move replays as legal under our rules.
        assert Game.from_usi_position(m.game.to_usi_position(), max_plies=200).moves == m.game.moves
    engine_wins = sum(m.game.winner is m.a_colour for m in games)
    assert engine_wins == 4


def test_gpsusi_plays_a_legal_game():
    path = installed_engine(GPSUSI, "gpsshogi")
    # gpsusi thinks far beyond a 100 ms byoyomi unless its search depth is capped.
    engine = UsiPlayer(path, byoyomi_ms=100, options={"LimitDepth": 4}, timeout_s=10)
    try:
        assert engine.engine_name is not None and "gpsshogi" in engine.engine_name
        games = play_match(engine, RandomPlayer(seed=7), games=1, max_plies=200)
    finally:
        engine.close()
    (m,) = games
    assert m.game.is_over
    assert m.game.termination not in FORFEITS, m.game
    assert m.game.ply > 0
    assert Game.from_usi_position(m.game.to_usi_position(), max_plies=200).moves == m.game.moves
