"""keisei.plot: a run's metrics as PNG, a record's final position as SVG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rsshogi.core import Board

from keisei.match import play_match, save_records
from keisei.players import HeuristicPlayer, RandomPlayer
from keisei.plot import final_position_svg, plot_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir: Path, with_eval: bool) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for update in range(1, 6):
        lines.append({"global_step": 128 * update, "update": update, "losses/policy_loss": float(rng.normal()),
                      "losses/value_loss": 0.1, "losses/entropy": 3.0, "losses/approx_kl": 0.01,
                      "losses/clipfrac": 0.1, "losses/explained_variance": None, "charts/SPS": 1000.0,
                      "games/black_win": 0.5, "games/white_win": 0.3, "games/draw": 0.2, "games/length_mean": 90.0})
        if with_eval and update % 2 == 0:
            lines.append({"update": update, "eval/global_step": 128 * update, "eval/win_rate": 0.5,
                          "eval/score": 0.6, "eval/draw_rate": 0.2})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


@pytest.mark.parametrize("with_eval", [False, True])
def test_metrics_png(tmp_path: Path, with_eval: bool) -> None:
    write_metrics(tmp_path / "run", with_eval)
    out = plot_metrics(tmp_path / "run")
    assert out == tmp_path / "run" / "metrics.png"
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000


def test_cli_on_a_run_dir_and_errors(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run", with_eval=True)
    done = subprocess.run([sys.executable, "-m", "keisei.plot", str(tmp_path / "run"), "--out",
                           str(tmp_path / "m.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "nothing.txt"):
        bad = subprocess.run([sys.executable, "-m", "keisei.plot", str(target)], capture_output=True, text=True,
                             timeout=120)
        assert bad.returncode == 2 and bad.stderr.startswith("Error:") and "Traceback" not in bad.stderr


def test_final_position_of_saved_records(tmp_path: Path) -> None:
    games = play_match(HeuristicPlayer(seed=1), RandomPlayer(seed=2), 2, max_plies=120, seed=3)
    save_records(games, "heuristic", "random", tmp_path)
    for k, m in enumerate(games):
        board = Board(m.game.sfen())
        replay = Board(m.game.start_sfen)
        for usi in m.game.moves:
            last = replay.push_usi(usi)
        expected = str(board.to_svg(last_move=last, scale=2.0))
        for record in (f"{tmp_path}/{k:04d}.kif", f"{tmp_path}/{k:04d}.csa", f"{tmp_path}/games.jsonl:{k + 1}"):
            svg = final_position_svg(record)
            assert svg.startswith("<svg") and svg == expected, record


def test_shift_jis_kif_from_other_tools(tmp_path: Path) -> None:
    game = play_match(RandomPlayer(seed=4), RandomPlayer(seed=5), 1, max_plies=30, seed=6)[0].game
    sjis, utf8 = tmp_path / "sjis.kif", tmp_path / "utf8.kif"
    sjis.write_bytes(game.to_kif().encode("shift_jis"))
    utf8.write_text(game.to_kif(), encoding="utf-8")
    assert final_position_svg(str(sjis)) == final_position_svg(str(utf8))
