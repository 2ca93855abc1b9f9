"""Preemption end to end: a real ``python train.py`` process gets SIGUSR2 / SIGTERM mid-run, writes
``checkpoints/last.pt`` after the update in progress and exits 128 + signum; the same command
resumes and ends bit-identical to an uninterrupted run (constant LR). Through submitit_local,
submitit's own handler requeues the job and the multirun finishes.

Tiny runs: mlp, 8 envs x 16 steps = 128 steps per update, 10 updates.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_slurm_real as real
import torch
from conftest import TINY

REPO = Path(__file__).resolve().parents[1]
TOTAL = 1280
LONG = [*TINY, f"training.total_timesteps={TOTAL}", "training.checkpoint_interval_timesteps=100000",
        "training.lr_schedule=constant"]
ALL_STEPS = list(range(128, TOTAL + 1, 128))


def clean_env() -> dict[str, str]:
    drop = ("HYDRA_FULL_ERROR", "WANDB_MODE")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("SLURM_", "SUBMITIT_"))}


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} did not finish in {timeout}s\nstdout:\n{out}\nstderr:\n{err}") from None


def run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=clean_env(), text=True,
                          capture_output=True, timeout=240)
    assert proc.returncode == 0, f"{proc.args}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["global_step"] for line in lines if line.strip()]


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 120) -> None:
    """Until ``condition()`` holds; fails if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited with {proc.returncode} before {what}\nstdout:\n{out}\nstderr:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} after {timeout}s")
        time.sleep(0.01)


def wait_for_updates(metrics: Path, proc: subprocess.Popen[str], n: int = 2, timeout: float = 120) -> None:
    """Until ``metrics`` has ``n`` complete lines (the training loop is running)."""
    wait_until(lambda: metrics.is_file() and metrics.read_text(encoding="utf-8").count("\n") >= n, proc,
               f"{n} updates in {metrics}", timeout)


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same command, never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run(*LONG, f"hydra.run.dir={run_dir}")
    assert steps(run_dir) == ALL_STEPS
    return run_dir


# [SIGUSR2]: the same handler as [SIGTERM]; SIGUSR2 to a running job (stopped by signal 12, resumed bit for bit)
# is also test_slurm_real.py::test_usr2_requeues_the_job_and_it_resumes_on_real_slurm's (CI's Slurm run). Slow.
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGUSR2, marks=pytest.mark.slow), signal.SIGTERM],
                         ids=["SIGUSR2", "SIGTERM"])
def test_stop_signal_checkpoints_and_the_same_command_resumes(tmp_path: Path, reference: Path, sig: signal.Signals):
    run_dir = tmp_path / "run"
    args = [*LONG, f"hydra.run.dir={run_dir}"]
    proc = start(*args)
    wait_for_updates(run_dir / "metrics.jsonl", proc)
    proc.send_signal(sig)
    out, err = finish(proc)
    assert proc.returncode == 128 + sig, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"

    done = steps(run_dir)
    assert done == ALL_STEPS[:len(done)]
    assert 2 <= len(done) < len(ALL_STEPS), "the signal arrived after the run had ended"
    last = checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["global_step"] == done[-1]
    assert last["update"] == len(done)
    assert f"stopped by signal {int(sig)} at global_step {done[-1]}" in err
    assert f"{run_dir}/checkpoints/last.pt written" in err
    assert not (run_dir / "checkpoints" / "final.pt").exists()

    again = run(*args)  # the same command: resumes from last.pt
    resumed_from = f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at global_step {done[-1]}"
    assert resumed_from in again.stdout + again.stderr
    resumed = steps(run_dir)[len(done):]
    assert resumed[0] == done[-1] + 128  # the first new line continues the sequence
    assert steps(run_dir) == ALL_STEPS  # every step once
    final = checkpoint(run_dir / "checkpoints" / "final.pt")
    assert final["global_step"] == TOTAL
    assert_same_weights(final["model"], checkpoint(reference / "checkpoints" / "final.pt")["model"])


def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, command line) of every process this test can see."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue


def submitit_task_pids(sweep: Path) -> list[int]:
    """Processes running ``python -m submitit.core._submit <sweep>/.submitit/...``: the jobs' tasks."""
    return [pid for pid, args in processes()
            if "submitit.core._submit" in args and any(a.startswith(f"{sweep}/.submitit") for a in args)]


