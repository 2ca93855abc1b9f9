"""The Slurm launcher presets end to end against a REAL one-node Slurm (``scripts/slurm.sh up``).

Debian's slurm-wlm with munge, slurmdbd and MariaDB, started on this machine by the module
fixture: ``python train.py -m hydra/launcher=slurm_cpu ...`` goes through hydra-submitit-launcher,
submitit, the real ``sbatch``/``srun``/``sacct``/``scontrol requeue`` and the real daemons.

Tiny runs: mlp, 8 envs x 16 steps = 128 steps per update; each job gets 1 CPU and 1 GB, except in
the test of the presets' own requests, which Slurm reads back from jobs held pending, never run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm.sh"
PARTITION = "debug"  # the partition scripts/slurm.sh configures
LAUNCHER = ["-m", "hydra/launcher=slurm_cpu", f"hydra.launcher.partition={PARTITION}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30"]
BATCH = 128
LONG_TOTAL = 50 * BATCH  # about a minute of training on this 2-core box
REQUEUE_WAIT_S = 360  # a requeued job waits PENDING (BeginTime) before it starts again, then trains on


def clean_env() -> dict[str, str]:
    """This environment without Slurm/submitit variables (the tests may themselves run in a job)."""
    drop = ("HYDRA_FULL_ERROR", "WANDB_MODE", "SLURM_CONF")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("SLURM_", "SUBMITIT_"))}


def slurm_cmd(*args: str, timeout: float = 30) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=clean_env())
    return proc.stdout + proc.stderr


def cluster_state(job_id: str | None = None) -> str:
    """squeue, sacct and sinfo as text, for failure messages."""
    parts = [slurm_cmd("squeue", "-a", "-o", "%i %T %r %S %M"), slurm_cmd("sinfo", "-N")]
    sacct = ["sacct", "-D", "-X", "-P", "-o", "JobID,State,ExitCode,Start,End,Reason"]
    parts.append(slurm_cmd(*sacct, *(["-j", job_id] if job_id else ["-S", "now-1hour"])))
    if job_id:
        parts.append(slurm_cmd("scontrol", "show", "job", job_id))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def slurm() -> None:
    """Start (or find running) the one-node Slurm of scripts/slurm.sh."""
    sudo = shutil.which("sudo")
    can_root = os.geteuid() == 0 or (sudo is not None and subprocess.run([sudo, "-n", "true"]).returncode == 0)
    if not can_root:
        pytest.skip("a real Slurm needs root (or passwordless sudo) to install and start its daemons")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("no Slurm installed and no apt-get to install it")
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=900,
                              env=clean_env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scripts/slurm.sh up did not finish in 900 s:\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"scripts/slurm.sh up failed:\n{proc.stdout}\n{proc.stderr}"


def train(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "train.py", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n{cluster_state()}"
    return proc


def submitit_jobs(sweep: Path) -> list[str]:
    """The Slurm job ids (``123``, or ``123_0`` for an array task) of the jobs submitit submitted:
    its folders ``<sweep>/.submitit/<job id>/`` with a ``<job id>_submitted.pkl``."""
    folder = sweep / ".submitit"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)
                  and (p / f"{p.name}_submitted.pkl").is_file())


def job_logs(sweep: Path, job_id: str) -> str:
    """stdout and stderr of a job, all its runs (submitit appends to the same files)."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted((sweep / ".submitit" / job_id).glob("*_log.*")))


def steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["global_step"] for line in lines if line.strip()]


def sacct_states(job_id: str) -> list[tuple[str, str]]:
    """(JobID, State) of every allocation of the job, requeued ones too (``sacct -D``)."""
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id], capture_output=True,
                         text=True, timeout=30, env=clean_env(), check=True).stdout
    return [tuple(line.split("|")[:2]) for line in out.splitlines() if line.strip()]


def wait_finished(job_id: str, timeout: float = 60) -> list[tuple[str, str]]:
    """sacct's states once no job's (no array task's) latest state is pending/running any more (the
    launcher may return while a job is still COMPLETING; an array's tasks end at different times)."""
    deadline = time.monotonic() + timeout
    while True:
        states = sacct_states(job_id)
        latest = dict(states)  # each job's (array task's) last record: a requeued job has several
        if states and all(s not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED") for s in latest.values()):
            return states
        assert time.monotonic() < deadline, f"job {job_id} not finished after {timeout} s\n{cluster_state(job_id)}"
        time.sleep(1)


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30, env=clean_env())


# --- a 2-job sweep: one job array on the real node ---------------------------------------------------

