"""``WorkerVecEnv``: the games of a ``VecEnv`` sharded over worker processes, one core each.

``WorkerVecEnv(num_envs, workers=K, ...)`` has the interface of ``keisei.env.VecEnv``
(``reset``, ``step``, ``current``, ``state_dict``, ``load_state_dict``, ``pop_finished``) and
returns the same ``StepResult``; ``keisei.env.make_env(cfg)`` picks one of the two from ``env.workers``.

Design:

* Shared memory. One POSIX shared-memory block holds every ``StepResult`` array for all
  ``num_envs`` envs, and the actions. Worker ``w`` runs a plain ``VecEnv`` over the envs
  ``lo_w:hi_w`` whose output buffers are the rows ``lo_w:hi_w`` of those arrays, so the
  observations, masks and flags go straight from the encoder into the arrays the parent's
  ``StepResult`` views: nothing is copied or pickled per step. The block's name is unlinked by the
  parent, and by the parent only, as soon as the workers have mapped it, so no crash can leak it
  (a worker takes its mapping out of its own resource tracker). The arrays hold the mapping: it
  is closed once no array of it is left.
* Messages. Each worker has a socket pair to the parent; a step is the parent writing the
  actions into shared memory, sending ``("step",)`` to every worker and waiting for each
  ``("ok", None)``. State, finished games and errors travel as small pickled messages.
* Workers are started once, as ``python -c`` subprocesses (not ``multiprocessing``: the
  trainer's ``__main__`` is not imported again, and no file descriptor but its own socket is
  inherited). They ignore SIGINT and SIGTERM while the parent lives (Ctrl-C and a scheduler's
  SIGTERM reach the whole process group: the trainer decides when to stop, and still needs its
  workers for the last checkpoint) and exit when the parent closes them, when their socket
  reaches end-of-file (the parent died, even by SIGKILL), or when they find themselves
  orphaned. The parent closes them on ``close()``, on leaving a ``with`` block, on an
  exception or KeyboardInterrupt inside a call, when collected, and at interpreter exit.
* Failures. Every wait is bounded (``timeout``) and watches the worker's socket, so a worker
  that dies makes the call raise ``WorkerError`` naming it (index, pid, envs, exit code or
  signal) at once; one that hangs, after ``timeout`` seconds. The env is then closed.
* Determinism. Openings are keyed by (seed, global env index, game number) in ``VecEnv``, so
  any number of workers plays the same games as one ``VecEnv`` for the same actions;
  ``state_dict`` gathers the workers' states into exactly the ``VecEnv`` format (a checkpoint
  resumes with any worker count) and ``pop_finished`` orders games by (step, env index) as
  ``VecEnv`` does.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import weakref
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from keisei.env.vec_env import STEP_FIELDS, StepResult, VecEnv, check_actions, new_seed, upgrade_state
from keisei.shogi import MAX_PLIES, Game

_ALIGN = 4096  # each array starts on its own page: no two workers share a cache line at a boundary of arrays


class WorkerError(RuntimeError):
    """An env worker died, hung or failed; the message names it."""


def shard(num_envs: int, workers: int) -> list[tuple[int, int]]:
    """The (start, stop) env range of each worker: contiguous, sizes differing by at most one."""
    bounds = np.linspace(0, num_envs, workers + 1).round().astype(int).tolist()
    return list(itertools.pairwise(bounds))


def _layout(n: int) -> tuple[dict[str, tuple[int, tuple[int, ...], Any]], int]:
    """Offset, shape and dtype of each shared array for ``n`` envs (the StepResult fields and
    ``actions``), and the block's size."""
    fields = {name: ((n, *shape), dtype) for name, (shape, dtype) in STEP_FIELDS.items()}
    fields["actions"] = ((n,), np.int64)
    layout, offset = {}, 0
    for name, (shape, dtype) in fields.items():
        layout[name] = (offset, shape, dtype)
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        offset += -(-size // _ALIGN) * _ALIGN
    return layout, offset


def _views(buffer: Any, layout: dict[str, tuple[int, tuple[int, ...], Any]]) -> dict[str, np.ndarray]:
    """The arrays of ``layout`` in ``buffer``. Each holds the buffer: closing the shared memory under a
    live array raises ``BufferError`` instead of leaving the array pointing at unmapped memory."""
    block = np.frombuffer(buffer, dtype=np.uint8)
    return {name: np.ndarray(shape, dtype=dtype, buffer=block, offset=offset)
            for name, (offset, shape, dtype) in layout.items()}


def _untrack(block: shared_memory.SharedMemory) -> None:
    """Take ``block`` out of this process's resource tracker, which would otherwise unlink it (and warn
    of a leak) when this process exits. Python < 3.13 registers every block a process maps, created
    or attached; its tracker knows the block by its POSIX name, ``_name``."""
    resource_tracker.unregister(block._name, "shared_memory")


def _attach(name: str) -> shared_memory.SharedMemory:
    """Map the block ``name`` that another process created and will unlink: untracked here."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, track=False)
    block = shared_memory.SharedMemory(name)
    _untrack(block)
    return block


# --- the parent side ------------------------------------------------------------------------

_LIVE: weakref.WeakSet[WorkerVecEnv] = weakref.WeakSet()
_MAPPED: list[shared_memory.SharedMemory] = []  # blocks with live arrays: kept mapped (a worker's: for its life)


def _unmap(block: shared_memory.SharedMemory | None = None) -> None:
    """Close ``block`` and the blocks kept before, each once no array of it is left; the others stay
    in ``_MAPPED`` (mapped) until a later call."""
    if block is not None:
        _MAPPED.append(block)
    for kept in list(_MAPPED):
        with contextlib.suppress(BufferError):
            kept.close()
            _MAPPED.remove(kept)


@atexit.register
def _close_all() -> None:
    for env in list(_LIVE):
        env.close()
    _unmap()


_BOOT = """\
import sys
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
init = conn.recv()
sys.path[:] = init["sys_path"]
from keisei.env.workers import serve
serve(conn, init)
"""


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, index: int, lo: int, hi: int, proc: subprocess.Popen, conn: Connection) -> None:
        self.index, self.lo, self.hi, self.proc, self.conn = index, lo, hi, proc, conn

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self) -> str:
        return f"env worker {self.index} (pid {self.pid}, envs {self.lo}..{self.hi - 1})"


class WorkerVecEnv:
    """``num_envs`` games stepped by ``workers`` processes; the interface of ``VecEnv``.

    Args:
        num_envs, max_plies, declaration, opening_plies, start_sfen, keep_finished: as ``VecEnv``.
        workers: the number of processes (1..num_envs); envs are split into contiguous slices.
        timeout: seconds a call waits for a worker before it counts as hung (a step takes milliseconds;
            ``load_state_dict`` replays every game's moves).

    ``games`` is a snapshot rebuilt from the workers' state on each access (slow: for tests and
    debugging); ``close()`` stops the workers (also done by ``with``, on errors and at exit).
    """

    def __init__(self, num_envs: int, *, workers: int, max_plies: int = MAX_PLIES, declaration: bool = True,
                 opening_plies: int = 0, start_sfen: str | None = None, keep_finished: int = 1024,
                 timeout: float = 300.0) -> None:
        if not 1 <= workers <= num_envs:
            raise ValueError(f"workers must be in 1..num_envs ({num_envs}), got {workers}")
        kwargs = {"max_plies": max_plies, "declaration": declaration, "opening_plies": opening_plies,
                  "start_sfen": start_sfen, "keep_finished": keep_finished}
        VecEnv(1, **kwargs)  # the same argument checks and messages, here and now
        self.num_envs = num_envs
        self.workers = workers
        self.max_plies, self.declaration, self.opening_plies = max_plies, declaration, opening_plies
        self.start_sfen, self.keep_finished, self.timeout = start_sfen, keep_finished, timeout
        self._closed = False
        self._ready = False  # every worker has mapped the shared block (and its name is unlinked)
        self._stepped = False  # reset or load_state_dict has been called
        self._workers: list[_Worker] = []
        layout, size = _layout(num_envs)
        self._shm: shared_memory.SharedMemory | None = shared_memory.SharedMemory(create=True, size=size)
        try:
            arrays = _views(self._shm.buf, layout)
            self._actions = arrays.pop("actions")
            self._result = StepResult(**arrays)
            self._start(layout, kwargs)
        except BaseException:
            self.close()
            raise
        _LIVE.add(self)

    def _start(self, layout: dict[str, Any], kwargs: dict[str, Any]) -> None:
        assert self._shm is not None
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for index, (lo, hi) in enumerate(shard(self.num_envs, self.workers)):
            parent_end, child_end = socket.socketpair()
            with parent_end, child_end:
                proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(child_end.fileno())],
                                        pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, env=env)
                conn = Connection(parent_end.detach())
            worker = _Worker(index, lo, hi, proc, conn)
            self._workers.append(worker)
            self._send(worker, {"sys_path": list(sys.path), "shm": self._shm.name, "layout": layout, "lo": lo,
                                "hi": hi, "kwargs": kwargs, "parent": os.getpid()})
        for worker in self._workers:
            self._receive(worker)  # "ready": the block is mapped
        self._shm.unlink()  # from now on only the mappings keep it: nothing can leak
        self._ready = True

    # --- the VecEnv interface ---------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> StepResult:
        """Start every game afresh; ``seed`` as ``VecEnv.reset`` (None: a fresh random seed)."""
        self._all(("reset", new_seed() if seed is None else int(seed)))
        self._stepped = True
        return self._result

    def step(self, actions: np.ndarray | list[int]) -> StepResult:
        """Play one action label in every game; see ``StepResult``."""
        self._check_open()
        if not self._stepped:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.num_envs, self._result.legal_mask, self._sfen)
        self._actions[:] = actions
        self._all(("step",))
        return self._result

    @property
    def current(self) -> StepResult:
        """What the last ``reset``, ``step`` or ``load_state_dict`` returned (the current positions)."""
        return self._result

    def state_dict(self) -> dict[str, Any]:
        """The ``VecEnv.state_dict`` of all the envs, gathered from the workers."""
        parts = self._all(("state",))
        return {"games": [g for part in parts for g in part["games"]], "seed": parts[0]["seed"],
                "game_counts": [c for part in parts for c in part["game_counts"]]}

    def load_state_dict(self, state: dict[str, Any]) -> StepResult:
        """Restore a ``VecEnv``/``WorkerVecEnv`` state of ``num_envs`` games (any worker count saved it)."""
        self._check_open()
        state = upgrade_state(state, self.num_envs)
        self._all([("load", {"games": state["games"][w.lo:w.hi], "seed": state["seed"],
                             "game_counts": state["game_counts"][w.lo:w.hi]}) for w in self._workers])
        self._stepped = True
        return self._result

    def pop_finished(self) -> list[Game]:
        """The games that ended since the last call, oldest first (by step, then env), as ``VecEnv``'s."""
        records = sorted((r for part in self._all(("finished",)) for r in part), key=lambda r: (r[0], r[1]))
        kept = records[max(0, len(records) - self.keep_finished):]
        return [Game.from_finished_state(record) for _, _, record in kept]

    @property
    def games(self) -> list[Game]:
        """The games in progress, rebuilt from the workers' state (a snapshot; slow)."""
        return [Game.replay(start, moves, max_plies=self.max_plies, declaration=self.declaration)
                for start, moves in self.state_dict()["games"]]

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [w.pid for w in self._workers]

    def close(self) -> None:
        """Stop the workers (a "close" message, then SIGKILL after 5 s) and release the shared memory.
        Idempotent; the arrays of ``current`` stay readable while referenced (the memory is unmapped
        when a later ``close``, or the exit, finds none left)."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(("close",))
        deadline = time.monotonic() + 5.0
        for worker in self._workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            worker.conn.close()
        if self._shm is not None:
            shm, self._shm = self._shm, None
            if not self._ready:
                try:
                    shm.unlink()
                except FileNotFoundError:  # a worker's tracker unlinked it (the worker died while attaching)
                    _untrack(shm)
            _unmap(shm)  # now, or once the arrays of ``current`` are gone

    def __enter__(self) -> WorkerVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # --- messaging ----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this WorkerVecEnv is closed")

    def _all(self, message: tuple | list[tuple], workers: list[_Worker] | None = None) -> list[Any]:
        """Send a message to every worker (or ``message[i]`` to worker i), then collect every answer.
        Any failure, or an interruption between question and answer, closes the env."""
        self._check_open()
        workers = self._workers if workers is None else workers
        try:
            for i, worker in enumerate(workers):
                self._send(worker, message[i] if isinstance(message, list) else message)
            return [self._receive(worker) for worker in workers]
        except BaseException:
            self.close()
            raise

    def _sfen(self, i: int) -> str:
        """The position of env ``i`` (for error messages)."""
        worker = next(w for w in self._workers if w.lo <= i < w.hi)
        return self._all(("sfen", i - worker.lo), [worker])[0]

    def _send(self, worker: _Worker, message: Any) -> None:
        try:
            worker.conn.send(message)
        except OSError:
            raise self._died(worker) from None

    def _receive(self, worker: _Worker) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if worker.conn.poll(max(0.0, min(1.0, deadline - time.monotonic()))):
                    kind, payload = worker.conn.recv()
                    break
            except (EOFError, OSError):
                raise self._died(worker) from None
            if worker.proc.poll() is not None:
                raise self._died(worker)
            if time.monotonic() >= deadline:
                raise WorkerError(f"{worker.describe()} gave no answer in {self.timeout:g} s")
        if kind == "error":
            raise WorkerError(f"{worker.describe()} failed:\n{payload}")
        return payload

    def _died(self, worker: _Worker) -> WorkerError:
        try:
            code = worker.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return WorkerError(f"{worker.describe()} closed its connection but is still running")
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return WorkerError(f"{worker.describe()} {how}")


# --- the worker side -----------------------------------------------------------------------------

def serve(conn: Connection, init: dict[str, Any]) -> None:
    """A worker's life: map the shared block, run a ``VecEnv`` over its slice, answer the parent until
    it says "close" or is gone."""
    parent = init["parent"]
    _ignore_stop_signals(parent)
    block = _attach(init["shm"])
    _MAPPED.append(block)  # mapped for the worker's life (the env's arrays are views of it)
    server = _Server(block.buf, init)
    conn.send(("ok", "ready"))
    while (message := _next_message(conn, parent)) is not None and message[0] != "close":
        try:
            reply = ("ok", server.answer(*message))
        except Exception:
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:
            return


def _ignore_stop_signals(parent: int) -> None:
    """Ignore SIGINT, and SIGTERM while ``parent`` is this process's parent (an orphan exits on it)."""

    def stop_unless_parent(signum: int, frame: Any) -> None:
        if os.getppid() != parent:
            sys.exit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop_unless_parent)


