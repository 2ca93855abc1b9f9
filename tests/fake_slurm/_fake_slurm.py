"""A fake Slurm cluster on one machine, for tests: ``sbatch``, ``srun``, ``sacct``, ``squeue``,
``scontrol`` and ``scancel`` (the executables next to this file) share this module.

Everything lives in the directory named by the environment variable ``FAKE_SLURM_DIR``:

- ``calls.jsonl``: one JSON object per call of any command (``cmd``, ``argv``, and for
  ``sbatch`` the submitted script's path, its text and the job id it got);
- ``counter``: the next job id;
- ``scripts/<job id>.sh``: a copy of each submitted batch script (submitit moves the original);
- ``tasks/<task>.json``: one record per task (``1000`` for a plain job, ``1000_0``,
  ``1000_1``... for an array): state, exit code, pids, number of requeues.

``sbatch`` starts one detached runner per task (``python _fake_slurm.py run <task>``) that runs
the script with bash and the ``SLURM_*`` variables a one-node, one-task job gets, records the
task ``RUNNING`` then ``COMPLETED``/``FAILED`` by exit code, and runs it again, in the same
environment, when ``scontrol requeue`` asked for it while it ran.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIRST_JOB_ID = 1000
FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


def state_dir() -> Path:
    try:
        d = Path(os.environ["FAKE_SLURM_DIR"])
    except KeyError:
        sys.exit("fake slurm: set FAKE_SLURM_DIR to a directory for its state")
    (d / "tasks").mkdir(parents=True, exist_ok=True)
    (d / "scripts").mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def locked(d: Path) -> Iterator[None]:
    with open(d / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record_call(d: Path, cmd: str, argv: list[str], **extra: Any) -> None:
    line = json.dumps({"cmd": cmd, "argv": argv, "time": time.time(), "pid": os.getpid(), **extra})
    with locked(d), open(d / "calls.jsonl", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def task_path(d: Path, key: str) -> Path:
    return d / "tasks" / f"{key}.json"


def read_task(d: Path, key: str) -> dict[str, Any]:
    return json.loads(task_path(d, key).read_text(encoding="utf-8"))


def update_task(d: Path, name: str, /, **changes: Any) -> dict[str, Any]:
    with locked(d):
        path = task_path(d, name)
        task = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        task.update(changes)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(task), encoding="utf-8")
        os.replace(tmp, path)
    return task


def all_tasks(d: Path) -> list[dict[str, Any]]:
    tasks = []
    for path in sorted((d / "tasks").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            tasks.append(json.loads(path.read_text(encoding="utf-8")))
    return tasks


def select(d: Path, ids: list[str]) -> list[dict[str, Any]]:
    """Tasks named by ``ids``: ``1000`` is a plain job or every task of array 1000; ``1000_1`` one task."""
    wanted = {i for arg in ids for i in arg.split(",") if i}
    return [t for t in all_tasks(d) if t["key"] in wanted or str(t["job_id"]) in wanted]


# --- sbatch ----------------------------------------------------------------------------------

def sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?\s*$", line)
        if m:
            options[m.group(1)] = (m.group(2) or "").strip().strip("'\"")
    return options


def array_indices(spec: str) -> list[int]:
    """``0-3%2`` -> [0, 1, 2, 3]; ``0,2,5`` -> [0, 2, 5] (the ``%`` throttle is ignored: all run)."""
    indices = []
    for part in spec.split("%")[0].split(","):
        low, _, high = part.partition("-")
        indices.extend(range(int(low), int(high or low) + 1))
    return indices


def sbatch(argv: list[str]) -> int:
    d = state_dir()
    if not argv or argv[-1].startswith("-"):
        print("sbatch: error: fake sbatch needs a batch script", file=sys.stderr)
        return 1
    script_path = Path(argv[-1])
    text = script_path.read_text(encoding="utf-8")
    options = sbatch_options(text)
    indices = array_indices(options["array"]) if "array" in options else None
    with locked(d):
        counter = d / "counter"
        job_id = int(counter.read_text()) if counter.exists() else FIRST_JOB_ID
        counter.write_text(str(job_id + max(1, len(indices or ()))))
    copy = d / "scripts" / f"{job_id}.sh"
    copy.write_text(text, encoding="utf-8")
    record_call(d, "sbatch", argv, script_path=str(script_path), script=text, job_id=str(job_id),
                array=indices)
    for n, index in enumerate(indices if indices is not None else [None]):
        key = str(job_id) if index is None else f"{job_id}_{index}"
        env = {"SLURM_JOB_ID": str(job_id + n), "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
               "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost",
               "SLURM_SUBMIT_DIR": os.getcwd()}
        if index is not None:
            env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(index))
        update_task(d, key, key=key, job_id=str(job_id), index=index, state="PENDING", script=str(copy),
                    options=options, env=env, cwd=os.getcwd(), requeues=0, exit_code=None, runs=0)
        runner = [sys.executable, str(Path(__file__).resolve()), "run", key]
        with open(d / f"runner_{key}.log", "a") as log:
            # detached: sbatch returns at once, and submitit reads sbatch's output to its end
            proc = subprocess.Popen(runner, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        update_task(d, key, runner_pid=proc.pid)
    print(f"Submitted batch job {job_id}")
    return 0


def expand(pattern: str, env: dict[str, str]) -> str:
    """Slurm's filename patterns: %j job id, %A array job id, %a array index, %t task rank, %% a %."""
    subs = {"j": env.get("SLURM_JOB_ID", ""), "A": env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "")),
            "a": env.get("SLURM_ARRAY_TASK_ID", ""), "t": env.get("SLURM_PROCID", "0"), "%": "%"}
    return re.sub(r"%([jAat%])", lambda m: subs[m.group(1)], pattern)