def test_sweep_of_two_jobs_completes_on_real_slurm(slurm, tmp_path: Path):
    sweep = tmp_path / "sweep"
    setup = 'hydra.launcher.setup=["export KEISEI_SETUP_RAN=1","echo setup saw $KEISEI_SETUP_RAN"]'
    try:
        train(*LAUNCHER, setup, *TINY, f"training.total_timesteps={BATCH}", "seed=1,2", f"hydra.sweep.dir={sweep}",
              timeout=420)
    except BaseException:
        cancel(submitit_jobs(sweep))  # leave no job behind on the node
        raise

    jobs = submitit_jobs(sweep)
    assert len(jobs) == 2, jobs
    array_id = jobs[0].split("_")[0]
    assert jobs == [f"{array_id}_0", f"{array_id}_1"]  # the two jobs of the multirun are one job array
    script = (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text(encoding="utf-8")
    lines = script.splitlines()
    for line in [f"#SBATCH --partition={PARTITION}", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=1GB",
                 "#SBATCH --signal=USR2@120", "#SBATCH --array=0-1%2", "#SBATCH --nodes=1",
                 "#SBATCH --ntasks-per-node=1", "export KEISEI_SETUP_RAN=1"]:
        assert line in lines, script
    (srun,) = [line for line in lines if line.startswith("srun ")]
    assert f"{sys.executable} -u -m submitit.core._submit " in srun, srun  # this interpreter runs the job
    assert lines.index("export KEISEI_SETUP_RAN=1") < lines.index(srun)  # the setup lines come first
    # the real accounting knows them: both array tasks completed
    states = dict(wait_finished(array_id))
    assert states == {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}, cluster_state(array_id)

    for job, seed in ((0, 1), (1, 2)):
        job_dir = sweep / str(job)
        assert (job_dir / "checkpoints" / "final.pt").is_file()
        assert steps(job_dir) == [BATCH]
        assert json.loads((job_dir / "job_result.json").read_text(encoding="utf-8"))["status"] == "completed"
        log = job_logs(sweep, f"{array_id}_{job}")
        assert f"job_id={array_id}_{job}" in log, log  # submitit saw the real Slurm job environment
        assert "setup saw 1" in log, log  # the setup lines ran in the job
        assert f"seed={seed}" in (job_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8").replace(
            "- ", "")
    # the sweep summary (keisei/train/sweep.py): summary.csv and summary.md, one completed row per job
    assert (sweep / "summary.csv").is_file()
    lines = (sweep / "summary.md").read_text(encoding="utf-8").splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [("0", "completed"), ("1", "completed")]
    assert "seed=1" in rows[0][3] and "seed=2" in rows[1][3]


# --- the presets' own requests, as Slurm reads them -----------------------------------------------------

def test_the_cpu_preset_asks_slurm_for_its_cpus_memory_and_time(slurm, tmp_path: Path):
    """``slurm_cpu`` unmodified: Slurm's queue shows what each array task asks (8 CPUs, 16 GB, 4 hours, no
    GPU); submitted held (``--hold``), they stay pending on any node, and are cancelled here."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm_cpu", f"hydra.launcher.partition={PARTITION}",
           "+hydra.launcher.additional_parameters.hold=true", *TINY, f"training.total_timesteps={BATCH}", "seed=1,2",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    array_id = None
    try:
        deadline = time.monotonic() + 120
        while len(jobs := submitit_jobs(sweep)) < 2:
            assert proc.poll() is None, f"exited early: {proc.communicate()}\n{cluster_state()}"
            assert time.monotonic() < deadline, f"not submitted after 120 s\n{cluster_state()}"
            time.sleep(0.2)
        array_id = jobs[0].split("_")[0]
        requests = slurm_cmd("squeue", "-h", "-r", "-j", array_id, "-o", "%i|%C|%m|%l|%b").split()
    finally:
        cancel([array_id] if array_id else submitit_jobs(sweep))
        proc.kill()
        proc.communicate()
    assert sorted(requests) == [f"{job}|8|16G|4:00:00|N/A" for job in jobs], cluster_state()


def test_the_gpu_preset_asks_slurm_for_a_gpu(slurm, tmp_path: Path):
    """``slurm_gpu`` unmodified: its sbatch script asks for a GPU, 8 CPUs and 32 GB; Slurm refuses it on
    this node, which has no GPU (its GRES are none), and says why."""
    if re.search(r"Gres=\S*gpu", slurm_cmd("scontrol", "show", "node")):
        pytest.skip("this Slurm node has GPUs: the request would be accepted")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm_gpu", f"hydra.launcher.partition={PARTITION}",
           *TINY, f"training.total_timesteps={BATCH}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), text=True, capture_output=True, timeout=120)
    assert proc.returncode != 0 and "Invalid generic resource (gres) specification" in proc.stderr, proc.stderr
    (script,) = (sweep / ".submitit").glob(".submission_file_*.sh")  # submitit keeps what sbatch refused
    lines = script.read_text(encoding="utf-8").splitlines()
    for line in ["#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "#SBATCH --time=240", f"#SBATCH --partition={PARTITION}"]:
        assert line in lines, lines
    assert not any(line.startswith("#SBATCH --array") for line in lines)  # one job: no array


# --- preemption: scancel --signal=USR2 -> requeue under the same id -> resume -> done ----------------

def test_usr2_requeues_the_job_and_it_resumes_on_real_slurm(slurm, tmp_path: Path):
    """A sweep of a short job and a long one (one array); SIGUSR2 to the long one, the array's second
    task: submitit requeues that task alone, and it resumes to the weights of an uninterrupted run."""
    sweep = tmp_path / "sweep"
    job_dir = sweep / "1"
    metrics = job_dir / "metrics.jsonl"
    cmd = [sys.executable, "train.py", *LAUNCHER, *TINY, "training.lr_schedule=constant",
           f"training.total_timesteps={BATCH},{LONG_TOTAL}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    job_id = None
    try:
        deadline = time.monotonic() + 240  # submitted, scheduled, started, 2 updates written
        while not (metrics.is_file() and metrics.read_text(encoding="utf-8").count("\n") >= 2):
            assert proc.poll() is None, f"exited early: {proc.communicate()}\n{cluster_state()}"
            assert time.monotonic() < deadline, f"no 2 updates after 240 s\n{cluster_state()}"
            time.sleep(0.2)
        short_id, job_id = submitit_jobs(sweep)
        assert (short_id.split("_")[1], job_id.split("_")[1]) == ("0", "1")  # one array
        running = slurm_cmd("squeue", "-h", "-j", job_id, "-o", "%T").strip()
        assert running == "RUNNING", cluster_state(job_id)
        # what Slurm does before a time limit (and, with preempt_send_user_signal, on preemption)
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30, env=clean_env())
        try:
            out, err = proc.communicate(timeout=REQUEUE_WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the requeued job did not finish within {REQUEUE_WAIT_S} s\n{cluster_state(job_id)}\n"
                        f"{job_logs(sweep, job_id)}")
    finally:
        if proc.poll() is None:  # something went wrong: leave no job behind on the node
            proc.kill()
            proc.communicate()
            cancel(submitit_jobs(sweep))
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}\n{cluster_state(job_id)}"

    # Slurm's accounting: the first run was requeued, the second (same job id) completed
    states = wait_finished(job_id)
    assert [s for _, s in states] == ["REQUEUED", "COMPLETED"], cluster_state(job_id)
    assert {j for j, _ in states} == {job_id}
    assert [s for _, s in wait_finished(short_id)] == ["COMPLETED"]  # the other task was left alone
    assert submitit_jobs(sweep) == [short_id, job_id]  # requeued, not submitted again

    logs = job_logs(sweep, job_id)
    assert "Caught signal SIGUSR2" in logs, logs
    requeued = re.search(rf"Requeued job {job_id} \((\d+) remaining timeouts\)", logs)
    assert requeued and int(requeued.group(1)) == 20, logs  # the preset's max_num_timeout
    stopped = re.search(r"stopped by signal 12 at global_step (\d+)", logs)
    assert stopped, logs
    assert 2 * BATCH <= int(stopped.group(1)) < LONG_TOTAL
    assert f"resumed from {job_dir / 'checkpoints' / 'last.pt'} at global_step {stopped.group(1)}" in logs, logs
    assert logs.count(f"Starting with JobEnvironment(job_id={job_id},") == 2, logs

    # every step exactly once across the requeue: no gap, no duplicate
    assert steps(job_dir) == list(range(BATCH, LONG_TOTAL + 1, BATCH))
    final = torch.load(job_dir / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert final["global_step"] == LONG_TOTAL
    rows = (sweep / "summary.md").read_text(encoding="utf-8").splitlines()[2:]
    assert len(rows) == 2 and all("| completed |" in row for row in rows), rows

    # it ends where the same run, never interrupted and outside Slurm, ends
    reference = tmp_path / "reference"
    train(*TINY, "training.lr_schedule=constant", f"training.total_timesteps={LONG_TOTAL}",
          f"hydra.run.dir={reference}", timeout=300)
    expected = torch.load(reference / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)["model"]
    assert final["model"].keys() == expected.keys()
    for key in expected:
        assert torch.equal(final["model"][key], expected[key]), key


# --- DD-PPO: one job of two Slurm tasks (gloo) ------------------------------------------------------

def test_two_task_ddppo_job_trains_one_network_in_one_run_dir(slurm, tmp_path: Path):
    """``tasks_per_node=2``: submitit starts two tasks, each a rank of one DD-PPO run (rendezvous from
    submitit's TorchDistributedEnvironment); rank 0 alone writes the run dir."""
    sweep = tmp_path / "sweep"
    try:
        train(*LAUNCHER, *TINY, "hydra.launcher.tasks_per_node=2", "device=cpu", "training.total_timesteps=512",
              "seed=4", f"hydra.sweep.dir={sweep}", timeout=420)
    except BaseException:
        cancel(submitit_jobs(sweep))
        raise
    (job,) = submitit_jobs(sweep)
    wait_finished(job)
    run_dir = sweep / "0"
    assert steps(run_dir) == [256, 512]  # 2 ranks x 8 envs x 16 steps per update
    final = torch.load(run_dir / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert final["world_size"] == 2 and len(final["ranks"]) == 2
    logs = job_logs(sweep, job)
    assert logs.count("run dir:") == 1, logs[-3000:]  # one summary: rank 0's
    result = json.loads((run_dir / "job_result.json").read_text(encoding="utf-8"))
    assert result["status"] == "completed" and result["objective"] is not None