def _next_message(conn: Connection, parent: int) -> tuple | None:
    """The parent's next message, or None once it is gone (end of file, or this worker is orphaned)."""
    try:
        while not conn.poll(1.0):
            if os.getppid() != parent:
                return None
        return conn.recv()
    except (EOFError, OSError):
        return None


class _Server:
    """A worker's ``VecEnv`` over the envs ``lo:hi``, writing into the rows ``lo:hi`` of the shared
    arrays, and its answers to the parent's commands."""

    def __init__(self, buffer: Any, init: dict[str, Any]) -> None:
        arrays = _views(buffer, init["layout"])
        lo, hi = init["lo"], init["hi"]
        self.lo = lo
        self.actions = arrays.pop("actions")[lo:hi]
        self.env = VecEnv(hi - lo, env_offset=lo, buffers=StepResult(**arrays).rows(lo, hi), **init["kwargs"])
        self.finished: list[tuple] = []  # (step, global env index, record), the newest ``keep``
        self.keep, self.steps = init["kwargs"]["keep_finished"], 0

    def answer(self, command: str, *args: Any) -> Any:
        """The reply to one command of ``WorkerVecEnv`` (``close`` is the caller's)."""
        if command == "step":
            self._step()
        elif command == "reset":
            self.env.reset(args[0])
        elif command == "state":
            return self.env.state_dict()
        elif command == "load":
            self.env.load_state_dict(args[0])
        elif command == "finished":
            finished, self.finished = self.finished, []
            return finished
        elif command == "sfen":
            return self.env.games[args[0]].sfen()
        else:
            raise ValueError(f"unknown command {command!r}")
        return None

    def _step(self) -> None:
        """Play the actions in shared memory; keep the records of the games that ended."""
        out = self.env.step(self.actions)
        self.steps += 1
        done = np.flatnonzero(out.terminated | out.truncated)
        if len(done):
            self.finished += [(self.steps, self.lo + int(j), g.finished_state())
                              for j, g in zip(done, self.env.pop_finished())]
            del self.finished[:max(0, len(self.finished) - self.keep)]

