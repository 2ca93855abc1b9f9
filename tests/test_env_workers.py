"""WorkerVecEnv: the same games as VecEnv for any worker count, exact resume, and clean shutdown on every path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
from conftest import alive, wait_gone

from keisei.config import EnvConfig
from keisei.env import make_env
from keisei.env.vec_env import STEP_FIELDS, StepResult, VecEnv
from keisei.env.workers import WorkerError, WorkerVecEnv, shard
from keisei.shogi import IllegalMoveError

KWARGS = {"max_plies": 24, "opening_plies": 2}  # short games: many end and restart
REPO = Path(__file__).resolve().parents[1]


def random_actions(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(row)) for row in mask])


def snapshot(out: StepResult) -> dict[str, np.ndarray]:
    return {name: getattr(out, name).copy() for name in STEP_FIELDS}


def assert_same_step(a: dict[str, np.ndarray], b: dict[str, np.ndarray], where: str) -> None:
    done = a["terminated"] | a["truncated"]
    for name in STEP_FIELDS:
        x, y = (a[name][done], b[name][done]) if name == "final_obs" else (a[name], b[name])
        assert np.array_equal(x, y), f"{name} differs at {where}"


def play(env: VecEnv | WorkerVecEnv, steps: int, seed: int) -> tuple[list[dict[str, np.ndarray]], list[tuple]]:
    """Seeded random play from ``env.current``: every step's arrays and the finished games."""
    rng = np.random.default_rng(seed)
    out, trace, finished = env.current, [], []
    for _ in range(steps):
        out = env.step(random_actions(out.legal_mask, rng))
        trace.append(snapshot(out))
    for game in env.pop_finished():
        finished.append((game.start_sfen, game.moves, game.sfen(), game.result, game.termination, game.ply,
                         game.to_kif()))
    return trace, finished


def test_shard_is_contiguous_and_balanced() -> None:
    assert shard(7, 3) == [(0, 2), (2, 5), (5, 7)]
    assert shard(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert shard(5, 1) == [(0, 5)]


def test_one_two_and_three_workers_play_the_same_games() -> None:
    n, steps = 7, 120
    envs = [VecEnv(n, **KWARGS), WorkerVecEnv(n, workers=2, **KWARGS), WorkerVecEnv(n, workers=3, **KWARGS)]
    try:
        starts = [snapshot(env.reset(seed=5)) for env in envs]
        runs = [play(env, steps, seed=1) for env in envs]
        (trace, finished), others = runs[0], runs[1:]
        assert len(finished) >= 20  # games ended and restarted (with random openings) along the way
        for k, (other_trace, other_finished) in enumerate(others, start=2):
            assert_same_step(starts[0], starts[k - 1], f"reset, {k} workers")
            for t, (a, b) in enumerate(zip(trace, other_trace)):
                assert_same_step(a, b, f"step {t}, {k} workers")
            assert other_finished == finished  # same games, same order (step, then env)
        assert envs[1].state_dict() == envs[2].state_dict() == envs[0].state_dict()
        assert [g.moves for g in envs[1].games] == [g.moves for g in envs[0].games]
    finally:
        for env in envs:
            env.close()


def test_exact_resume_across_worker_counts() -> None:
    n = 6
    with WorkerVecEnv(n, workers=2, **KWARGS) as env:
        env.reset(seed=9)
        play(env, 30, seed=2)
        state = env.state_dict()
        expected, expected_finished = play(env, 40, seed=3)
    for make in (lambda: WorkerVecEnv(n, workers=2, **KWARGS), lambda: VecEnv(n, **KWARGS),
                 lambda: WorkerVecEnv(n, workers=3, **KWARGS)):
        with make() as env:
            env.load_state_dict(state)
            trace, finished = play(env, 40, seed=3)
            for t, (a, b) in enumerate(zip(expected, trace)):
                assert_same_step(a, b, f"step {t} after resuming in {type(env).__name__}")
            assert finished == expected_finished


def test_vecenv_state_resumes_in_workers() -> None:
    n = 5
    base = VecEnv(n, **KWARGS)
    base.reset(seed=4)
    play(base, 25, seed=6)
    state = base.state_dict()
    expected, _ = play(base, 30, seed=7)
    with WorkerVecEnv(n, workers=2, **KWARGS) as env:
        first = env.load_state_dict(state)
        assert np.array_equal(first.obs, VecEnv(n, **KWARGS).load_state_dict(state).obs)
        trace, _ = play(env, 30, seed=7)
    for t, (a, b) in enumerate(zip(expected, trace)):
        assert_same_step(a, b, f"step {t}")


def test_bad_actions_are_errors_naming_env_and_position() -> None:
    with WorkerVecEnv(4, workers=2) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(4, dtype=np.int64))
        out = env.reset(seed=0)
        good = int(np.flatnonzero(out.legal_mask[0])[0])
        with pytest.raises(IllegalMoveError, match=r"env 3: action 0 is not a legal move in position lnsgkgsnl/"):
            env.step(np.array([good, good, good, 0]))
        with pytest.raises(IllegalMoveError, match=r"env 1: action 5000"):
            env.step(np.array([good, 5000, good, good]))
        with pytest.raises(ValueError, match="shape"):
            env.step(np.array([good, good]))
        assert all(g.ply == 0 for g in env.games)  # nothing was played; the env still works
        env.step(np.full(4, good))
        assert all(g.ply == 1 for g in env.games)
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.full(4, good))
    with pytest.raises(ValueError, match="workers"):
        WorkerVecEnv(2, workers=3)
    with pytest.raises(ValueError, match="SFEN"):
        WorkerVecEnv(2, workers=2, start_sfen="not a position")


