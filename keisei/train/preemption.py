"""Stopping safely: turn stop signals into a request the training loop honours between updates.

Slurm warns a job with a signal before its time limit (``--signal``: SIGUSR2 as submitit asks)
and on preemption (SIGTERM, or the ``--signal`` one with ``preempt_send_user_signal``);
schedulers and users stop jobs with SIGTERM, and people at a terminal press Ctrl-C (SIGINT).
While ``StopSignals`` is active, any of them only records a request: the trainer finishes the
update in progress, writes ``checkpoints/last.pt`` and then calls ``forward()``, which hands
the signal to the handler that was installed before (submitit's: on SIGUSR2 checkpoint the job
and requeue it; SIGTERM it ignores, and training goes on) or, when there was none, exits with
status 128 + signal number. The requeued job starts in the same run dir and resumes from
``last.pt``. A second Ctrl-C stops at once (``KeyboardInterrupt``); checkpoints are written
atomically, so the last one written stays intact.

A process that starts with SIGINT ignored keeps it ignored: a shell without job control (a script,
``nohup python train.py ... &`` in one, some CI runners) ignores SIGINT in its background jobs so that
the Ctrl-C meant for its foreground command does not stop them. Such a run says so at the start; SIGTERM
stops it, with ``last.pt`` written, as Ctrl-C would have.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager recording SIGUSR2 / SIGTERM / SIGINT in ``signum`` instead of dying at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._interrupting = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: stop signals are not caught (no safe checkpoint on preemption)")
            return self
        for sig in STOP_SIGNALS:
            if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                log.info("SIGINT is ignored (as a shell without job control has it for its background jobs): "
                         "Ctrl-C does not stop this run; SIGTERM (kill %d) stops it after the current update, "
                         "with checkpoints/last.pt written", os.getpid())
                continue
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            if self.signum == signal.SIGINT:  # the second Ctrl-C: stop now
                raise KeyboardInterrupt
            print("\nCtrl-C: stopping after the current update and writing checkpoints/last.pt "
                  "(Ctrl-C again to stop at once; the last checkpoint written stays)", file=sys.stderr, flush=True)
        elif self.signum is None:
            log.warning("received %s: stopping after the current update", signal.Signals(signum).name)
        self.signum = signum
        if self._interrupting:
            self._interrupting = False  # once: what handles the interruption runs undisturbed
            raise KeyboardInterrupt

    @contextmanager
    def interrupting(self) -> Iterator[None]:
        """Within, a stop signal is also a ``KeyboardInterrupt`` where the code is: work that may outlast
        Slurm's warning time (a periodic evaluation) ends at once, and the update can still checkpoint."""
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False

    def forward(self) -> None:
        """After the checkpoint, let the signal have its effect: the previous handler's (submitit
        requeues the job on SIGUSR2 and exits; it ignores SIGTERM, so training goes on), else exit
        with status 128 + signum (Ctrl-C: 130, no traceback). Returns (request cleared) only when
        the signal is to be ignored."""
        assert self.signum is not None
        signum, previous = self.signum, self._previous.get(self.signum)
        self.signum = None
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # already stopping: a late Ctrl-C must not cut the exit
            sys.exit(128 + signum)
        if callable(previous):
            previous(signum, None)  # may exit (submitit's requeue); returning means "ignore it"
            log.warning("%s handled by the previous handler: training goes on", signal.Signals(signum).name)
            return
        if previous == signal.SIG_IGN:
            return
        sys.exit(128 + signum)
