"""label.py: positions labelled by a real USI engine (Debian's fairy-stockfish), run as a subprocess the
way a user runs it; the hcpe rows read back through rsshogi; Ctrl-C, kill -9 and an engine that dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keisei.data import HCPE, read, read_records, read_samples
from keisei.data.label import side_dtype
from keisei.data.scale import fit_score_scale, mover_results
from keisei.play.usi_client import MATE_SCORE, Line, UsiPlayer, parse_score
from keisei.shogi import STARTPOS, Color, Game, parse_sfen
from tests.conftest import TINY, assert_clean_error, wait_gone

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "tests" / "data" / "records" / "good"
FLAKY = ROOT / "tests" / "engines" / "flaky.py"
FAST = ["teacher.depth=2", "logging.progress_bar=false"]

pytestmark = pytest.mark.skipif(not Path("/usr/games/fairy-stockfish").exists(), reason="needs fairy-stockfish")


def label(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "label.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def record_positions(*files: Path) -> set[bytes]:
    """The distinct positions (hcp bytes) of the records' games that have a result (hcpe rows need one)."""
    return {parse_sfen(sfen).to_hcp() for record in read_records(list(files)) if record.result is not None
            for sfen in record.positions}


def hcps(path: Path) -> list[bytes]:
    return [bytes(r) for r in read(path, HCPE)["hcp"]]


def test_selfplay_rows_read_back_with_legal_moves_and_a_side_file(tmp_path: Path) -> None:
    out = tmp_path / "sp.hcpe"
    proc = label(f"output={out}", "positions=40", "workers=2", "multipv=3", "opening_plies=4", *FAST)
    assert proc.returncode == 0, proc.stderr
    samples = read_samples(out, HCPE)  # every position parses and every best move is legal in it
    keys = hcps(out)
    assert len(samples) >= 40 and len(set(keys)) == len(keys)
    side = np.fromfile(out.with_name("sp.hcpe.side"), dtype=side_dtype(3))
    assert len(side) == len(samples)
    rows = read(out, HCPE)
    assert (side["multipv_move16"][:, 0] == rows["bestMove16"]).all()  # the best line first
    assert (side["multipv_eval"][:, 0] == rows["eval"]).all()
    for sample, extra in zip(samples, side, strict=True):
        game = Game(sample.sfen)
        assert extra["ply"] >= 1
        legal = {m.to_apery().value for m in game.legal_moves}
        assert {int(m) for m in extra["multipv_move16"] if m} <= legal
    meta = json.loads(out.with_name("sp.hcpe.json").read_text())
    assert meta["multipv"] == 3 and meta["teacher"]["depth"] == 2
    assert "positions labelled and written" in proc.stdout


def test_games_in_progress_when_the_target_is_reached_are_not_written(tmp_path: Path) -> None:
    """With resign_score 300 every game the teacher finishes ends on a position it scores 300 or more (a
    mate or repetition aside); the game the stop at 20 positions cuts short would end on a lower score,
    written as a draw. Games are told apart by their plies (the side file's): one game's rows count up by one."""
    out = tmp_path / "g.hcpe"
    proc = label(f"output={out}", "positions=20", "workers=1", "resign_score=300", "opening_plies=8", *FAST)
    assert proc.returncode == 0, proc.stderr
    plies = np.fromfile(out.with_name("g.hcpe.side"), dtype=side_dtype(1))["ply"].astype(int)
    rows = read(out, HCPE)
    ends = [i for i in range(len(plies)) if i + 1 == len(plies) or plies[i + 1] != plies[i] + 1]
    assert len(rows) >= 20 and len(ends) >= 1
    assert all(abs(int(rows["eval"][i])) >= 300 and rows["gameResult"][i] != 0 for i in ends), \
        [(int(plies[i]), int(rows["eval"][i]), int(rows["gameResult"][i])) for i in ends]


def test_a_rerun_with_the_target_reached_adds_nothing(tmp_path: Path) -> None:
    out = tmp_path / "a.hcpe"
    assert label(f"output={out}", "positions=10", "workers=1", *FAST).returncode == 0
    before = out.read_bytes()
    proc = label(f"output={out}", "positions=10", "workers=1", *FAST)
    assert proc.returncode == 0 and out.read_bytes() == before
    assert "holds" in proc.stderr


