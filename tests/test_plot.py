"""keisei.plot: a run's metrics as PNG, a record's final position as SVG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rsshogi.core import Board

from keisei.play.match import play_match, save_records
from keisei.play.players import HeuristicPlayer, RandomPlayer
from keisei.plot import final_position_svg, metrics_figure, plot_metrics

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


def eval_legend(run_dir: Path) -> dict[str, tuple[list, list]]:
    """The evaluation panel's curves by legend label: (steps, values)."""
    import matplotlib.pyplot as plt

    fig = metrics_figure(run_dir)
    try:
        panel = next(ax for ax in fig.axes if ax.get_title() == "periodic evaluation")
        labels = [t.get_text() for t in panel.get_legend().get_texts()]
        curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in panel.get_lines()}
        assert labels == list(curves)
        return curves
    finally:
        plt.close(fig)


def test_one_win_rate_curve_per_opponent(tmp_path: Path) -> None:
    """evaluation.periodic_opponents: a win-rate curve per opponent, named in the legend (the main
    opponent's name from the run's config.yaml); without them the panel is as before."""
    run_dir = tmp_path / "run"
    write_metrics(run_dir, with_eval=True)
    assert list(eval_legend(run_dir)) == ["win rate", "score", "draw rate"]

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    for line in lines:
        if "eval/global_step" in line:
            step = line["eval/global_step"]
            line.update({"eval/heuristic/win_rate": step / 1000, "eval/heuristic/score": 0.1,
                         "eval/fairy_stockfish_weakest/win_rate": 0.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    (run_dir / "config.yaml").write_text("opponent:\n  kind: random\n  name: random\n", encoding="utf-8")
    curves = eval_legend(run_dir)
    assert list(curves) == ["win rate vs random", "win rate vs heuristic", "win rate vs fairy_stockfish_weakest",
                            "score vs random", "draw rate vs random"]
    assert curves["win rate vs random"] == ([256, 512], [0.5, 0.5])
    assert curves["win rate vs heuristic"] == ([256, 512], [0.256, 0.512])
    assert curves["win rate vs fairy_stockfish_weakest"] == ([256, 512], [0.0, 0.0])
    assert plot_metrics(run_dir).read_bytes()[:8] == PNG_MAGIC


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


# --- bad input: one line "Error: ..." on stderr naming the file, exit 2, no traceback, no picture ----------


def plot(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keisei.plot", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def error_line(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one error line, checked: exit 2, nothing on stdout, no traceback, and each ``expected`` in it."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture
def two_games(tmp_path: Path) -> Path:
    games = play_match(RandomPlayer(seed=1), RandomPlayer(seed=2), 2, max_plies=20, seed=3)
    save_records(games, "a", "b", tmp_path / "games")
    return tmp_path / "games"


@pytest.mark.parametrize("index", ["0", "-1", "3", "99", "x", "1.5", ""])
def test_jsonl_line_number_outside_the_file(two_games: Path, tmp_path: Path, index: str) -> None:
    """Line numbers count from 1 (line 1 is game 0000); 0 used to draw the last game, 3 said only
    'list index out of range'."""
    jsonl = two_games / "games.jsonl"
    line = error_line(plot(f"{jsonl}:{index}", "--out", tmp_path / "o.svg"), str(jsonl), "1..2")
    if index:
        assert f":{index}" in line or f"'{index}'" in line
    assert not (tmp_path / "o.svg").exists()


def test_jsonl_without_a_line_number(two_games: Path) -> None:
    error_line(plot(two_games / "games.jsonl"), str(two_games / "games.jsonl"), "games.jsonl:N")


def test_jsonl_first_and_last_lines_still_work(two_games: Path, tmp_path: Path) -> None:
    for n in (1, 2):
        done = plot(f"{two_games / 'games.jsonl'}:{n}", "--out", tmp_path / f"{n}.svg")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / f"{n}.svg").read_text(encoding="utf-8") == final_position_svg(f"{two_games}/{n - 1:04d}.kif")


def test_corrupt_jsonl_line(two_games: Path, tmp_path: Path) -> None:
    jsonl = two_games / "games.jsonl"
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n"
                   + json.dumps({"game": "0002"}) + "\n"
                   + json.dumps({"usi": "startpos moves 7g7f 7g7f"}) + "\n", encoding="utf-8")
    error_line(plot(f"{bad}:2"), f"{bad}:2")  # truncated JSON
    error_line(plot(f"{bad}:3"), f"{bad}:3", "usi")  # no moves
    error_line(plot(f"{bad}:4"), f"{bad}:4", "7g7f")  # an illegal move


@pytest.mark.parametrize("name", ["garbage.kif", "garbage.csa"])
def test_text_that_is_no_game_record(tmp_path: Path, name: str) -> None:
    """The parsers skip lines they do not know: garbage used to give the start position and exit 0."""
    path = tmp_path / name
    path.write_text("hello\nthis is not a game record\n", encoding="utf-8")
    error_line(plot(path, "--out", tmp_path / "o.svg"), str(path), "no moves")
    assert not (tmp_path / "o.svg").exists()


def test_record_with_a_bad_line(two_games: Path, tmp_path: Path) -> None:
    kif, csa = tmp_path / "bad.kif", tmp_path / "bad.csa"
    lines = (two_games / "0000.kif").read_text(encoding="utf-8").splitlines()
    kif.write_text("\n".join([*lines[:8], "nonsense here", *lines[8:]]) + "\n", encoding="utf-8")  # among the moves
    csa.write_text((two_games / "0000.csa").read_text(encoding="utf-8").replace("+7978GI", "+7978GI\n+5958OU"),
                   encoding="utf-8")
    kif_lines = kif.read_text(encoding="utf-8").splitlines()
    error_line(plot(kif), f"{kif}:{kif_lines.index('nonsense here') + 1}:", "nonsense here")
    error_line(plot(csa), str(csa), "+5958OU")


@pytest.mark.parametrize("name", ["noise.csa", "noise.kif"])
def test_binary_record(tmp_path: Path, name: str) -> None:
    """Used to print a bare codec error naming no file."""
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 4)
    error_line(plot(path), str(path), "not a text file")


