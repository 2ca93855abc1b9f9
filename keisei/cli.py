"""What the Hydra entry points share: turning expected failures into one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from keisei.checkpoint import CheckpointError
from keisei.config import ConfigError
from keisei.players import EngineError
from keisei.shogi import IllegalMoveError

#: Errors whose message says what to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CheckpointError, EngineError, IllegalMoveError, FileNotFoundError)


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Print ``Error: <message>`` and exit 2 on a user error (``HYDRA_FULL_ERROR=1``: re-raise)."""
    try:
        yield
    except USER_ERRORS as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
