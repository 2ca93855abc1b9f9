"""The one checkpoint format: save atomically, load with clear errors, rebuild the model.

A checkpoint is a ``torch.save`` dict holding everything needed to continue a run or
to rebuild its network from the file alone:
``format``, ``encoding_version``, ``config`` (the resolved run config), ``model``,
``optimizer``, ``scaler``, ``global_step``, ``update``, ``rng`` (torch, CUDA and update
shuffling generator states), ``env`` (games in progress, opening seeds), ``opponent_pool``
(snapshots, each game's opponent), ``wandb_run_id``, ``games_total``, ``objective``,
``eval_win_rate``, ``world_size``, for a distributed run ``ranks`` (each rank's ``rng``,
``env`` and ``opponent_pool``) and, for a run started from ``training.init_checkpoint``,
``init_model`` (the weights it started from); see ``keisei.train.state``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keisei.config import TrainConfig, from_container, to_container
from keisei.nn.model import build_model
from keisei.shogi import ENCODING_VERSION

FORMAT = "keisei-checkpoint-v2"
#: Older formats that are still read: v1 named ``model.hidden`` and ``training.checkpoint_interval``
#: (v2: ``model.value_hidden`` / ``model.mlp_hidden`` and ``training.checkpoint_interval_timesteps``).
_V1 = "keisei-checkpoint-v1"


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


_TORCH_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # the pre-1.6 format: a pickled magic number


def _unreadable(p: Path, exc: Exception) -> str:
    """What a file that ``torch.load`` refused is not, in one short line naming it.

    Decided from the file's first bytes, not from PyTorch's message, which can run to a dozen
    lines and advises retrying with ``weights_only=False``: unsafe for a file of unknown origin."""
    try:
        with open(p, "rb") as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
    except OSError as err:  # permissions, I/O error (torch also raises OSError for a truncated zip)
        return f"{p}: cannot be read ({err.strerror or type(err).__name__})"
    if not head:
        return f"{p}: not a readable checkpoint (empty file)"
    if head.startswith(_TORCH_ZIP_MAGIC) or head == _TORCH_LEGACY_MAGIC:
        if isinstance(exc, pickle.UnpicklingError):  # a weights-only load met something other than tensors and data
            return f"{p}: not a Keisei checkpoint (a torch file holding other Python objects, or corrupt)"
        return f"{p}: not a readable checkpoint (truncated or corrupt torch file)"
    return f"{p}: not a readable checkpoint (not a torch file)"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint (file or run dir)."""
    p = resolve_checkpoint(path)
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol is reported as an error below, not a warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a torch file at all
        raise CheckpointError(_unreadable(p, exc)) from None
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, _V1):
        raise CheckpointError(f"{p}: not a Keisei checkpoint (expected format {FORMAT!r})")
    if data.get("encoding_version") != ENCODING_VERSION:
        raise CheckpointError(f"{p}: written for encoding {data.get('encoding_version')!r}, "
                              f"this Keisei uses {ENCODING_VERSION!r}")
    if data["format"] == _V1:
        data["config"] = _upgrade_v1_config(data["config"])
        data["format"] = FORMAT
    if isinstance(data.get("config"), dict):
        model = data["config"]["model"]
        model.setdefault("norm", "batch")  # written before model.norm existed: BatchNorm everywhere
        model.setdefault("value_reach", False)  # before these two: a value head in [-1, 1] ...
        model.setdefault("value_plane_norm", True)  # ... behind a normalised plane
        model.setdefault("value_plane_relu", True)  # before it: a ReLU on the value head's plane
    return data


def _upgrade_v1_config(config: dict[str, Any]) -> dict[str, Any]:
    """A v1 checkpoint's config with v2's key names (and every other key at its schema default)."""
    model, training = {"norm": "batch", **config["model"]}, dict(config["training"])
    if "hidden" in model:
        model["value_hidden" if model.get("name") == "resnet" else "mlp_hidden"] = model.pop("hidden")
    if "checkpoint_interval" in training:
        training["checkpoint_interval_timesteps"] = training.pop("checkpoint_interval")
    return to_container(from_container({**config, "model": model, "training": training}))


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without torch.compile's ``_orig_mod.`` prefix, on the CPU."""
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved from a compiled or plain model into a compiled or plain model."""
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    getattr(model, "_orig_mod", model).load_state_dict(state)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The network of a checkpoint, rebuilt from the file alone, in eval mode; and its run config.
    Drawing nothing from the global generator, it can be called anywhere in a run without changing
    the run's samples (a training run builds its evaluation's checkpoint opponent after a resume)."""
    data = load_checkpoint(path, map_location=device)
    cfg = from_container(data["config"])
    with torch.random.fork_rng(devices=[]):  # the initial weights, overwritten at once
        model = build_model(cfg.model)
    load_model_state(model, data["model"])
    return model.to(device).eval(), cfg
