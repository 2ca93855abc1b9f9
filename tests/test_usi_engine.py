"""The USI engine, driven as a real subprocess over the protocol, and against fairy-stockfish."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from keisei.checkpoint import load_model, model_state, save_checkpoint
from keisei.config import ModelConfig, ModelName, TrainConfig, to_container
from keisei.match import match_results, play_match
from keisei.model import build_model
from keisei.shogi import Game, Termination, encode
from keisei.usi_client import UsiPlayer
from keisei.usi_engine import value_to_cp

FAIRY = "/usr/games/fairy-stockfish"
# Black to move, king on 6b, ten pieces in the camp worth 26 points, two pawns in hand: 28 points.
DECLARABLE = "RRBBGG3/GG1K5/SS7/9/9/9/9/9/8k b 2P 1"
MATED = "4k4/4G4/4P4/9/9/9/9/9/4K4 w - 1"  # White to move is mated


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(model=ModelConfig(name=ModelName.mlp, mlp_hidden=16))
    path = tmp_path_factory.mktemp("usi") / "agent.pt"
    save_checkpoint({"config": to_container(cfg), "model": model_state(build_model(cfg.model))}, path)
    return path


def talk(checkpoint: Path, *lines: str, timeout: float = 60) -> list[str]:
    """Send the lines (then quit) to a fresh engine; its output lines."""
    proc = subprocess.run([sys.executable, "-m", "keisei.usi_engine", f"checkpoint={checkpoint}"],
                          input="\n".join([*lines, "quit"]) + "\n", capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout.splitlines()


def bestmoves(out: list[str]) -> list[str]:
    return [line.split()[1] for line in out if line.startswith("bestmove")]


def test_handshake_and_a_legal_move(checkpoint: Path) -> None:
    out = talk(checkpoint, "usi", "isready", "usinewgame", "position startpos moves 7g7f 3c3d",
               "go btime 1000 wtime 1000 byoyomi 100")
    assert out[0].startswith("id name Keisei") and any(line.startswith("id author") for line in out)
    assert {"usiok", "readyok"} <= set(out)
    assert any(line.startswith("option name Temperature") for line in out)
    (move,) = bestmoves(out)
    assert move in Game.from_usi_position("startpos moves 7g7f 3c3d").legal_moves()
    info = next(line for line in out if line.startswith("info depth"))
    assert f"pv {move}" in info and " score cp " in info


def test_every_go_form_answers(checkpoint: Path) -> None:
    position = "position sfen lnsgkgsnl/1r5b1/ppppppppp/9/9/2P6/PP1PPPPPP/1B5R1/LNSGKGSNL w - 2"
    out = talk(checkpoint, "usi", "isready", position, "go movetime 50", "go depth 3", "go binc 10 winc 10",
               "go infinite", "stop", "go ponder", "ponderhit")
    legal = Game("lnsgkgsnl/1r5b1/ppppppppp/9/9/2P6/PP1PPPPPP/1B5R1/LNSGKGSNL w - 2").legal_moves()
    moves = bestmoves(out)
    assert len(moves) == 5 and all(m in legal for m in moves)


def test_infinite_search_waits_for_stop(checkpoint: Path) -> None:
    assert bestmoves(talk(checkpoint, "usi", "isready", "position startpos", "go infinite")) == []


def test_win_and_resign(checkpoint: Path) -> None:
    assert Game(DECLARABLE).termination is Termination.DECLARATION
    out = talk(checkpoint, "usi", "isready", f"position sfen {DECLARABLE}", "go", f"position sfen {MATED}", "go",
               "setoption name ResignValue value 0", "position startpos", "go",
               "setoption name ResignValue value -100", "position startpos", "go")
    first, second, third, fourth = bestmoves(out)
    assert (first, second) == ("win", "resign")
    # With the threshold at 0 it resigns exactly when its value of the position is below 0.
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        value = float(model(torch.from_numpy(encode([Game()])[0]))[1][0])
    assert third == ("resign" if value < 0 else fourth)
    assert fourth in Game().legal_moves()  # -100: never resigns


def test_bad_input_keeps_it_alive(checkpoint: Path) -> None:
    out = talk(checkpoint, "usi", "isready", "hello", "position garbage", "go", "setoption name Nope value 1",
               "setoption name Temperature value abc", "position startpos moves 7g7e", "go",
               "position startpos", "go")
    strings = [line for line in out if line.startswith("info string")]
    assert any("unknown command: hello" in s for s in strings)
    assert any("bad position" in s and "garbage" in s for s in strings)
    assert any("unknown option: Nope" in s for s in strings)
    assert any("Temperature" in s or "float" in s for s in strings)
    assert any("7g7e" in s for s in strings)
    moves = bestmoves(out)
    assert moves[:2] == ["resign", "resign"] and moves[2] in Game().legal_moves()


def test_missing_checkpoint_is_reported(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "keisei.usi_engine", f"checkpoint={tmp_path / 'none.pt'}"],
                          input="usi\nisready\nposition startpos\ngo\nquit\n", capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert "readyok" in proc.stdout and "cannot load checkpoint" in proc.stdout
    assert "bestmove resign" in proc.stdout


def test_bad_arguments_exit_with_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "keisei.usi_engine", "nonsense"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


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