# Slow: submitit's SIGUSR2 requeue and the resume are
# test_slurm_real.py::test_usr2_requeues_the_job_and_it_resumes_on_real_slurm's (CI's Slurm run), the
# submitit_local launcher test_sweep.py::test_submitit_local_multirun's.
@pytest.mark.slow
def test_submitit_local_requeues_on_sigusr2_and_the_job_resumes(tmp_path: Path, reference: Path):
    sweep = tmp_path / "sweep"
    proc = start("-m", "hydra/launcher=submitit_local", *LONG, f"hydra.sweep.dir={sweep}")
    job_dir = sweep / "0"
    wait_for_updates(job_dir / "metrics.jsonl", proc)
    pids = submitit_task_pids(sweep)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGUSR2)
    out, err = finish(proc)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"

    assert steps(job_dir) == ALL_STEPS  # every step exactly once across the requeue
    logs = "".join(p.read_text(encoding="utf-8") for p in sorted((sweep / ".submitit").glob("*/*_log.*")))
    assert "Caught signal SIGUSR2" in logs
    assert "Requeued job" in logs
    assert "stopped by signal 12" in logs
    assert logs.count("Starting with JobEnvironment") == 2  # the first run and the requeued one
    assert f"resumed from {job_dir / 'checkpoints' / 'last.pt'}" in logs
    final = checkpoint(job_dir / "checkpoints" / "final.pt")
    assert final["global_step"] == TOTAL
    assert_same_weights(final["model"], checkpoint(reference / "checkpoints" / "final.pt")["model"])
    summary = json.loads((job_dir / "job_result.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed"
    assert "| 0 | completed |" in (sweep / "summary.md").read_text(encoding="utf-8")


def test_a_signal_the_parent_ignores_checkpoints_and_training_goes_on(tmp_path: Path, reference: Path):
    # Inside a submitit job SIGTERM's previous handler ignores it (only SIGUSR2 requeues): the trainer
    # must save last.pt and carry on, not end the job. An inherited SIG_IGN stands in for that handler.
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *LONG, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env=clean_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    wait_for_updates(run_dir / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 0, err
    assert "stopped by signal 15" in err  # the checkpoint was written when the signal came
    assert steps(run_dir) == ALL_STEPS
    assert_same_weights(checkpoint(run_dir / "checkpoints" / "final.pt")["model"],
                        checkpoint(reference / "checkpoints" / "final.pt")["model"])


#: A periodic evaluation far longer than Slurm's warning time (2,000 games of up to 256 plies).
LONG_EVALUATION = ["opponent=random", "evaluation.games=2000", "evaluation.max_plies=256"]


@pytest.mark.parametrize(("periodic", "ladder"), [("inline", False), ("background", False), ("inline", True)])
def test_a_stop_signal_during_a_periodic_evaluation_ends_it(tmp_path: Path, periodic: str, ladder: bool):
    """A stop signal while the trainer evaluates (inline: the matches, or a rating on the ladder's cheap
    rungs; background: waiting for the previous evaluation at the next interval) ends the evaluation at
    once, unreported, and the run checkpoints and exits: a Slurm job must requeue within its warning
    time, however long an evaluation would take."""
    run_dir = tmp_path / "run"
    interval = 256 if periodic == "inline" else 128  # background: the wait at 256 is for the evaluation of 128
    rungs = ["evaluation=ladder", "evaluation.players=[random,heuristic_r90,heuristic_r75]"] if ladder else []
    proc = start(*LONG, f"hydra.run.dir={run_dir}", f"evaluation.interval_timesteps={interval}",
                 f"evaluation.periodic={periodic}", *rungs, *LONG_EVALUATION)
    wait_for_updates(run_dir / "metrics.jsonl", proc, n=2)  # update 2 is logged just before its evaluation
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line.get("global_step") for line in lines] == [128, 256]  # the stopped evaluation: unreported
    assert checkpoint(run_dir / "checkpoints" / "last.pt")["global_step"] == 256
    assert "periodic evaluation stopped by SIGTERM at global_step 256" in out + err
    assert not (run_dir / "eval" / "step_000000384").exists()


def running(pid: int) -> bool:
    """Whether ``pid`` runs (not gone, not a zombie waiting for a parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_trainer_leaves_no_background_evaluation_running(tmp_path: Path):
    """SIGKILL (out of memory, a node's kill after the grace time) gives the trainer no chance to stop its
    background evaluation worker: the worker sees its parent gone and stops itself within seconds."""
    run_dir = tmp_path / "run"
    proc = start(*LONG, f"hydra.run.dir={run_dir}", "evaluation.interval_timesteps=128",
                 "evaluation.periodic=background", *LONG_EVALUATION)
    worker_log = run_dir / "eval" / "step_000000128" / "worker.log"
    wait_until(worker_log.is_file, proc, "background evaluation of step 128")
    time.sleep(0.5)
    (worker,) = [pid for pid, args in processes()
                 if "keisei.evaluation.worker" in args and any(a.startswith(str(run_dir)) for a in args)]
    try:
        proc.kill()
        proc.communicate()
        deadline = time.monotonic() + 20
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(worker), "the evaluation worker still runs 20 s after its trainer was killed"
    finally:
        if running(worker):
            os.kill(worker, signal.SIGKILL)


#: An evaluation of a few seconds whatever the box's speed: fairy-stockfish thinks 0.5 s a move, up to 6 moves a game.
SLOW_EVALUATION = ["opponent=fairy_stockfish", "opponent.movetime_ms=500", "evaluation.games=2",
                   "evaluation.max_plies=12"]


@pytest.mark.skipif(not Path("/usr/games/fairy-stockfish").exists() and not os.environ.get("CI"),
                    reason="needs fairy-stockfish (apt-get install fairy-stockfish)")
@pytest.mark.parametrize(("periodic", "interval", "total", "expected"),
                         [("inline", 256, 384, [256]), ("background", 128, 384, [128, 256, 384]),
                          ("background", 128, 256, [128, 256])])
def test_the_evaluations_a_stopped_run_owed_are_played_when_it_resumes(tmp_path: Path, periodic: str, interval: int,
                                                                      total: int, expected: list[int]):
    """A stop at update 2 while an evaluation plays (inline: step 256's; background: the wait at 256 for
    step 128's, so step 256's never starts) leaves them unreported; the resumed run plays them (128's
    from its snapshot, 256's from the checkpoint's network), also when it has no update left (total
    256), and every evaluation is reported once; the objective is the last step's."""
    run_dir = tmp_path / "run"
    args = [*LONG, f"training.total_timesteps={total}", f"hydra.run.dir={run_dir}", f"evaluation.periodic={periodic}",
            f"evaluation.interval_timesteps={interval}", *SLOW_EVALUATION]
    proc = start(*args)
    wait_for_updates(run_dir / "metrics.jsonl", proc, n=2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert steps(run_dir) == [128, 256]  # no evaluation reported
    out = run(*args).stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["global_step"] for r in rows if "global_step" in r] == list(range(128, total + 1, 128))
    evaluations = {r["eval/global_step"]: r for r in rows if "eval/global_step" in r}
    assert sorted(r["eval/global_step"] for r in rows if "eval/global_step" in r) == expected  # each once
    assert f"objective:   {evaluations[expected[-1]]['eval/win_rate']:.4f}" in out
    assert all((run_dir / "eval" / f"step_{s:09d}" / "results.json").is_file() for s in evaluations)


def evaluated_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["eval/global_step"] for r in rows if "eval/global_step" in r]


@pytest.mark.skipif(not Path("/usr/games/fairy-stockfish").exists() and not os.environ.get("CI"),
                    reason="needs fairy-stockfish (apt-get install fairy-stockfish)")
def test_a_stop_while_evaluations_finish_reports_the_finished_ones_and_leaves_the_rest_owed(tmp_path: Path):
    """Background, an evaluation each update, 2 updates. A stop in the last update while the run waits for
    step 256's evaluation, after step 128's finished: 128's is reported at once. The same command, resumed
    at its last step, plays 256's before it ends; a stop then stops the run (no final checkpoint) rather
    than ending it without 256's; the next resume reports it."""
    run_dir = tmp_path / "run"
    args = [*LONG, "training.total_timesteps=256", f"hydra.run.dir={run_dir}", "evaluation.periodic=background",
            "evaluation.interval_timesteps=128", *SLOW_EVALUATION]
    worker_log = run_dir / "eval" / "step_000000256" / "worker.log"
    proc = start(*args)
    wait_until(worker_log.is_file, proc, "evaluation of step 256")  # started once 128's was taken
    time.sleep(0.5)  # the worker started (not the instant of its start), its evaluation goes on for seconds
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert evaluated_steps(run_dir) == [128]

    first = worker_log.stat().st_mtime_ns
    proc = start(*args)  # resumed at its last step: plays 256's in Run.finish
    wait_until(lambda: worker_log.is_file() and worker_log.stat().st_mtime_ns != first, proc,
               "evaluation of step 256 started again")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal 15 at global_step 256" in err
    assert not (run_dir / "checkpoints" / "final.pt").exists()
    assert evaluated_steps(run_dir) == [128]

    run(*args)
    assert evaluated_steps(run_dir) == [128, 256]
    assert checkpoint(run_dir / "checkpoints" / "final.pt")["global_step"] == 256


# --- a node failure on the real one-node Slurm of scripts/slurm.sh (slow, slurm) ---------------------

slurm = real.slurm  # the fixture that starts it


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_requeued_after_a_node_failure_resumes_on_real_slurm(slurm, tmp_path: Path):
    """``--requeue``, then a node failure mid-run: the node is set DOWN, as slurmctld does with a node
    that stops answering, and the job's process is killed (SIGKILL) at once, as the node's death would
    (a DOWN node's own processes would otherwise train on: slurmd only sends SIGTERM, which submitit
    bypasses). Slurm puts the job back in the queue under the same id; it runs the same command in the
    same run dir, resumes from the last checkpoint, drops the metrics lines written after it, and ends
    with every update once.

    The launching ``train.py -m`` may not see that: if submitit polls sacct while the job waits to start
    again, it reads the failed allocation's NODE_FAIL as the job's end and raises (docs/slurm.md); so the
    job is followed through Slurm here."""
    batch, total, interval = real.BATCH, real.LONG_TOTAL, 4 * real.BATCH
    sweep = tmp_path / "sweep"
    job_dir = sweep / "0"
    metrics = job_dir / "metrics.jsonl"
    cmd = [sys.executable, "train.py", *real.LAUNCHER, "+hydra.launcher.additional_parameters.requeue=true",
           *real.TINY, "training.lr_schedule=constant", f"training.total_timesteps={total}",
           f"training.checkpoint_interval_timesteps={interval}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=real.clean_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    job_id = node = None
    def lines() -> int:
        return metrics.read_text(encoding="utf-8").count("\n") if metrics.is_file() else 0

    try:
        deadline = time.monotonic() + 240  # submitted, scheduled, started
        while not lines():
            assert proc.poll() is None, f"exited early: {proc.communicate()}\n{real.cluster_state()}"
            assert time.monotonic() < deadline, f"no update after 240 s\n{real.cluster_state()}"
            time.sleep(0.05)
        (job_id,) = real.submitit_jobs(sweep)
        node = real.slurm_cmd("squeue", "-h", "-j", job_id, "-o", "%N").strip()
        (task,) = [pid for pid in submitit_task_pids(sweep)  # the task, not the srun that started it
                   if not Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"srun")]
        while not ((n := lines()) > 4 and n % 4):  # a checkpoint written, and lines past it
            assert proc.poll() is None and time.monotonic() < deadline, real.cluster_state(job_id)
            time.sleep(0.02)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=keisei test: node failure"],
                       check=True, timeout=30, env=real.clean_env())
        os.kill(task, signal.SIGKILL)
        before = steps(job_dir)
        deadline = time.monotonic() + 60
        while real.slurm_cmd("squeue", "-h", "-j", job_id, "-o", "%T").strip() != "PENDING":
            assert time.monotonic() < deadline, f"not requeued after 60 s\n{real.cluster_state(job_id)}"
            time.sleep(0.5)
        # The node comes back (slurm.sh's ReturnToService=2 may already have brought it back).
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True, timeout=30,
                       env=real.clean_env())
        deadline = time.monotonic() + real.REQUEUE_WAIT_S  # pending (BeginTime), then it trains to the end
        while real.slurm_cmd("squeue", "-h", "-j", job_id, "-o", "%T").strip():
            assert time.monotonic() < deadline, (f"the requeued job did not finish within {real.REQUEUE_WAIT_S} s\n"
                                                 f"{real.cluster_state(job_id)}\n{real.job_logs(sweep, job_id)}")
            time.sleep(1)
        states = real.wait_finished(job_id)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        real.cancel([job_id] if job_id else real.submitit_jobs(sweep))  # leave no job behind, and the node up
        if node:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True,
                           timeout=30, env=real.clean_env())

    assert [s for _, s in states] == ["NODE_FAIL", "COMPLETED"], real.cluster_state(job_id)
    assert real.submitit_jobs(sweep) == [job_id]  # requeued by Slurm, not submitted again
    script = (sweep / ".submitit" / job_id / f"{job_id}_submission.sh").read_text(encoding="utf-8")
    assert "#SBATCH --requeue" in script.splitlines(), script
    logs = real.job_logs(sweep, job_id)
    assert logs.count(f"Starting with JobEnvironment(job_id={job_id},") == 2, logs
    resumed = re.search(rf"resumed from {job_dir / 'checkpoints' / 'last.pt'} at global_step (\d+)", logs)
    assert resumed, logs
    resumed_at = int(resumed.group(1))
    # The last periodic checkpoint, or a later one: slurmd's SIGTERM to the job on a DOWN node may make
    # it write one after the update in progress, before the SIGKILL lands.
    assert interval <= resumed_at <= before[-1], (resumed_at, before)
    assert steps(job_dir) == list(range(batch, total + 1, batch))  # every update once across the requeue
    assert checkpoint(job_dir / "checkpoints" / "final.pt")["global_step"] == total
    assert json.loads((job_dir / "job_result.json").read_text(encoding="utf-8"))["status"] == "completed"
