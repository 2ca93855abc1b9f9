"""The one checkpoint format: save atomically, load with clear errors, rebuild the model.

A checkpoint is a ``torch.save`` dict holding everything needed to continue a run or
to rebuild its network from the file alone:
``format``, ``encoding_version``, ``config`` (the resolved run config), ``model``,
``optimizer``, ``scaler``, ``global_step``, ``update``, ``rng`` (torch, CUDA and update
shuffling generator states), ``env`` (games in progress, opening generator),
``opponent_pool``, ``wandb_run_id``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keisei.config import TrainConfig, from_container
from keisei.model import build_model
from keisei.shogi import ENCODING_VERSION

FORMAT = "keisei-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a Keisei checkpoint; the message names the file."""


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same dir, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "encoding_version": ENCODING_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run dir meaning its ``checkpoints/last.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.pt", p / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{p}: run dir has no checkpoints/last.pt")
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file or run dir")
    return p


def run_dir_of(checkpoint: Path) -> Path:
    """The run dir a resolved checkpoint file belongs to (the layouts ``resolve_checkpoint`` accepts)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint (file or run dir)."""
    p = resolve_checkpoint(path)
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a torch file at all
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a Keisei checkpoint (expected format {FORMAT!r})")
    if data.get("encoding_version") != ENCODING_VERSION:
        raise CheckpointError(f"{p}: written for encoding {data.get('encoding_version')!r}, "
                              f"this Keisei uses {ENCODING_VERSION!r}")
    return data


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without torch.compile's ``_orig_mod.`` prefix, on the CPU."""
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved from a compiled or plain model into a compiled or plain model."""
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    getattr(model, "_orig_mod", model).load_state_dict(state)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The network of a checkpoint, rebuilt from the file alone, in eval mode; and its run config."""
    data = load_checkpoint(path, map_location=device)
    cfg = from_container(data["config"])
    model = build_model(cfg.model)
    load_model_state(model, data["model"])
    return model.to(device).eval(), cfg
