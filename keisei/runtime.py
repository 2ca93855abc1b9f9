"""What both entry points set up before any work: the device and the seeds."""

from __future__ import annotations

import random

import numpy as np
import torch

from keisei.config import ConfigError, Device


def resolve_device(device: Device) -> torch.device:
    """The torch device that ``device=auto|cpu|cuda`` means on this machine."""
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is available (use device=auto or device=cpu)")
    return torch.device(device.value)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators; flush denormal floats to zero."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Early in training Adam's moments and gradients are tiny: denormal floats made CPU updates
    # up to 5x slower (benchmarks/train_throughput.py). Flushing them to zero costs no accuracy here.
    torch.set_flush_denormal(True)
