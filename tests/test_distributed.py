"""DD-PPO over torch.distributed (gloo on this CPU box): real ``torchrun`` launches of ``train.py`` with
2 ranks (a rank killed under ``--max-restarts`` included), and the gradient all-reduce against one
process on the whole batch.

Tiny runs: mlp, 8 envs x 16 steps per rank = 256 env steps per update with 2 ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY as TINY_RUN
from conftest import clean_env

from keisei.config import ConfigError, ModelConfig, ModelName, PPOConfig, TrainingConfig
from keisei.nn.model import build_model
from keisei.nn.policy import Policy
from keisei.shogi import NUM_ACTIONS, NUM_PLANES
from keisei.train.distributed import check_restartable
from keisei.train.optim import build_optimizer
from keisei.train.ppo import Batch, ppo_update

REPO = Path(__file__).resolve().parents[1]
TINY = [*TINY_RUN, "training.lr_schedule=constant"]


def torchrun(cwd: Path, *overrides: str, nproc: int = 2, max_restarts: int = 0) -> subprocess.Popen[str]:
    env = clean_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--max-restarts={max_restarts}", "--standalone", str(REPO / "train.py"), *TINY, *overrides]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def ranks_of(agent: int) -> dict[int, tuple[int, int]]:
    """The worker processes torchrun's agent (``agent``) runs now: {rank: (pid, restart count)}, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            env = dict(v.split("=", 1) for v in (stat.parent / "environ").read_text().split("\0") if "=" in v)
        except (OSError, ValueError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = (int(stat.parent.name), int(env["TORCHELASTIC_RESTART_COUNT"]))
    return found


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid, _ in ranks_of(proc.pid).values():  # torchrun starts each rank in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"did not finish\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")


def ok(proc: subprocess.Popen[str]) -> str:
    out, err = finish(proc)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    return out


def steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["global_step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final(run_dir: Path, name: str = "final.pt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ranks, 1,024 env steps in all (4 updates), launched from an empty dir with Hydra's default run dir."""
    cwd = tmp_path_factory.mktemp("straight")
    ok(torchrun(cwd, "training.total_timesteps=1024"))
    (run_dir,) = [p.parent for p in cwd.glob("outputs/*/*/config.yaml")]
    return run_dir


def test_two_ranks_leave_one_run_dir_with_one_set_of_checkpoints(straight: Path) -> None:
    outputs = straight.parent.parent
    assert [p for p in outputs.glob("*/*") if p.is_dir()] == [straight]  # no per-rank dirs
    assert steps(straight) == [256, 512, 768, 1024]  # total_timesteps counts both ranks' steps
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["final.pt", "last.pt"]
    state = final(straight)
    assert state["global_step"] == 1024 and state["world_size"] == 2 and len(state["ranks"]) == 2
    # The ranks played different games (their own seeds), with one network.
    envs = [rank["env"]["games"] for rank in state["ranks"]]
    assert envs[0] != envs[1]


def test_two_rank_resume_is_exact(straight: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ok(torchrun(tmp_path, "training.total_timesteps=512", f"hydra.run.dir={run_dir}"))
    out = ok(torchrun(tmp_path, "training.total_timesteps=1024", f"hydra.run.dir={run_dir}"))
    assert "1,024 env steps" in out
    assert steps(run_dir) == steps(straight)
    a, b = final(run_dir)["model"], final(straight)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_another_world_size_is_refused(straight: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "train.py", *TINY, "training.total_timesteps=2048", f"resume={straight}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "written by a run of 2 process(es), this run has 1" in proc.stderr and "Traceback" not in proc.stderr


ENGINE = "/usr/games/fairy-stockfish"


@pytest.mark.skipif(not os.access(ENGINE, os.X_OK) and not os.environ.get("CI"),
                    reason=f"{ENGINE} is not installed (apt-get install fairy-stockfish)")
def test_an_inline_evaluation_longer_than_the_collective_timeout_does_not_end_the_run(tmp_path: Path) -> None:
    """Rank 0 evaluates inline against fairy-stockfish thinking 2 s a move (about twice a 20 s collective
    timeout) while rank 1 waits for it; rank 1 used to wait in the next collective and fail there."""
    run_dir = tmp_path / "run"
    ok(torchrun(tmp_path, "training.total_timesteps=512", "training.collective_timeout_minutes=0.33",
                "evaluation.interval_timesteps=512", "evaluation.games=2", "evaluation.max_plies=40",
                "opponent=fairy_stockfish", "opponent.movetime_ms=2000", f"hydra.run.dir={run_dir}"))
    seconds = json.loads((run_dir / "eval" / "step_000000512" / "results.json").read_text())["seconds"]
    assert seconds > 20  # the evaluation outlasted the timeout ...
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows if "global_step" in r] == [256, 512]  # ... and the run went on
    assert [r["eval/global_step"] for r in rows if "eval/global_step" in r] == [512]


def test_sigterm_to_torchrun_stops_both_ranks_with_last_pt_written_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = torchrun(tmp_path, "training.total_timesteps=1e6", f"hydra.run.dir={run_dir}")
    deadline = time.monotonic() + 180
    while not (run_dir / "metrics.jsonl").exists() or len(steps(run_dir)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # the launcher passes it on to both ranks
    _, err = finish(proc, timeout=120)
    assert err.count("checkpoints/last.pt written") == 1, err[-3000:]  # rank 0 alone writes and says so
    last = final(run_dir, "last.pt")
    assert last["global_step"] == steps(run_dir)[-1] and last["world_size"] == 2
    assert not (run_dir / "checkpoints" / "final.pt").exists()
    assert "Traceback" not in err.split("stopped by signal")[0]  # the ranks stopped cleanly


def test_a_rank_killed_mid_run_restarts_the_group_from_last_pt(tmp_path: Path) -> None:
    """torchrun --max-restarts=1: SIGKILL of rank 0 (the one that writes the record) after a checkpoint,
    with a metrics row past it. torchrun stops rank 1 and starts both again; they resume from last.pt,
    the rows past it are superseded, and the run reaches its total with every update once."""
    run_dir, total, interval = tmp_path / "run", 256 * 12, 512  # a checkpoint every 2 updates
    proc = torchrun(tmp_path, f"training.total_timesteps={total}", f"training.checkpoint_interval_timesteps={interval}",
                    f"hydra.run.dir={run_dir}", max_restarts=1)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 180
    # An odd number of updates logged: a row past the checkpoint (the next one is an update away).
    while not (last.exists() and (run_dir / "metrics.jsonl").exists() and len(steps(run_dir)) % 2 == 1):
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)
        time.sleep(0.02)
    ranks = ranks_of(proc.pid)
    assert sorted(ranks) == [0, 1] and all(count == 0 for _, count in ranks.values()), ranks
    os.kill(ranks[0][0], signal.SIGKILL)
    before = steps(run_dir)
    out, err = finish(proc, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"

    assert "exitcode: -9" in err and "torchrun restart 1 of at most 1" in out, (out[-3000:], err[-3000:])
    resumed = {int(s) for s in re.findall(rf"resumed from {run_dir}/checkpoints/last.pt at global_step (\d+)", out)}
    assert len(resumed) == 1, out[-3000:]  # both ranks, from the same checkpoint
    (resumed_at,) = resumed
    assert resumed_at % interval == 0 and before[-1] > resumed_at  # rows past the checkpoint were written...
    assert steps(run_dir) == list(range(256, total + 1, 256))  # ...and superseded: every update once
    state = final(run_dir)
    assert state["global_step"] == total and state["update"] == total // 256 and state["world_size"] == 2


def test_restartable_torchrun_needs_a_fixed_run_dir(tmp_path: Path) -> None:
    """Hydra's default run dir is named after the start time: a restarted group would start over in a
    new one. torchrun --max-restarts refuses it at once, with one error line per start."""
    proc = torchrun(tmp_path, "training.total_timesteps=256", nproc=1, max_restarts=1)
    _, err = finish(proc)
    assert proc.returncode != 0
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert len(errors) == 2 and "torchrun --max-restarts=1: set hydra.run.dir=" in lines[errors[0]], err[-3000:]
    assert not any("Traceback" in line for line in lines[:errors[-1]])  # one line each; torchrun's summary follows
    assert not [p for p in tmp_path.glob("outputs/*/*") if any(p.iterdir())]  # nothing trained, nothing kept


def test_restartable_torchrun_on_several_nodes_needs_its_store_unshared(monkeypatch: pytest.MonkeyPatch) -> None:
    """On several nodes the ranks' restart counts differ (each agent counts its own restarts), so they
    cannot pick keys of their own in torchrun's shared store: such a launch must not share it."""
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    with pytest.raises(ConfigError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        check_restartable()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # what TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 sets
    check_restartable()


def test_game_metrics_count_the_games_of_every_rank(tmp_path: Path) -> None:
    """Games cut at 10 plies: every env finishes a game every 10 steps whatever the policy plays, so 2
    ranks of 8 envs finish as many games per update as one process of 16 envs (they were rank 0's
    alone: half as many)."""
    cut = ["env.max_plies=10", "training.total_timesteps=1024"]
    ok(torchrun(tmp_path, *cut, f"hydra.run.dir={tmp_path / 'two'}"))
    proc = subprocess.run([sys.executable, "train.py", *TINY, *cut, "env.num_envs=16",
                           f"hydra.run.dir={tmp_path / 'one'}"], cwd=REPO, capture_output=True, text=True,
                          env=clean_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def games(run: str) -> list[tuple[int, int, int]]:
        lines = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(x["games/finished"], x["games/finished_total"], x["games/termination_max_plies"]) for x in lines]

    two, one = games("two"), games("one")
    assert len(two) == 4 and two == one
    assert two[-1][1] == 16 * 6  # 16 envs x 64 steps: 6 games cut at 10 plies each


# A rank as train.py runs it: join, build the optimiser (its first use imports torch._dynamo), one
# collective, leave; then how many threads the process has beside the one it started with.
_LEAVE = """
import os, torch
from datetime import timedelta
from keisei.config import TrainingConfig
from keisei.train import distributed
from keisei.train.optim import build_optimizer
threads = lambda: len(os.listdir("/proc/self/task"))
before = threads()
distributed.setup(use_cuda=False, timeout=timedelta(minutes=TrainingConfig().collective_timeout_minutes))
build_optimizer(torch.nn.Linear(3, 2), TrainingConfig())
distributed.all_reduce(1.0)
distributed.wait_for_main()
distributed.shutdown()
print(threads() - before)
"""


def test_leaving_the_group_stops_its_threads(tmp_path: Path) -> None:
    """After ``shutdown`` no gloo thread is left: one left alive into the interpreter's exit dropped a
    tensor there now and then, and the rank aborted ("terminate called without an active exception")
    after a finished run, failing the torchrun launch (the group outlived ``destroy_process_group``
    when torch._dynamo was first imported after it was made)."""
    env = {**clean_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _LEAVE], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == ["0", "0"], outs


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the all-reduced gradient ------------------------------------------------------------------

def _batch(size: int) -> Batch:
    gen = torch.Generator().manual_seed(5)
    obs = torch.randint(0, 2, (size, NUM_PLANES, 9, 9), generator=gen, dtype=torch.uint8)
    mask = torch.rand(size, NUM_ACTIONS, generator=gen) < 0.01
    mask[:, 0] = True
    actions = torch.multinomial(mask.float(), 1, generator=gen).squeeze(1)
    advantages = torch.randn(size, generator=gen)
    return Batch(obs, mask, actions, torch.full((size,), -3.0), torch.zeros(size), advantages, advantages)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=ModelName.mlp, mlp_hidden=16))


CFG = PPOConfig(update_epochs=1, minibatch_size=32, norm_adv=False)
OPTIMISER = TrainingConfig(max_grad_norm=1e9, learning_rate=1e-2)


def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    model, whole = _model(), _batch(64)
    half = Batch(*(getattr(whole, f)[rank * 32:(rank + 1) * 32] for f in Batch.__dataclass_fields__))
    ppo_update(Policy(model), build_optimizer(model, OPTIMISER), half, CFG, OPTIMISER.max_grad_norm,
               torch.Generator().manual_seed(0))
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()


def test_two_ranks_on_halves_equal_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    out = tmp_path / "two.pt"
    mp.spawn(_rank, args=(f"file://{tmp_path / 'store'}", str(out)), nprocs=2, join=True)
    model = _model()
    cfg = PPOConfig(**{**CFG.__dict__, "minibatch_size": 64})
    ppo_update(Policy(model), build_optimizer(model, OPTIMISER), _batch(64), cfg, OPTIMISER.max_grad_norm,
               torch.Generator().manual_seed(0))
    two = torch.load(out, weights_only=True)
    assert any(not torch.equal(two[k], _model().state_dict()[k]) for k in two)  # the step changed something
    for key, value in model.state_dict().items():
        assert torch.allclose(two[key], value, atol=1e-6), key
