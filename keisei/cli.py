"""What the Hydra entry points share: turning expected failures into one clear line."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf.errors import MissingMandatoryValue

from keisei.config import ConfigError
from keisei.data.records import RecordError
from keisei.nn.checkpoint import CheckpointError
from keisei.play.usi_client import EngineError
from keisei.shogi import IllegalMoveError

#: Errors whose message says what to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CheckpointError, EngineError, IllegalMoveError, RecordError, FileNotFoundError)


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Print ``Error: <message>`` and exit 2 on a user error (``HYDRA_FULL_ERROR=1``: re-raise);
    exit 130 without a traceback on Ctrl-C. A run dir the failed launch left with nothing in it
    but Hydra's own record is removed.

    In a multirun the error is raised instead, so that Hydra marks that job failed and the
    other jobs go on (the sweep summary lists it)."""
    try:
        yield
    except KeyboardInterrupt:
        if _in_multirun():
            raise
        _remove_if_empty()
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    except (*USER_ERRORS, MissingMandatoryValue) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
            raise
        _remove_if_empty()
        if isinstance(exc, MissingMandatoryValue):
            key = exc.full_key or "a key"
            message = f"{key} is required: set it on the command line, e.g. {key}=..."
        else:
            message = str(exc)
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(2)


#: What Hydra itself writes into a run dir before the app runs.
_HYDRA_ONLY = {".hydra", "train.log", "evaluate.log"}


def _remove_if_empty() -> None:
    """Remove this launch's output dir when it holds nothing but Hydra's record (a failed launch
    would otherwise leave an empty timestamped dir in outputs/ each time)."""
    if not HydraConfig.initialized():
        return
    out = Path(HydraConfig.get().runtime.output_dir).resolve()
    if out == Path.cwd() or out in Path.cwd().parents:
        return
    if out.is_dir() and {p.name for p in out.iterdir()} <= _HYDRA_ONLY:
        shutil.rmtree(out, ignore_errors=True)


def output_dir() -> Path:
    """This launch's run dir. An empty ``hydra.run.dir`` (or ``hydra.sweep.dir``), as an unset shell
    variable gives, is refused: Hydra would take the current directory and the run would write its
    record and checkpoints among whatever is there."""
    hydra_cfg = HydraConfig.get()
    key, value = ("hydra.sweep.dir", hydra_cfg.sweep.dir) if _in_multirun() else ("hydra.run.dir", hydra_cfg.run.dir)
    if not str(value).strip():
        raise _empty_dir(key)
    return Path(hydra_cfg.runtime.output_dir)


def refuse_empty_output_dir(argv: Sequence[str]) -> None:
    """Exit 2 with one line when a command-line override sets ``hydra.run.dir`` or ``hydra.sweep.dir``
    to nothing. Checked before Hydra starts: a multirun creates its sweep dir, here the current
    directory, and fills it with its jobs' dirs before a job sees its config (``output_dir`` checks
    the composed config too, where an empty dir may come from a config file)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key in ("hydra.run.dir", "hydra.sweep.dir") and not value.strip().strip("'\"").strip():
            print(f"Error: {_empty_dir(key)}", file=sys.stderr)
            sys.exit(2)


def _empty_dir(key: str) -> ConfigError:
    return ConfigError(f"{key} is empty: give the run a directory, e.g. {key}=outputs/my_run")


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