def test_make_env_follows_the_worker_count() -> None:
    env = make_env(EnvConfig(num_envs=4, workers=1))
    assert isinstance(env, VecEnv)
    with make_env(EnvConfig(num_envs=4, workers=2, max_plies=50, opening_plies=3)) as env:
        assert isinstance(env, WorkerVecEnv) and env.workers == 2 and len(env.pids) == 2
        assert (env.max_plies, env.opening_plies) == (50, 3)


def test_a_killed_worker_is_an_error_naming_it() -> None:
    env = WorkerVecEnv(4, workers=2)
    out = env.reset(seed=0)
    actions = np.array([np.flatnonzero(row)[0] for row in out.legal_mask])
    env.step(actions)
    victim, other = env.pids[1], env.pids[0]
    os.kill(victim, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=rf"env worker 1 \(pid {victim}, envs 2\.\.3\) was killed by SIGKILL"):
        env.step(actions)
    assert time.monotonic() - start < 5
    assert not wait_gone([victim, other], 5)  # the env closed itself: no worker left behind
    with pytest.raises(RuntimeError, match="closed"):
        env.step(actions)


def test_close_stops_every_worker_and_is_idempotent() -> None:
    env = WorkerVecEnv(6, workers=3)
    pids = env.pids
    out = env.reset(seed=0)
    assert all(alive(p) for p in pids)
    obs = out.obs.copy()
    env.close()
    env.close()
    assert not wait_gone(pids, 5)
    assert np.array_equal(out.obs, obs)  # the arrays stay readable: they keep their mapping
    with WorkerVecEnv(2, workers=2) as env:
        pids = env.pids
    assert not wait_gone(pids, 5)


def test_an_exception_in_a_with_block_stops_the_workers() -> None:
    with pytest.raises(KeyError), WorkerVecEnv(2, workers=2) as env:
        pids = env.pids
        raise KeyError("boom")
    assert not wait_gone(pids, 5)


CLEAN_EXIT = textwrap.dedent("""
    import numpy as np
    from keisei.env.workers import WorkerVecEnv
    with WorkerVecEnv(4, workers=2) as env:
        print(env._shm.name, flush=True)
        out = env.reset(seed=0)
        out = env.step(np.array([np.flatnonzero(row)[0] for row in out.legal_mask]))
    print(int(out.obs.sum()), flush=True)
""")


def test_the_shared_memory_is_unlinked_once_by_the_parent_without_warnings() -> None:
    """The workers map the block without tracking it, so no resource tracker unlinks it or warns of a
    leak at their exit; the parent unlinks it; the arrays stay readable after close."""
    proc = subprocess.run([sys.executable, "-c", CLEAN_EXIT], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "always"})
    assert proc.returncode == 0, proc.stderr
    for trouble in ("resource_tracker", "leaked", "Exception ignored", "Traceback"):
        assert trouble not in proc.stderr, proc.stderr
    name, total = proc.stdout.split()
    assert int(total) > 0
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name)


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from keisei.env.workers import WorkerVecEnv
    env = WorkerVecEnv(8, workers=2)
    out = env.reset(seed=0)
    print(" ".join(map(str, env.pids)), flush=True)
    rng = np.random.default_rng(0)
    while True:
        out = env.step(np.array([rng.choice(np.flatnonzero(row)) for row in out.legal_mask]))
""")


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False),
                                            (signal.SIGKILL, False)])
def test_a_signalled_parent_leaves_no_orphan_workers(sig: signal.Signals, group: bool) -> None:
    """Ctrl-C (SIGINT to the process group), SIGTERM (to the group, as a scheduler does, or to the
    parent alone) and SIGKILL of the parent: its workers are gone soon after."""
    # SIGINT at its default in the child: a background job of a non-interactive shell (pytest ... &)
    # starts with it ignored, and its children would inherit that.
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        time.sleep(0.2)  # stepping
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        proc.wait(timeout=10)
        assert not wait_gone(pids, 10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