def _start(out: Path, *extra: str) -> subprocess.Popen[str]:
    """label.py on the 56 positions of two records, 150 ms each on 2 workers (about 4 s): a stop after 10
    rows leaves about 3 s of labelling undone, also on a loaded machine (40 ms finished first once)."""
    args = [f"output={out}", "source=records", f"records=[{RECORDS / 'multi.csa'},{RECORDS / 'known.csa'}]",
            "positions=100000", "workers=2", "teacher.depth=null", "teacher.movetime_ms=150",
            "logging.progress_bar=false", *extra]
    return subprocess.Popen([sys.executable, str(ROOT / "label.py"), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_rows(out: Path, rows: int, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.stat().st_size >= rows * HCPE.itemsize:
            return
        time.sleep(0.05)
    raise AssertionError(f"{out}: not {rows} rows while the labelling ran ({proc.poll()=})")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


# [ctrl-c]: the rerun that labels every position once is also [kill-9]'s (which also drops a row cut by the
# kill and sees the workers gone). Slow.
@pytest.mark.parametrize("how", [pytest.param("ctrl-c", marks=pytest.mark.slow), "kill-9"])
def test_a_run_stopped_midway_and_rerun_labels_every_record_position_once(tmp_path: Path, how: str) -> None:
    out = tmp_path / "rec.hcpe"
    expected = record_positions(RECORDS / "multi.csa", RECORDS / "known.csa")
    proc = _start(out)
    _wait_rows(out, 10, proc)
    workers = _children(proc.pid)
    assert proc.poll() is None, "the labelling finished before it could be stopped (the test needs a slower teacher)"
    proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    first = hcps(out) if how == "ctrl-c" else []
    if how == "ctrl-c":
        assert proc.returncode == 130, err
        assert "the same command continues" in err and "Traceback" not in err
        assert 10 <= len(first) < len(expected)  # every finished label kept, the rest not done
    else:
        assert not wait_gone(workers, 15), "the workers outlived a killed labelling run"
        with open(out, "ab") as f:
            f.write(b"\x01\x02\x03")  # a row cut by the kill
    rerun = _start(out)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    final = hcps(out)
    assert sorted(final) == sorted(expected)  # every position once: none lost, none twice
    assert final[: len(first)] == first  # what the first run wrote is kept as it was
    assert len(np.fromfile(out.with_name("rec.hcpe.side"), dtype=side_dtype(1))) == len(final)


def test_an_engine_that_dies_is_restarted_and_its_position_retried(tmp_path: Path) -> None:
    out, marker = tmp_path / "flaky.hcpe", tmp_path / "crashed"
    proc = label(f"output={out}", "source=records", f"records=[{RECORDS / 'known.csa'}]", "workers=1",
                 f"teacher.command={FLAKY}", f"teacher.args=[5,{marker}]", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()  # it did die once
    assert sorted(hcps(out)) == sorted(record_positions(RECORDS / "known.csa"))


@pytest.mark.parametrize(("args", "named"), [
    (["teacher.kind=random"], "teacher.kind"),
    (["source=records"], "records"),
    (["source=records", "records=[/nonexistent/kifu]"], "/nonexistent/kifu"),
    (["source=checkpoint"], "checkpoint"),
    (["random_move_rate=2"], "random_move_rate"),
    (["teacher.command=/nonexistent/engine"], "/nonexistent/engine"),
    (["+positons=5"], "positons"),
    (["source=records", f"records=[{ROOT / 'tests/data/records/bad/illegal.csa'}]", "skip_bad_records=false"],
     "illegal.csa"),
])
def test_bad_settings_are_one_line(tmp_path: Path, args: list[str], named: str) -> None:
    out = tmp_path / "x.hcpe"
    assert_clean_error(label(f"output={out}", *args, *FAST), named, returncode=2)
    assert not out.exists() or not out.stat().st_size


def test_an_output_of_another_teacher_or_tool_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "a.hcpe"
    assert label(f"output={out}", "positions=5", "workers=1", *FAST).returncode == 0
    before = out.read_bytes()
    assert_clean_error(label(f"output={out}", "positions=10", "workers=1", "teacher.depth=3"), "another teacher",
                       returncode=2)
    assert out.read_bytes() == before
    meta = out.with_name("a.hcpe.json")
    saved = json.loads(meta.read_text())  # a description of an earlier version: a network player's search
    meta.write_text(json.dumps({**saved, "teacher": {**saved["teacher"], "search": {"gumbel_c_scale": 1.0}}}))
    rows = len(hcps(out))
    assert label(f"output={out}", f"positions={rows + 1}", "workers=1", *FAST).returncode == 0  # not a setting of it
    assert len(hcps(out)) > rows
    foreign = tmp_path / "foreign.hcpe"
    foreign.write_bytes(before)
    assert_clean_error(label(f"output={foreign}", "positions=10", *FAST), "not written by label.py", returncode=2)
    assert_clean_error(label(), "output", returncode=2)


def test_workers_end_with_the_run(tmp_path: Path) -> None:
    """A finished run leaves no worker or engine process behind."""
    out = tmp_path / "a.hcpe"
    proc = subprocess.Popen([sys.executable, str(ROOT / "label.py"), f"output={out}", "positions=30", "workers=2",
                             *FAST], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    while proc.poll() is None:
        for child in _children(proc.pid):
            seen.add(child)
            seen.update(_children(child))
        time.sleep(0.02)
    proc.communicate()
    assert proc.returncode == 0
    assert seen and not wait_gone(sorted(seen), 10)  # workers, engines, multiprocessing's helper


def test_a_checkpoints_games_are_labelled(tmp_path: Path) -> None:
    """source=checkpoint: a (barely trained) network plays the games, the teacher labels every position."""
    run = tmp_path / "run"
    trained = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "training.total_timesteps=128",
                              f"hydra.run.dir={run}"], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "net.hcpe"
    proc = label(f"output={out}", "source=checkpoint", f"checkpoint={run}", "positions=30", "workers=1",
                 "max_plies=40", "opening_plies=0", *FAST)
    assert proc.returncode == 0, proc.stderr
    samples = read_samples(out, HCPE)
    assert len(samples) >= 30
    plies = np.fromfile(out.with_name("net.hcpe.side"), dtype=side_dtype(1))["ply"]
    assert plies.max() <= 40  # the games are cut at max_plies


def test_the_teacher_scores_from_the_side_to_moves_view() -> None:
    """Before G*5b Black mates in one: the teacher's line is that move with a mate score. White without
    its rook scores negative with White to move, positive with Black to move."""
    moves = ["2h4h", "3c3d", "3i2h", "2b5e", "3g3f", "5e3g", "2h3g", "4a4b", "3f3e", "2c2d", "3g3f", "5a4a", "B*6e",
             "4b3b", "6e8c+", "6c6d", "8c6a", "8b8g+", "6i6h", "8g8f"]
    no_rook = "lnsgkgsnl/7b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL {} - 1"
    teacher = UsiPlayer("/usr/games/fairy-stockfish", depth=4)
    try:
        [line] = teacher.analyse(Game.replay(STARTPOS, moves))
        assert line == Line("G*5b", MATE_SCORE - 1)
        assert teacher.analyse(Game(no_rook.format("w")))[0].score < -300
        assert teacher.analyse(Game(no_rook.format("b")))[0].score > 300
    finally:
        teacher.close()


@pytest.mark.parametrize(("info", "score"), [
    ("info depth 3 score cp -35 pv 7g7f", -35),
    ("info depth 5 score mate 3 pv G*5b", MATE_SCORE - 3),
    ("info depth 5 score mate -2 pv 5a4a", -(MATE_SCORE - 2)),
    ("info depth 5 score mate + pv G*5b", MATE_SCORE),
    ("info depth 5 nodes 10", None),
])
def test_scores_of_info_lines(info: str, score: int | None) -> None:
    assert parse_score(info.split()) == score


def test_the_score_scale_fit_recovers_a_known_scale(random_positions: list[Game]) -> None:
    """Rows whose results are drawn from sigmoid(score / 500) fit back to about 500 (both sides to move)."""
    rng = np.random.default_rng(0)
    games = [g for g in random_positions if not g.is_over][:40]
    n = 20_000
    rows = np.zeros(n, dtype=HCPE)
    picks = rng.integers(len(games), size=n)
    rows["hcp"] = np.stack([np.frombuffer(games[i].board.to_hcp(), dtype=np.uint8) for i in picks])
    rows["eval"] = rng.integers(-2000, 2000, size=n)
    mover_won = rng.random(n) < 1 / (1 + np.exp(-rows["eval"] / 500))
    black = np.array([games[i].turn is Color.BLACK for i in picks])
    rows["gameResult"] = np.where(mover_won == black, 1, 2)
    assert set(mover_results(rows)) == {0.0, 1.0}
    assert abs(fit_score_scale(rows) - 500) < 25


def test_the_score_scale_refuses_results_that_do_not_follow_the_scores(tmp_path: Path,
                                                                     random_positions: list[Game]) -> None:
    """All draws whatever the score: no scale fits (the best one is the search's bound), said in one line by the
    command, as a missing file is."""
    games = [g for g in random_positions if not g.is_over][:10]
    rows = np.zeros(200, dtype=HCPE)
    rows["hcp"] = np.stack([np.frombuffer(games[i % len(games)].board.to_hcp(), dtype=np.uint8) for i in range(200)])
    rows["eval"] = np.linspace(-2000, 2000, 200).astype(np.int16)
    with pytest.raises(ValueError, match="do not follow their scores"):
        fit_score_scale(rows)
    data = tmp_path / "draws.hcpe"
    rows.tofile(data)
    for path, named in ((data, "do not follow their scores"), (tmp_path / "missing.hcpe", "missing.hcpe")):
        proc = subprocess.run([sys.executable, "-m", "keisei.data.scale", str(path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert_clean_error(proc, named, returncode=2)
