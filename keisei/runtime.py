"""What both entry points set up before any work: the device, the seeds, the W&B run."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keisei.config import ConfigError, Device, EvaluateConfig, TrainConfig, to_container
from keisei.shogi import NUM_ACTIONS, OBSERVATION_SHAPE


def resolve_device(device: Device) -> torch.device:
    """The torch device that ``device=auto|cpu|cuda`` means on this machine."""
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is available (use device=auto or device=cpu)")
    return torch.device(device.value)


def start_wandb(cfg: TrainConfig | EvaluateConfig, directory: Path, **init: Any) -> Any:
    """A W&B run of ``cfg`` (its ``wandb`` settings; ``init``: more ``wandb.init`` arguments), its
    files under ``directory``. W&B refusing to start (no login, say) is a one-line ``ConfigError``."""
    import wandb

    w = cfg.wandb
    try:
        return wandb.init(mode=w.mode.value, project=w.project, entity=w.entity, name=w.name, group=w.group,
                          tags=list(w.tags), config=to_container(cfg), dir=str(directory), **init)
    except wandb.errors.Error as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ConfigError(f"wandb.mode={w.mode.value}: W&B did not start ({reason}); run `wandb login`, "
                          "or set wandb.mode=offline or wandb.mode=disabled") from None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators; flush denormal floats to zero."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Early in training Adam's moments and gradients are tiny, and denormal floats slow CPU updates
    # down (benchmarks/train_throughput.py measures it). Flushing them to zero costs no accuracy here.
    torch.set_flush_denormal(True)


def check_memory(cfg: TrainConfig) -> None:
    """Refuse, naming the keys, a run whose env and rollout buffers (or ``algorithm=gumbel_az``'s replay
    buffer, filled as the run goes) cannot fit in this machine's memory (instead of a bare allocation
    error, or swapping, once they are allocated)."""
    position = int(np.prod(OBSERVATION_SHAPE)) + NUM_ACTIONS  # uint8 planes + bool mask
    per_env = 2 * position + 2 * NUM_ACTIONS  # the env's planes, final planes, masks and label index
    steps = getattr(cfg.algorithm, "num_steps", 0)  # an algorithm without rollouts (supervised) has none
    per_env += 2 * steps * (position + 40)  # rollout buffers and the batch taken from them
    need = cfg.env.num_envs * per_env
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return  # no way to know here: let the allocation decide
    if need > 0.8 * have:
        raise ConfigError(f"env.num_envs={cfg.env.num_envs}: with algorithm.num_steps={steps} the "
                          f"env and rollout buffers need about {need / 2**30:,.1f} GiB, and this machine has "
                          f"{have / 2**30:,.1f} GiB: lower env.num_envs or algorithm.num_steps")
    replay = replay_bytes(cfg)
    if need + replay > 0.8 * have:
        raise ConfigError(f"algorithm.buffer_size={cfg.algorithm.buffer_size}: the replay buffer will need about "
                          f"{replay / 2**30:,.1f} GiB once full, and this machine has {have / 2**30:,.1f} GiB: "
                          "lower algorithm.buffer_size")


def replay_bytes(cfg: TrainConfig) -> int:
    """Memory of a full replay buffer (``algorithm.buffer_size``, 0 for an algorithm without one) and of the
    games in progress' positions, at 40 legal moves a position (``keisei.train.replay``)."""
    size = getattr(cfg.algorithm, "buffer_size", 0)
    if not size:
        return 0
    from keisei.train.replay import FIXED_BYTES

    return (size + cfg.env.num_envs * cfg.env.max_plies) * (FIXED_BYTES + 2 * 40)
