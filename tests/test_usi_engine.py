"""The USI engine, driven as a real subprocess over the protocol, and against fairy-stockfish."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from keisei.config import ModelConfig, ModelName, TrainConfig, to_container
from keisei.nn.checkpoint import load_model, model_state, save_checkpoint
from keisei.nn.model import build_model
from keisei.play.match import match_results, play_match
from keisei.play.usi_client import UsiPlayer
from keisei.play.usi_engine import OPTIONS, time_budget, value_to_cp
from keisei.shogi import Game, Termination, encode, move_to_action

FAIRY = "/usr/games/fairy-stockfish"
# Black to move, king on 6b, ten pieces in the camp worth 26 points, two pawns in hand: 28 points.
DECLARABLE = "RRBBGG3/GG1K5/SS7/9/9/9/9/9/8k b 2P 1"
MATED = "4k4/4G4/4P4/9/9/9/9/9/4K4 w - 1"  # White to move is mated
MATE_IN_THREE = "8k/9/8G/8n/9/9/9/9/4K4 b B 1"  # Black mates in three plies (tests/test_search.py)
OPENING = "position startpos moves 7g7f 3c3d"
STARTUP_S = 90  # python + torch start slowly on a loaded box: only protocol deadlines after go are timed
MARGIN_S = 1.5  # what a deadline may be exceeded by on a loaded 2-core box (the engine keeps 0.1 s back)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(model=ModelConfig(name=ModelName.mlp, mlp_hidden=16))
    path = tmp_path_factory.mktemp("usi") / "agent.pt"
    torch.manual_seed(0)
    save_checkpoint({"config": to_container(cfg), "model": model_state(build_model(cfg.model))}, path)
    return path


def talk(checkpoint: Path | None, *lines: str, timeout: float = 120) -> list[str]:
    """Send the lines (then quit) to a fresh engine at once; its output lines."""
    args = [f"checkpoint={checkpoint}"] if checkpoint is not None else []
    proc = subprocess.run([sys.executable, "-m", "keisei.usi_engine", *args],
                          input="\n".join([*lines, "quit"]) + "\n", capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout.splitlines()


def bestmoves(out: list[str]) -> list[str]:
    return [line.split()[1] for line in out if line.startswith("bestmove")]


class Engine:
    """The engine as a live subprocess: send lines, wait for answers with deadlines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "keisei.usi_engine", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def until(self, prefix: str, timeout: float) -> str:
        """The next line starting with ``prefix`` (lines before it are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} within {timeout:.1f}s; saw {self.seen[-5:]}") from None
            if line is None:
                raise AssertionError(f"engine exited before {prefix!r}; saw {self.seen[-5:]}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def quiet_for(self, seconds: float, prefix: str) -> bool:
        """Whether no line starting with ``prefix`` comes within ``seconds``."""
        try:
            self.until(prefix, seconds)
        except AssertionError:
            return True
        return False

    def ready(self) -> Engine:
        self.send("usi")
        self.until("usiok", STARTUP_S)
        self.send("isready")
        self.until("readyok", STARTUP_S)
        return self

    def close(self) -> int:
        if self.proc.poll() is None:
            self.send("quit")
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def engine(checkpoint: Path) -> Iterator[Engine]:
    """One live engine for the tests that time it (each sends its own position; none sets options)."""
    live = Engine(f"checkpoint={checkpoint}").ready()
    yield live
    assert live.close() == 0


def go_and_time(engine: Engine, position: str, go: str) -> tuple[str, float, str]:
    """(bestmove, seconds from sending go to the bestmove, the last info line before it)."""
    engine.send(position)
    start = time.monotonic()
    engine.send(go)
    line = engine.until("bestmove", 60)
    elapsed = time.monotonic() - start
    info = [s for s in engine.seen if s.startswith("info depth")][-1]
    return line.split()[1], elapsed, info


def nodes(info: str) -> int:
    return int(re.search(r" nodes (\d+)", info).group(1))


# --- protocol -------------------------------------------------------------------------------


def test_handshake_and_a_legal_move(checkpoint: Path) -> None:
    out = talk(checkpoint, "usi", "isready", "usinewgame", OPENING, "go btime 1000 wtime 1000 byoyomi 100")
    assert out[0].startswith("id name Keisei") and any(line.startswith("id author") for line in out)
    assert {"usiok", "readyok"} <= set(out)
    for name in OPTIONS:
        assert any(line.startswith(f"option name {name} ") for line in out)
    (move,) = bestmoves(out)
    assert move in Game.from_usi_position(OPENING).legal_usi()
    info = next(line for line in out if line.startswith("info depth"))
    assert f"pv {move}" in info and " score cp " in info and " nodes " in info and " nps " in info


def test_every_go_form_answers(checkpoint: Path) -> None:
    position = "position sfen lnsgkgsnl/1r5b1/ppppppppp/9/9/2P6/PP1PPPPPP/1B5R1/LNSGKGSNL w - 2"
    out = talk(checkpoint, "usi", "isready", position, "go movetime 50", "go depth 3", "go binc 10 winc 10",
               "go infinite", "stop", "go ponder", "ponderhit")
    legal = Game("lnsgkgsnl/1r5b1/ppppppppp/9/9/2P6/PP1PPPPPP/1B5R1/LNSGKGSNL w - 2").legal_usi()
    moves = bestmoves(out)
    assert len(moves) == 5 and all(m in legal for m in moves)


def test_movetime_is_kept(engine: Engine) -> None:
    move, elapsed, info = go_and_time(engine, OPENING, "go movetime 500")
    assert move in Game.from_usi_position(OPENING).legal_usi()
    assert elapsed < 0.5 + MARGIN_S
    assert nodes(info) > 1  # it searched, not just the policy's move


def test_byoyomi_and_clock_are_kept(engine: Engine) -> None:
    legal = Game.from_usi_position(OPENING).legal_usi()
    move, elapsed, info = go_and_time(engine, OPENING, "go btime 0 wtime 0 byoyomi 600")
    assert move in legal and elapsed < 0.6 + MARGIN_S and nodes(info) > 1
    # 2 s left, no byoyomi: it takes a small share (2000/40 ms + the increment), far from flagging.
    move, elapsed, _ = go_and_time(engine, OPENING, "go btime 2000 wtime 2000 binc 100 winc 100")
    assert move in legal and elapsed < 0.15 + MARGIN_S


def test_go_nodes(engine: Engine) -> None:
    move, _, info = go_and_time(engine, OPENING, "go nodes 40")
    assert move in Game.from_usi_position(OPENING).legal_usi()
    assert nodes(info) == 40


def test_go_infinite_then_stop(engine: Engine) -> None:
    engine.send(OPENING)
    engine.send("go infinite")
    assert engine.quiet_for(1.5, "bestmove")  # thinks on: the protocol wants bestmove only after stop
    engine.send("isready")
    engine.until("readyok", 5)  # stdin is read while it thinks
    start = time.monotonic()
    engine.send("stop")
    move = engine.until("bestmove", 10).split()[1]
    assert time.monotonic() - start < 0.5 + MARGIN_S
    assert move in Game.from_usi_position(OPENING).legal_usi()
    info = [s for s in engine.seen if s.startswith("info depth")][-1]
    assert nodes(info) > 1 and f" pv {move}" in info


def test_ponder_then_ponderhit(engine: Engine) -> None:
    engine.send(OPENING)
    engine.send("go ponder btime 0 wtime 0 byoyomi 300")
    assert engine.quiet_for(0.8, "bestmove")  # pondering: no answer before ponderhit
    start = time.monotonic()
    engine.send("ponderhit")
    move = engine.until("bestmove", 10).split()[1]
    assert time.monotonic() - start < 0.3 + MARGIN_S  # the byoyomi counts from ponderhit
    assert move in Game.from_usi_position(OPENING).legal_usi()


def test_mate_is_found_and_reported(engine: Engine) -> None:
    move, _, info = go_and_time(engine, f"position sfen {MATE_IN_THREE}", "go movetime 1000")
    # The bishop drops on the long diagonal mate in three (tests/test_search.py checks that by the rules).
    assert move in {"B*3a", "B*3c", "B*4d", "B*5e", "B*6f", "B*7g", "B*8h", "B*9i"} and " score mate 3 " in info


def test_win_and_resign(checkpoint: Path) -> None:
    assert Game(DECLARABLE).termination is Termination.DECLARATION
    assert Game(MATED).termination is Termination.CHECKMATE
    out = talk(checkpoint, "usi", "setoption name Simulations value 0", "isready", f"position sfen {DECLARABLE}",
               "go", f"position sfen {MATED}", "go", "setoption name ResignValue value 0", "position startpos", "go",
               "setoption name ResignValue value -100", "position startpos", "go")
    first, second, third, fourth = bestmoves(out)
    assert (first, second) == ("win", "resign")
    # With the threshold at 0 it resigns exactly when its value of the position is below 0.
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        value = float(model(torch.from_numpy(encode([Game()])[0]))[1][0])
    assert third == ("resign" if value < 0 else fourth)
    assert fourth in Game().legal_usi()  # -100: never resigns


def test_position_over_by_repetition_is_explained(checkpoint: Path) -> None:
    moves = " ".join(["5i5h 5a5b 5h5i 5b5a"] * 3)
    assert Game.from_usi_position(f"startpos moves {moves}").termination is Termination.SENNICHITE
    out = talk(checkpoint, "usi", "isready", f"position startpos moves {moves}", "go nodes 8")
    assert any(line.startswith("info string") and "repetition" in line and "draw" in line for line in out)
    (move,) = bestmoves(out)
    assert move in Game().legal_usi()  # the same position as the start: it plays on


# --- options and bad input --------------------------------------------------------------------


def test_bad_option_values_are_reported_and_the_previous_kept(checkpoint: Path) -> None:
    bad = {"Device": "tpu", "ResignValue": "9999", "Temperature": "-3", "Simulations": "-1", "BatchSize": "0",
           "CPuct": "0", "MateSearch": "4", "MoveOverhead": "x", "ReuseTree": "maybe"}
    out = talk(checkpoint, "usi", "setoption name Simulations value 0", "setoption name Temperature value nan",
               *(f"setoption name {name} value {value}" for name, value in bad.items()),
               "isready", "position startpos", "go")
    strings = [line for line in out if line.startswith("info string")]
    for name in [*bad, "Temperature"]:
        assert any(s.startswith(f"info string bad value for {name}:") for s in strings), name
    assert any("keeping -100" in s for s in strings) and any("keeping auto" in s for s in strings)
    # The previous values are in force: Simulations 0 plays the policy's move (depth 1, one node),
    # ResignValue -100 never resigns, Temperature 0 plays greedily, Device auto loaded the net.
    assert any(s.startswith("info depth 1 nodes 1 ") for s in out)
    (move,) = bestmoves(out)
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        logits = model(torch.from_numpy(encode([Game()])[0]))[0][0]
    legal = Game().legal_usi()
    assert move == max(legal, key=lambda usi: logits[move_to_action(usi, "b")].item())


def test_bad_input_keeps_it_alive(checkpoint: Path) -> None:
    out = talk(checkpoint, "usi", "isready", "hello", "position garbage", "go", "setoption name Nope value 1",
               "setoption name Temperature value abc", "position startpos moves 7g7e", "go",
               "position startpos", "go nodes 4")
    strings = [line for line in out if line.startswith("info string")]
    assert any("unknown command: hello" in s for s in strings)
    assert any("bad position" in s and "garbage" in s for s in strings)
    assert any("unknown option: Nope" in s for s in strings)
    assert any("Temperature" in s and "abc" in s for s in strings)
    assert any("7g7e" in s for s in strings)
    moves = bestmoves(out)
    assert moves[:2] == ["resign", "resign"] and moves[2] in Game().legal_usi()


def test_unloadable_checkpoint_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "keisei.usi_engine", f"checkpoint={path}"],
                          input="usi\nisready\nquit\n", capture_output=True, text=True, timeout=STARTUP_S)
    assert proc.returncode != 0 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot load checkpoint" in line and str(path) in line and "not a torch file" in line


def test_without_a_checkpoint_isready_says_so_and_go_resigns() -> None:
    out = talk(None, "usi", "isready", "position startpos", "go")
    ready = out.index("readyok")
    assert out[ready - 1].startswith("info string no checkpoint loaded")
    assert bestmoves(out) == ["resign"]


def test_a_bad_checkpoint_option_keeps_the_loaded_one(checkpoint: Path, tmp_path: Path) -> None:
    out = talk(checkpoint, "usi", "isready", f"setoption name Checkpoint value {tmp_path / 'none.pt'}", "isready",
               "position startpos", "go nodes 4")
    assert any(s.startswith("info string cannot load checkpoint") and f"keeping {checkpoint}" in s for s in out)
    assert bestmoves(out)[0] in Game().legal_usi()


def test_bad_arguments_exit_with_usage() -> None:
    for args in (["nonsense"], ["simulations=-4"]):
        proc = subprocess.run([sys.executable, "-m", "keisei.usi_engine", *args], capture_output=True, text=True,
                              timeout=STARTUP_S)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, args


def test_help_exits_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "keisei.usi_engine", "--help"], capture_output=True, text=True,
                          timeout=STARTUP_S)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:")
    for name, option in OPTIONS.items():
        assert f"{option.argument}=" in proc.stdout and name in proc.stdout


# --- time management and scores ---------------------------------------------------------------------


def test_time_budget_never_exceeds_the_clock() -> None:
    assert time_budget({"movetime": 1000}, True, 0.1) == pytest.approx(0.9)
    assert time_budget({"btime": 0, "wtime": 0, "byoyomi": 3000}, True, 0.1) == pytest.approx(2.9)
    assert time_budget({"btime": 60000, "wtime": 1000}, True, 0.1) == pytest.approx(1.4)
    assert time_budget({"btime": 60000, "wtime": 1000}, False, 0.1) == 0.0  # 25 ms is less than the overhead
    assert time_budget({"btime": 200, "binc": 5000}, True, 0.1) == pytest.approx(0.1)  # not the increment
    assert time_budget({"btime": 50}, True, 0.1) == 0.0
    assert time_budget({}, True, 0.1) is None and time_budget({"nodes": 5}, True, 0.1) is None


def test_score_mapping() -> None:
    assert value_to_cp(0.0) == 0
    assert value_to_cp(0.5) == -value_to_cp(-0.5) > 0
    assert value_to_cp(1.0) > value_to_cp(0.9) > value_to_cp(0.5)


def test_engine_against_fairy_stockfish(checkpoint: Path) -> None:
    if not os.path.exists(FAIRY):
        if os.environ.get("CI"):
            pytest.fail(f"{FAIRY} missing: .ci/run must apt-get install fairy-stockfish")
        pytest.skip("apt-get install fairy-stockfish")
    ours = UsiPlayer(sys.executable, args=["-m", "keisei.usi_engine", f"checkpoint={checkpoint}"], movetime_ms=100,
                     name="keisei")
    theirs = UsiPlayer(FAIRY, options={"Skill Level": -20, "Threads": 1}, depth=1, name="fairy")
    try:
        games = play_match(ours, theirs, 2, max_plies=200)
    finally:
        ours.close()
        theirs.close()
    forfeits = {Termination.ILLEGAL_MOVE, Termination.TIMEOUT, Termination.CRASH}
    assert all(m.game.is_over and m.game.termination not in forfeits for m in games)
    assert match_results(games, "keisei", "fairy")["games"] == 2


def test_console_script_is_installed() -> None:
    assert shutil.which("keisei-usi") is not None