def run_task(key: str) -> int:
    """The runner of one task: run the script, again after each requeue, then record the outcome."""
    d = state_dir()
    task = read_task(d, key)
    env = {**os.environ, **task["env"], "FAKE_SLURM_TASK": key}
    out = expand(task["options"].get("output", "slurm-%j.out"), env)
    err = expand(task["options"].get("error", task["options"].get("output", "slurm-%j.out")), env)
    for path in (out, err):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(out, "a") as stdout, open(err, "a") as stderr:
            proc = subprocess.Popen(["bash", task["script"]], cwd=task["cwd"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=stderr, start_new_session=True)
            task = update_task(d, key, state="RUNNING", batch_pid=proc.pid, runs=task["runs"] + 1)
            code = proc.wait()
        task = read_task(d, key)
        if task.get("cancel"):
            update_task(d, key, state="CANCELLED", exit_code=code)
            return 0
        if task.get("requeue"):  # scontrol requeue while it ran: run it again
            task = update_task(d, key, requeue=False, requeues=task["requeues"] + 1, state="REQUEUED",
                               last_exit_code=code)
            continue
        update_task(d, key, state="COMPLETED" if code == 0 else "FAILED", exit_code=code)
        return 0


# --- srun ------------------------------------------------------------------------------------

#: srun options that take a value as the next argument (the others are flags, or ``--opt=value``)
SRUN_VALUE_OPTIONS = {"-o", "--output", "-e", "--error", "-n", "--ntasks", "-N", "--nodes", "-c", "--cpus-per-task",
                      "-J", "--job-name", "-p", "--partition", "-t", "--time", "--mem", "--gpus", "-G",
                      "--gpus-per-node", "--gres", "--ntasks-per-node", "--cpu-bind", "--mpi", "-w", "--nodelist",
                      "--export", "--signal", "--open-mode", "-i", "--input", "-D", "--chdir"}


def srun(argv: list[str]) -> int:
    d = state_dir()
    record_call(d, "srun", argv, task=os.environ.get("FAKE_SLURM_TASK"))
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            options[name] = value
        elif arg in SRUN_VALUE_OPTIONS:
            options[arg] = argv[i + 1]
            i += 1
        else:
            options[arg] = ""
        i += 1
    command = argv[i:]
    if not command:
        print("srun: fatal: No command given to execute.", file=sys.stderr)
        return 1
    env = dict(os.environ)
    out = options.get("--output", options.get("-o"))
    err = options.get("--error", options.get("-e"))
    if out:
        fd = os.open(expand(out, env), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        if not err:
            os.dup2(fd, 2)
    if err:
        fd = os.open(expand(err, env), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
    key = os.environ.get("FAKE_SLURM_TASK")
    if key:  # this process becomes the task: the one Slurm signals
        update_task(d, key, task_pid=os.getpid())
    os.execvp(command[0], command)
    return 1  # not reached


# --- queries and control -----------------------------------------------------------------------

def sacct(argv: list[str]) -> int:
    d = state_dir()
    record_call(d, "sacct", argv)
    fields, ids, i = ["JobID", "JobName", "State", "ExitCode"], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-o", "--format"):
            fields, i = argv[i + 1].split(","), i + 1
        elif arg.startswith("--format="):
            fields = arg.split("=", 1)[1].split(",")
        elif arg in ("-j", "--jobs"):
            ids.append(argv[i + 1])
            i += 1
        elif arg.startswith("--jobs="):
            ids.append(arg.split("=", 1)[1])
        i += 1
    tasks = select(d, ids) if ids else all_tasks(d)
    print("|".join(fields))
    for t in tasks:
        code = t.get("exit_code")
        values = {"JobID": t["key"], "State": t["state"], "NodeList": "localhost", "JobName": "fake",
                  "ExitCode": f"{code if code is not None else 0}:0"}
        print("|".join(values.get(f, "") for f in fields))
    return 0


def squeue(argv: list[str]) -> int:
    d = state_dir()
    record_call(d, "squeue", argv)
    print("JOBID STATE NODELIST")
    for t in all_tasks(d):
        if t["state"] not in FINISHED:
            print(f"{t['key']} {t['state']} localhost")
    return 0


def scontrol(argv: list[str]) -> int:
    d = state_dir()
    record_call(d, "scontrol", argv)
    if len(argv) >= 2 and argv[0] == "requeue":
        tasks = select(d, argv[1:])
        if not tasks:
            print(f"scontrol: error: Invalid job id specified for job {' '.join(argv[1:])}", file=sys.stderr)
            return 1
        for t in tasks:
            update_task(d, t["key"], requeue=True, state="REQUEUED")
        return 0
    print(f"scontrol: fake: unsupported command {argv}", file=sys.stderr)
    return 1


def scancel(argv: list[str]) -> int:
    d = state_dir()
    record_call(d, "scancel", argv)
    sig, ids, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-s", "--signal"):
            sig, i = argv[i + 1], i + 1
        elif arg.startswith("--signal="):
            sig = arg.split("=", 1)[1]
        elif not arg.startswith("-"):
            ids.append(arg)
        i += 1
    tasks = select(d, ids)
    if not tasks:
        print(f"scancel: error: Invalid job id {' '.join(ids)}", file=sys.stderr)
        return 1
    for t in tasks:
        if t["state"] in FINISHED:
            continue
        if sig is not None:  # a signal to the task, which goes on running
            name = sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()
            pid = t.get("task_pid")
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.Signals[name])
            continue
        update_task(d, t["key"], cancel=True)
        pid = t.get("batch_pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    return 0


COMMANDS = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "squeue": squeue, "scontrol": scontrol,
            "scancel": scancel}


def main(name: str, argv: list[str]) -> int:
    return COMMANDS[name](argv)


if __name__ == "__main__":  # the runner of one task, started by sbatch
    if sys.argv[1:2] == ["run"]:
        sys.exit(run_task(sys.argv[2]))
    sys.exit(main(sys.argv[1], sys.argv[2:]))