@pytest.mark.parametrize("name", ["no_such_run", "no_such.kif", "no_such.csa", "no_such.jsonl:1"])
def test_missing_path(tmp_path: Path, name: str) -> None:
    """A missing run dir used to be reported as a wrong extension."""
    line = error_line(plot(tmp_path / name), str(tmp_path / name.removesuffix(":1")), "does not exist")
    assert "expected" not in line


def test_wrong_extension_of_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi\n", encoding="utf-8")
    error_line(plot(tmp_path / "notes.txt"), str(tmp_path / "notes.txt"), ".kif")


def test_corrupt_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_metrics(run, with_eval=False)
    path = run / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines[:2], lines[2][:40], *lines[3:]]) + "\n", encoding="utf-8")
    error_line(plot(run, "--out", tmp_path / "m.png"), f"{path}:3")
    path.write_text("\n".join([*lines[:2], "[1, 2]", *lines[3:]]) + "\n", encoding="utf-8")
    error_line(plot(run, "--out", tmp_path / "m.png"), f"{path}:3", "object")
    path.write_bytes(bytes(range(256)) * 4)
    error_line(plot(run, "--out", tmp_path / "m.png"), str(path), "not a text file")
    assert not (tmp_path / "m.png").exists()


def panels_by_title(run_dir: Path) -> dict[str, dict]:
    """Each panel's curves (label: (x, y)), the band's (lower, upper) edges at each x and the x label."""
    import matplotlib.pyplot as plt

    fig = metrics_figure(run_dir)
    try:
        panels = {}
        for ax in fig.axes:
            curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
            bands = [np.asarray(c.get_paths()[0].vertices) for c in ax.collections]
            panels[ax.get_title()] = {"curves": curves, "bands": bands, "xlabel": ax.get_xlabel(),
                                      "legend": [t.get_text() for t in ax.get_legend().get_texts()]
                                      if ax.get_legend() else []}
        return panels
    finally:
        plt.close(fig)


def test_ladder_elo_over_steps_and_training_time(tmp_path: Path) -> None:
    """eval/ladder_elo (evaluation=ladder): a panel of the Elo with its 95 % band against env steps,
    and one against training time, which the records hold only as charts/SPS per update (summed:
    128 steps / SPS each); no win-rate panel when no opponent's match was played."""
    run_dir = tmp_path / "run"
    write_metrics(run_dir, with_eval=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    sps = [100.0, 200.0, 50.0, 400.0, 64.0]
    ladder = {256: (-120.0, 300.0), 512: (35.5, 250.0), 640: (80.0, None)}  # None: logged as null
    out = []
    for line, speed in zip(lines, sps, strict=True):
        out.append({**line, "charts/SPS": speed})
        step = line["global_step"]
        if step in ladder:
            out.append({"update": line["update"], "eval/global_step": step, "eval/ladder_elo": ladder[step][0],
                        "eval/ladder_elo_error": ladder[step][1], "eval/ladder_games": 6})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in out), encoding="utf-8")

    panels = panels_by_title(run_dir)
    assert "periodic evaluation" not in panels
    steps = panels["ladder Elo"]
    assert steps["xlabel"] == "env steps"
    assert steps["legend"] == ["ladder Elo", "95 % interval"]
    assert steps["curves"] == {"ladder Elo": ([256, 512, 640], [-120.0, 35.5, 80.0])}
    band = steps["bands"][0]
    for x, (elo, error) in ladder.items():
        edge = sorted(band[np.isclose(band[:, 0], x), 1])
        assert (edge[0], edge[-1]) == pytest.approx((elo - error, elo + error)) if error else len(edge) == 0

    timed = panels["ladder Elo over training time"]
    assert timed["xlabel"].startswith("training time (min;")
    seconds = np.cumsum([128 / s for s in sps])  # 1.28, 0.64, 2.56, 0.32, 2.0 s per update
    minutes = [seconds[1] / 60, seconds[3] / 60, seconds[4] / 60]  # steps 256, 512, 640
    xs, ys = timed["curves"]["ladder Elo"]
    assert xs == pytest.approx(minutes) and ys == [-120.0, 35.5, 80.0]
    assert plot_metrics(run_dir).read_bytes()[:8] == PNG_MAGIC


