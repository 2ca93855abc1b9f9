"""The Slurm launcher presets end to end against a fake Slurm (tests/fake_slurm/ on PATH).

``sbatch`` there records each submission and runs the job's tasks locally with the ``SLURM_*``
variables of a one-node job; ``sacct`` reports their states; ``scontrol requeue`` runs a task
again once it has exited. So ``python train.py -m hydra/launcher=slurm_cpu ...`` goes through
hydra-submitit-launcher and submitit's Slurm executor unchanged: the sbatch script it writes, the
job array, submitit's job environment and signal handler, and its requeue.

Tiny runs: mlp, 8 envs x 16 steps = 128 steps per update.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY

REPO = Path(__file__).resolve().parents[1]
FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
TOTAL = 1280
STEADY = [*TINY, "training.checkpoint_interval_timesteps=100000", "training.lr_schedule=constant"]
LONG = [*STEADY, f"training.total_timesteps={TOTAL}"]
ALL_STEPS = list(range(128, TOTAL + 1, 128))
FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


class Cluster:
    """One fake Slurm: its state dir and the environment that puts it on PATH."""

    def __init__(self, state: Path) -> None:
        self.state = state
        state.mkdir(parents=True)
        drop = ("HYDRA_FULL_ERROR", "WANDB_MODE")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in drop and not k.startswith(("SLURM_", "SUBMITIT_"))}
        self.env.update(PATH=f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=str(state))

    def calls(self, cmd: str | None = None) -> list[dict]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        calls = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [c for c in calls if cmd is None or c["cmd"] == cmd]

    def task(self, key: str) -> dict:
        return json.loads((self.state / "tasks" / f"{key}.json").read_text(encoding="utf-8"))

    def tasks(self) -> list[dict]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((self.state / "tasks").glob("*.json"))]

    def train(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "train.py", *args]
        proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=240)
        if check:
            assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n{self.debug()}"
        return proc

    def settle(self, timeout: float = 30) -> list[dict]:
        """The tasks, once all have finished: the launching process may return (it saw the results)
        a moment before the task processes have exited, as on a real cluster (COMPLETING)."""
        deadline = time.monotonic() + timeout
        while any(t["state"] not in FINISHED for t in self.tasks()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.tasks()

    def debug(self) -> str:
        return "fake slurm tasks:\n" + "\n".join(json.dumps(t) for t in self.tasks())

    def cleanup(self) -> None:
        """Stop what the fake started for this test and left running (only after a failure)."""
        if not (self.state / "tasks").is_dir():
            return
        for task in self.settle(timeout=15):
            if task.get("state") in FINISHED:
                continue
            for key in ("runner_pid", "batch_pid"):
                pid = task.get(key)
                if pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)  # each runs in its own session: its group


def make_cluster(base: Path) -> Cluster:
    return Cluster(base / "slurm")


def job_logs(sweep: Path, task_key: str) -> str:
    """stdout and stderr of a task, all its runs (submitit's folder ``<sweep>/.submitit/<task>/``)."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted((sweep / ".submitit" / task_key).glob("*_log.*")))


def steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["global_step"] for line in lines if line.strip()]


# --- a CPU sweep: one job array -----------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_sweep(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("cpu_sweep")
    cluster, sweep = make_cluster(base), base / "sweep"
    try:
        proc = cluster.train("-m", "hydra/launcher=slurm_cpu", "hydra.launcher.partition=debug",
                             'hydra.launcher.setup=["export KEISEI_SETUP_RAN=1","echo setup saw $KEISEI_SETUP_RAN"]',
                             *TINY, "training.total_timesteps=128", "seed=1,2", f"hydra.sweep.dir={sweep}")
        yield cluster, sweep, proc
    finally:
        cluster.cleanup()


def test_slurm_cpu_submits_one_array_with_the_preset(cpu_sweep):
    cluster, _, _ = cpu_sweep
    submissions = cluster.calls("sbatch")
    assert len(submissions) == 1  # the two jobs of the multirun are one job array
    script = submissions[0]["script"]
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in ["#SBATCH --partition=debug", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=16GB",
                 "#SBATCH --time=240", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --signal=USR2@120", "#SBATCH --array=0-1%2",
                 "export KEISEI_SETUP_RAN=1", "export SUBMITIT_EXECUTOR=slurm"]:
        assert line in lines, f"{line!r} not in the sbatch script:\n{script}"
    assert not any("gpus" in line for line in lines)
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1
    assert re.search(r"-u -m submitit\.core\._submit .*/\.submitit/%j$", srun[0]), srun[0]
    assert srun[0].split()[srun[0].split().index("-u") - 1] == sys.executable
    # setup lines come before the job's command
    assert lines.index("export KEISEI_SETUP_RAN=1") < lines.index(srun[0])
    assert submissions[0]["array"] == [0, 1]


