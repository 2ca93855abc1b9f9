"""Preemption: turn Slurm's stop signals into a request the training loop honours safely.

Slurm (through submitit) warns a job with SIGUSR2 before its time limit or a preemption;
schedulers and users stop jobs with SIGTERM. While ``StopSignals`` is active, either signal
only records a request: the trainer finishes the update in progress, writes
``checkpoints/last.pt`` and then calls ``forward()``, which hands the signal to the handler
that was installed before (submitit's: on SIGUSR2 checkpoint the job and requeue it; SIGTERM
it ignores, and training goes on) or, when there was none, exits with status 128 + signal
number. The requeued job starts in the same run dir and resumes from ``last.pt``.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopSignals:
    """Context manager recording SIGUSR2 / SIGTERM in ``signum`` instead of dying at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: stop signals are not caught (no safe checkpoint on preemption)")
            return self
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            log.warning("received %s: stopping after the current update", signal.Signals(signum).name)
        self.signum = signum

    def forward(self) -> None:
        """After the checkpoint, let the signal have its effect: the previous handler's (submitit
        requeues the job on SIGUSR2 and exits; it ignores SIGTERM, so training goes on), else exit
        with status 128 + signum. Returns (request cleared) only when the signal is to be ignored."""
        assert self.signum is not None
        signum, previous = self.signum, self._previous.get(self.signum)
        self.signum = None
        if callable(previous):
            previous(signum, None)  # may exit (submitit's requeue); returning means "ignore it"
            log.warning("%s handled by the previous handler: training goes on", signal.Signals(signum).name)
            return
        if previous == signal.SIG_IGN:
            return
        sys.exit(128 + signum)