def test_ladder_and_other_opponents_share_the_run(tmp_path: Path) -> None:
    """evaluation=ladder with evaluation.periodic_opponents: the other opponents' win rates stay in the
    evaluation panel (no empty curve of the unplayed main opponent), the ladder Elo gets its own."""
    run_dir = tmp_path / "run"
    write_metrics(run_dir, with_eval=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    lines.append({"update": 5, "eval/global_step": 640, "eval/ladder_elo": 10.0, "eval/ladder_elo_error": 90.0,
                  "eval/ladder_games": 6, "eval/heuristic/win_rate": 0.25, "eval/heuristic/score": 0.3})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    (run_dir / "config.yaml").write_text("opponent:\n  kind: random\n  name: random\n", encoding="utf-8")
    panels = panels_by_title(run_dir)
    assert panels["periodic evaluation"]["curves"] == {"win rate vs heuristic": ([640], [0.25])}
    assert panels["ladder Elo"]["curves"] == {"ladder Elo": ([640], [10.0])}
    assert "ladder Elo over training time" in panels


def test_win_rates_of_several_runs_over_training_time(tmp_path: Path) -> None:
    """--opponent: each run's periodic win rate against one opponent, named either as a periodic
    opponent or as the run's own opponent, at the training minutes of its evaluated steps; a run
    that never played it, or several runs without --opponent, give one line naming the problem."""
    from keisei.plot import win_rate_over_time

    ppo, gaz = tmp_path / "ppo", tmp_path / "gaz"
    for run_dir in (ppo, gaz):
        write_metrics(run_dir, with_eval=True)  # 128 steps an update at 1000 steps/s; evaluated at 256, 512
    lines = [json.loads(line) for line in (gaz / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    for line in lines:
        if "eval/global_step" in line:
            line["eval/fs/win_rate"] = line["eval/global_step"] / 1024
    (gaz / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    (ppo / "config.yaml").write_text("opponent:\n  kind: usi\n  name: fs\n", encoding="utf-8")
    (gaz / "config.yaml").write_text("opponent:\n  kind: heuristic\n  name: heuristic\n", encoding="utf-8")

    minutes = [2 * 0.128 / 60, 4 * 0.128 / 60]
    assert win_rate_over_time(gaz, "fs") == pytest.approx(list(zip(minutes, [0.25, 0.5])))
    assert win_rate_over_time(ppo, "fs") == pytest.approx(list(zip(minutes, [0.5, 0.5])))  # its eval/win_rate
    assert win_rate_over_time(gaz, "heuristic") == pytest.approx(list(zip(minutes, [0.5, 0.5])))

    def plot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "keisei.plot", *args], capture_output=True, text=True,
                              timeout=120)

    done = plot(str(ppo), str(gaz), "--opponent", "fs", "--out", str(tmp_path / "fs.png"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fs.png").read_bytes()[:8] == PNG_MAGIC
    for args, named in (([str(ppo), str(gaz), "--opponent", "gpsusi"], f"{ppo}: no periodic evaluation against gpsusi"),
                        ([str(ppo), str(gaz)], "--opponent NAME"),
                        ([str(ppo), str(tmp_path / "nothing"), "--opponent", "fs"], "nothing: not a run dir")):
        bad = plot(*args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and named in bad.stderr, bad.stderr


def test_evaluations_reported_out_of_order_are_drawn_in_step_order(tmp_path: Path) -> None:
    """A resumed run reports the evaluations its stopped run owed after later ones (steps 512, then
    256): the curve goes along the steps, not back and forth in file order."""
    run_dir = tmp_path / "run"
    write_metrics(run_dir, with_eval=False)
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    late = [{"update": 5, "eval/global_step": step, "eval/win_rate": step / 1000, "eval/score": 0.5,
             "eval/draw_rate": 0.0} for step in (512, 256)]
    (run_dir / "metrics.jsonl").write_text(lines + "".join(json.dumps(x) + "\n" for x in late), encoding="utf-8")
    assert eval_legend(run_dir)["win rate"] == ([256, 512], [0.256, 0.512])