def test_slurm_cpu_jobs_complete_as_array_tasks(cpu_sweep):
    cluster, sweep, _ = cpu_sweep
    assert [(t["key"], t["state"], t["runs"]) for t in cluster.settle()] == [
        ("1000_0", "COMPLETED", 1), ("1000_1", "COMPLETED", 1)]
    for job, seed in ((0, 1), (1, 2)):
        job_dir = sweep / str(job)
        assert (job_dir / "checkpoints" / "final.pt").is_file()
        assert steps(job_dir) == [128]
        assert yaml.safe_load((job_dir / "config.yaml").read_text(encoding="utf-8"))["seed"] == seed
        # submitit read the array task's id from SLURM_ARRAY_JOB_ID / SLURM_ARRAY_TASK_ID
        hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text(encoding="utf-8"))
        assert hydra_cfg["hydra"]["job"]["id"] == f"1000_{job}"
        log = (sweep / ".submitit" / f"1000_{job}" / f"1000_{job}_0_log.out").read_text(encoding="utf-8")
        assert "job_id=1000_" + str(job) in log
        assert "setup saw 1" in log  # the setup lines ran in the job, before it
        assert (sweep / ".submitit" / f"1000_{job}" / f"1000_{job}_0_result.pkl").is_file()
    # the launching process polled the jobs with sacct
    assert any(c["argv"][:3] == ["-o", "JobID,State,NodeList", "--parsable2"] for c in cluster.calls("sacct"))
    assert len(cluster.calls("srun")) == 2


def test_slurm_cpu_summary(cpu_sweep):
    _, sweep, _ = cpu_sweep
    lines = (sweep / "summary.md").read_text(encoding="utf-8").splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [("0", "completed"), ("1", "completed")]
    assert "seed=1" in rows[0][3] and "seed=2" in rows[1][3]
    for row in rows:
        assert re.fullmatch(r"-?\d+\.\d{4}", row[2]), row


# --- the GPU preset ------------------------------------------------------------------------------

def test_slurm_gpu_renders_a_gpu_request(tmp_path: Path):
    cluster, sweep = make_cluster(tmp_path), tmp_path / "sweep"
    try:
        cluster.train("-m", "hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "device=cpu", *TINY,
                      "training.total_timesteps=128", f"hydra.sweep.dir={sweep}")
    finally:
        cluster.cleanup()
    (submission,) = cluster.calls("sbatch")
    lines = submission["script"].splitlines()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=240"]:
        assert line in lines, f"{line!r} not in the sbatch script:\n{submission['script']}"
    assert not any(line.startswith("#SBATCH --array") for line in lines)  # one job: no array
    assert [(t["key"], t["state"]) for t in cluster.settle()] == [("1000", "COMPLETED")]
    assert (sweep / "0" / "checkpoints" / "final.pt").is_file()


# --- preemption: SIGUSR2, requeue, resume -----------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final weights of an uninterrupted run of the settings the requeued jobs use."""
    base = tmp_path_factory.mktemp("reference")
    make_cluster(base).train(*LONG, f"hydra.run.dir={base / 'run'}")
    return torch.load(base / "run" / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize(("totals", "task_key"), [(f"{TOTAL}", "1000"), (f"128,{TOTAL}", "1000_1")],
                         ids=["one_job", "array_task"])
def test_sigusr2_requeues_the_job_and_it_resumes(tmp_path: Path, reference: dict, totals: str, task_key: str):
    """One job, or the second task of an array whose first job is short: SIGUSR2 to the running
    task; submitit requeues it (``scontrol requeue``), the fake runs it again, it resumes."""
    cluster, sweep = make_cluster(tmp_path), tmp_path / "sweep"
    job = len(totals.split(",")) - 1
    job_dir = sweep / str(job)
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm_cpu", *STEADY, f"training.total_timesteps={totals}",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cluster.env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        metrics = job_dir / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text(encoding="utf-8").count("\n") >= 2):
            assert proc.poll() is None, f"exited early: {proc.communicate()}\n{cluster.debug()}"
            assert time.monotonic() < deadline, f"no 2 updates after 120 s\n{cluster.debug()}"
            time.sleep(0.01)
        pid = cluster.task(task_key)["task_pid"]  # srun exec'd the task: the process Slurm signals
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"submitit.core._submit" in cmdline
        os.kill(pid, signal.SIGUSR2)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        cluster.cleanup()
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}\n{cluster.debug()}"

    assert [c["argv"] for c in cluster.calls("scontrol")] == [["requeue", task_key]]
    tasks = {t["key"]: t for t in cluster.settle()}
    task = tasks.pop(task_key)
    assert (task["state"], task["runs"], task["requeues"]) == ("COMPLETED", 2, 1)
    assert task["last_exit_code"] != 0  # the first run ended through submitit's requeue path
    for other in tasks.values():  # the other job of the array was left alone
        assert (other["state"], other["runs"], other["requeues"]) == ("COMPLETED", 1, 0)
    assert len(cluster.calls("sbatch")) == 1  # requeued, not submitted again

    assert steps(job_dir) == ALL_STEPS  # every step exactly once across the requeue
    logs = job_logs(sweep, task_key)
    assert "Caught signal SIGUSR2" in logs
    m = re.search(rf"Requeued job {task_key} \((\d+) remaining timeouts\)", logs)
    assert m, logs
    assert int(m.group(1)) == 20  # the preset's max_num_timeout
    stopped = re.search(r"stopped by signal 12 at global_step (\d+)", logs)
    assert stopped, logs
    assert f"resumed from {job_dir / 'checkpoints' / 'last.pt'} at global_step {stopped.group(1)}" in logs
    assert logs.count(f"Starting with JobEnvironment(job_id={task_key},") == 2
    final = torch.load(job_dir / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert final["global_step"] == TOTAL
    rows = (sweep / "summary.md").read_text(encoding="utf-8").splitlines()[2:]
    assert len(rows) == job + 1
    assert all("| completed |" in row for row in rows)

    # the resumed job ends where an uninterrupted run of the same settings ends
    assert final["model"].keys() == reference["model"].keys()
    for key in final["model"]:
        assert torch.equal(final["model"][key], reference["model"][key]), key
