"""The optimiser, its learning-rate schedule and one optimiser step (shared by every way of training)."""

from __future__ import annotations

import math

import torch
from torch import nn

from keisei.config import Schedule, TrainingConfig
from keisei.train import distributed


def build_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer.value == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.learning_rate, eps=1e-5, weight_decay=cfg.weight_decay)


def learning_rate(cfg: TrainingConfig, update: int, num_updates: int) -> float:
    """Learning rate for ``update`` (0-based) of ``num_updates``: the schedule spans the whole run."""
    progress = update / max(num_updates, 1)
    if cfg.lr_schedule is Schedule.linear:
        return cfg.learning_rate * (1.0 - progress)
    if cfg.lr_schedule is Schedule.cosine:
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.learning_rate


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Backward, gradients averaged over the ranks of a distributed run, clipped to ``max_grad_norm``,
    one optimiser step (through ``scaler`` for fp16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        distributed.average_gradients(model)
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    distributed.average_gradients(model)
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
