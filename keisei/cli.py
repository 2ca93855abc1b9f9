"""What the Hydra entry points share: turning expected failures into one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf.errors import MissingMandatoryValue

from keisei.checkpoint import CheckpointError
from keisei.config import ConfigError
from keisei.shogi import IllegalMoveError
from keisei.usi_client import EngineError

#: Errors whose message says what to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CheckpointError, EngineError, IllegalMoveError, FileNotFoundError)


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Print ``Error: <message>`` and exit 2 on a user error (``HYDRA_FULL_ERROR=1``: re-raise).

    In a multirun the error is raised instead, so that Hydra marks that job failed and the
    other jobs go on (the sweep summary lists it)."""
    try:
        yield
    except (*USER_ERRORS, MissingMandatoryValue) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
            raise
        if isinstance(exc, MissingMandatoryValue):
            key = exc.full_key or "a key"
            message = f"{key} is required: set it on the command line, e.g. {key}=..."
        else:
            message = str(exc)
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(2)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
