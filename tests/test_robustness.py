"""Nothing lost, no tracebacks: Ctrl-C, refused relaunches, early checks and clear errors, each through
the real entry points (``python train.py`` / ``python evaluate.py`` subprocesses, real signals, real
engines' absence). Tiny runs: mlp, 8 envs x 16 steps = 128 steps per update.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, wait_gone

REPO = Path(__file__).resolve().parents[1]
LONG = [*TINY, "training.total_timesteps=1e6", "training.lr_schedule=constant"]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_MODE")}


def run(script: str, *args: str, timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True,
                          env=env(), timeout=timeout)


def default_sigint() -> None:
    """In the child before it starts: SIGINT at its default, so that Ctrl-C interrupts it. A background
    job of a non-interactive shell (``python -m pytest ... &`` in a script, some CI runners) starts with
    SIGINT ignored, its children inherit that, and the programs respect it (docs/training.md)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(script: str, *args: str) -> subprocess.Popen[str]:
    """``python SCRIPT ARGS`` running, with Ctrl-C at its default however the tests were started."""
    return subprocess.Popen([sys.executable, script, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), preexec_fn=default_sigint)


def one_error_line(proc: subprocess.CompletedProcess[str], *named: str) -> str:
    """The run failed with exit 2 and one ``Error:`` line naming each of ``named``; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, proc.stderr
    for word in named:
        assert word in lines[0], lines[0]
    return lines[0]


def metric_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["global_step"] for line in path.read_text(encoding="utf-8").splitlines()
            if "global_step" in json.loads(line)]


def wait_until(condition, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} early\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting")
        time.sleep(0.05)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"did not exit in {timeout}s\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished tiny run (512 steps) and its stdout."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = run("train.py", *TINY, "training.total_timesteps=512", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc.stdout


def record_bytes(run_dir: Path) -> dict[str, bytes]:
    files = [run_dir / "config.yaml", *sorted((run_dir / ".hydra").iterdir())]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


# --- Ctrl-C ------------------------------------------------------------------------------------

def test_ctrl_c_finishes_the_update_writes_last_pt_and_exits_without_traceback(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start("train.py", *LONG, f"hydra.run.dir={run_dir}")
    wait_until(lambda: len(metric_steps(run_dir)) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert "Traceback" not in err + out, err
    assert "Ctrl-C" in err
    done = metric_steps(run_dir)
    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["global_step"] == done[-1]  # the update in progress was finished and saved
    assert f"{run_dir}/checkpoints/last.pt written" in err
    # The same command resumes from it.
    again = run("train.py", *TINY, "training.lr_schedule=constant", f"training.total_timesteps={done[-1] + 256}",
                f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr
    assert f"resumed from {run_dir / 'checkpoints' / 'last.pt'}" in again.stdout + again.stderr
    assert metric_steps(run_dir) == list(range(128, done[-1] + 257, 128))


def test_second_ctrl_c_stops_at_once_and_the_last_checkpoint_stays_readable(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Updates of 4096 steps (seconds each), a checkpoint after every one: the second Ctrl-C lands mid-update.
    proc = start("train.py", *LONG, "algorithm.num_steps=512", "algorithm.minibatch_size=512",
                 "training.checkpoint_interval_timesteps=128", f"hydra.run.dir={run_dir}")
    wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists() and len(metric_steps(run_dir)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc, timeout=30)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert "Traceback" not in err + out, err
    assert "Interrupted." in err
    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["global_step"] in metric_steps(run_dir)
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))  # no temporary file left behind


def test_started_with_sigint_ignored_ctrl_c_is_ignored_and_sigterm_stops_safely(tmp_path: Path) -> None:
    """A background job of a non-interactive shell (``nohup python train.py ... &`` in a script) starts
    with SIGINT ignored: it asked not to be interrupted by Ctrl-C, and the trainer respects that (a
    Ctrl-C meant for the script's foreground command reaches it too). SIGTERM stops it the safe way."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *LONG, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    wait_until(lambda: len(metric_steps(run_dir)) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # not even a second Ctrl-C stops it
    at_ctrl_c = len(metric_steps(run_dir))
    wait_until(lambda: len(metric_steps(run_dir)) >= at_ctrl_c + 3, proc)  # it trains on
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, (out[-2000:], err[-2000:])
    assert "Ctrl-C" not in err and "Traceback" not in err + out, err
    assert "SIGINT is ignored" in out + err  # said at the start
    done = metric_steps(run_dir)
    assert f"stopped by signal 15 at global_step {done[-1]}" in err
    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["global_step"] == done[-1]


def test_checkpoints_by_time_before_the_step_interval(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start("train.py", *LONG, "training.checkpoint_interval_minutes=0.005", f"hydra.run.dir={run_dir}")
    try:
        wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists(), proc)
        assert not (run_dir / "checkpoints" / "final.pt").exists()
        assert metric_steps(run_dir)[-1] < 50_000  # the step interval (50,000) was not reached
    finally:
        proc.kill()
        proc.communicate()


def children(pid: int) -> dict[int, bytes]:
    """The processes whose parent is ``pid`` and their command lines (from /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
    return found


def ctrl_c_after_the_first_game(*args: str, helpers: dict[int, bytes] | None = None) -> tuple[str, str]:
    """Run ``evaluate.py ARGS`` (400 games a match), press Ctrl-C once the progress bar shows a finished
    game, and check that it exits with 130 and no traceback; returns (stdout, stderr). ``helpers``
    receives its child processes (pid: command line) at the moment of the Ctrl-C."""
    proc = start("evaluate.py", *args, "evaluation.games=400")
    seen: list[str] = []

    def read() -> None:  # the progress bar (stderr): "k/400" once k games have finished
        assert proc.stderr is not None
        while chunk := proc.stderr.read(1):
            seen.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: re.search(r"\b([1-9]\d*)/400\b", "".join(seen[-400:])) is not None, proc, timeout=180)
    if helpers is not None:
        helpers.update(children(proc.pid))
    proc.send_signal(signal.SIGINT)
    try:
        out = proc.stdout.read() if proc.stdout else ""
        proc.wait(timeout=60)
    finally:
        proc.kill()
    reader.join(timeout=10)
    err = "".join(seen)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert "Traceback" not in err + out, err
    return out, err


def test_ctrl_c_during_evaluate_keeps_the_games_played(finished: tuple[Path, str], tmp_path: Path) -> None:
    out_dir = tmp_path / "eval"
    _, err = ctrl_c_after_the_first_game(f"checkpoint={finished[0]}", "opponent=heuristic", f"hydra.run.dir={out_dir}")
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert results["partial"] is True and results["games_planned"] == 400
    assert 1 <= results["games"] < 400
    records = (out_dir / "games" / "games.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(records) == results["games"]
    assert "partial results kept" in err


def test_ctrl_c_in_a_round_robin_before_a_player_played_leaves_it_unrated(finished: tuple[Path, str],
                                                                         tmp_path: Path) -> None:
    """Interrupted during the first pairing (the agent against random), the heuristic player has not
    played: it is listed as unrated, not given a made-up rating (it used to get one virtual draw
    against the first player, so Elo 0)."""
    out_dir = tmp_path / "rr"
    ctrl_c_after_the_first_game(f"checkpoint={finished[0]}", "evaluation=round_robin",
                                "evaluation.players=[random,heuristic]", f"hydra.run.dir={out_dir}")
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert results["partial"] is True and len(results["pairings"]) == 1
    assert results["pairings"][0]["opponent"] == "random" and 1 <= results["pairings"][0]["games"] < 400
    assert set(results["elo"]) == {results["players"][0], "random"}
    assert results["unrated"] == ["heuristic"]


def test_ctrl_c_during_a_match_on_env_workers_keeps_the_games_and_stops_the_workers(
        finished: tuple[Path, str], tmp_path: Path) -> None:
    """evaluation.workers=2, two networks: the games run in env worker processes. Ctrl-C keeps the games
    that had finished, as in this process, and every child process is gone once evaluate.py has exited."""
    out_dir = tmp_path / "eval"
    helpers: dict[int, bytes] = {}
    ctrl_c_after_the_first_game(f"checkpoint={finished[0]}", "opponent=checkpoint",
                                f"opponent.checkpoint={finished[0]}", "opponent.name=mirror",
                                "evaluation.workers=2", "evaluation.temperature=1", "opponent.temperature=1",
                                "evaluation.opening_plies=2", f"hydra.run.dir={out_dir}",
                                helpers=helpers)
    assert sum(b"keisei.env.workers" in cmdline for cmdline in helpers.values()) == 2
    left = wait_gone(list(helpers), 10)
    assert not left, [helpers[pid] for pid in left]
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert results["partial"] is True and results["games_planned"] == 400
    assert 1 <= results["games"] < 400
    assert len((out_dir / "games" / "games.jsonl").read_text(encoding="utf-8").splitlines()) == results["games"]


# --- refused relaunches keep the run's record ---------------------------------------------------

def test_relaunch_with_another_model_is_refused_before_touching_the_record(finished: tuple[Path, str]) -> None:
    run_dir = finished[0]
    before = record_bytes(run_dir)
    proc = run("train.py", *TINY, "model.mlp_hidden=32", "training.total_timesteps=1024", f"hydra.run.dir={run_dir}")
    one_error_line(proc, "model.mlp_hidden=32", str(run_dir))
    assert record_bytes(run_dir) == before


# Slow: a truncated checkpoint refused in one line is test_train.py::test_resume_truncated_checkpoint's, a refused
# relaunch leaving the record alone test_relaunch_with_another_model_is_refused_before_touching_the_record's.
@pytest.mark.slow
def test_relaunch_onto_a_truncated_checkpoint_is_refused_before_touching_the_record(
        finished: tuple[Path, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(finished[0], run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    before = record_bytes(run_dir)
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    proc = run("train.py", *TINY, "training.total_timesteps=1024", f"hydra.run.dir={run_dir}")
    one_error_line(proc, str(last))
    assert record_bytes(run_dir) == before
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before


def test_a_finished_run_relaunched_reports_its_objective(finished: tuple[Path, str]) -> None:
    run_dir, first = finished
    again = run("train.py", *TINY, "training.total_timesteps=512", f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr
    objective = re.search(r"objective:\s+(\S+)", first).group(1)
    assert objective != "nan"
    assert re.search(r"objective:\s+(\S+)", again.stdout).group(1) == objective


# --- checks before the first step ---------------------------------------------------------------

@pytest.mark.parametrize("periodic", ["inline", "background"])
def test_missing_engine_fails_before_training(tmp_path: Path, periodic: str) -> None:
    run_dir = tmp_path / "run"
    proc = run("train.py", *TINY, "training.total_timesteps=1280", "evaluation.interval_timesteps=640",
               f"evaluation.periodic={periodic}", "opponent=usi", "opponent.command=/nonexistent/engine",
               f"hydra.run.dir={run_dir}")
    one_error_line(proc, "/nonexistent/engine")
    assert not run_dir.exists()  # nothing trained, nothing written: the failed launch leaves no dir


def test_device_cuda_without_gpu(tmp_path: Path, finished: tuple[Path, str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_error_line(run("train.py", *TINY, "device=cuda", f"hydra.run.dir={tmp_path / 'run'}"), "device=cuda")
    one_error_line(run("evaluate.py", f"checkpoint={finished[0]}", "device=cuda",
                       f"hydra.run.dir={tmp_path / 'eval'}"), "device=cuda")


def test_tensorboard_not_installed(tmp_path: Path) -> None:
    """tensorboard is only in the test extra: a user who installed the main package lacks it."""
    code = ("import runpy, sys; sys.modules['tensorboard'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path('train.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, "train.py", *TINY, "logging.tensorboard=true",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, env=env(),
                          timeout=120)
    one_error_line(proc, "logging.tensorboard", "pip install tensorboard")


def test_too_many_envs_for_this_machine(tmp_path: Path) -> None:
    proc = run("train.py", *TINY, "env.num_envs=100000000", "algorithm.minibatch_size=128",
               f"hydra.run.dir={tmp_path / 'run'}")
    one_error_line(proc, "env.num_envs=100000000", "GiB")


def test_a_replay_buffer_too_large_for_this_machine(tmp_path: Path) -> None:
    """algorithm=gumbel_az's buffer grows as the run goes: refused at the start, not hours later."""
    proc = run("train.py", "algorithm=gumbel_az", "model=mlp", "env.num_envs=2",
               "algorithm.buffer_size=10000000000", f"hydra.run.dir={tmp_path / 'run'}")
    one_error_line(proc, "algorithm.buffer_size=10000000000", "GiB once full")
    assert not (tmp_path / "run").exists()


# --- smaller -------------------------------------------------------------------------------------

def test_a_failed_launch_leaves_no_dir_and_a_run_leaves_no_empty_log(tmp_path: Path,
                                                                      finished: tuple[Path, str]) -> None:
    run_dir = tmp_path / "run"
    one_error_line(run("train.py", *TINY, "algorithm.gamma=5", f"hydra.run.dir={run_dir}"), "algorithm.gamma")
    assert not run_dir.exists()
    out_dir = tmp_path / "eval"
    one_error_line(run("evaluate.py", f"checkpoint={tmp_path / 'missing.pt'}", f"hydra.run.dir={out_dir}"),
                   "missing.pt")
    assert not out_dir.exists()
    assert not list(finished[0].glob("*.log"))


def test_an_empty_run_dir_is_refused_before_anything_is_written_in_the_current_directory(
        tmp_path: Path, finished: tuple[Path, str]) -> None:
    """``hydra.run.dir=$DIR`` with DIR unset: Hydra would run in the current directory; also quoted, with
    ``++``, and a multirun's ``hydra.sweep.dir`` (the multirun filled the current directory with its jobs)."""
    cases = [("train.py", [*TINY, "hydra.run.dir="], "hydra.run.dir"),
             ("train.py", [*TINY, "++hydra.run.dir=''"], "hydra.run.dir"),
             ("train.py", ["-m", *TINY, "seed=1,2", "hydra.sweep.dir= "], "hydra.sweep.dir"),
             ("evaluate.py", [f"checkpoint={finished[0]}", "evaluation.games=2", "hydra.run.dir="], "hydra.run.dir")]
    for script, args, key in cases:
        one_error_line(run(script, *args, cwd=tmp_path), f"{key} is empty")
        assert not any(tmp_path.iterdir()), (script, args, sorted(p.name for p in tmp_path.iterdir()))


def test_train_help_describes_the_app_and_its_groups() -> None:
    proc = run("train.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "self-play" in proc.stdout
    assert "schema/" not in proc.stdout
    for group in (REPO / "conf").iterdir():
        if group.is_dir() and group.name != "hydra":
            assert f"{group.name}:" in proc.stdout, group.name
            for option in group.glob("*.yaml"):
                assert option.stem in proc.stdout, option


def test_multirun_prints_where_its_summary_is(tmp_path: Path) -> None:
    proc = run("train.py", "-m", *TINY, "training.total_timesteps=128", "seed=1,2", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "summary.md") in proc.stdout
