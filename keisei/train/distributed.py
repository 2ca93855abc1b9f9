"""Decentralised distributed PPO (DD-PPO) on plain ``torch.distributed``.

Every rank (process) runs its own share of the games with its own seed, computes gradients on
its own batch, and the gradients are averaged over the ranks (one flat all-reduce) before every
optimizer step, so all ranks hold the same network throughout. Rank 0 alone writes the run's
record (config, metrics, checkpoints, evaluations). Launched by ``torchrun`` (which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) or as Slurm tasks
through submitit (``hydra.launcher.tasks_per_node=K``: the rendezvous comes from submitit's
``TorchDistributedEnvironment``). gloo on the CPU, NCCL on GPUs; a rank's GPU is its
``LOCAL_RANK``. With one process nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _from_submitit() -> None:
    """Inside a submitit job of several Slurm tasks, export the rendezvous variables torchrun would set."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SUBMITIT_FOLDER" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup(use_cuda: bool) -> Ranks:
    """Join the process group when launched as several processes (else one rank, nothing initialised)."""
    _from_submitit()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=10))
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(model: nn.Module) -> None:
    """Average the gradients over the ranks (one flat all-reduce)."""
    if not active():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce(value: float | int, op: str = "max") -> float:
    """A number combined over the ranks (``max``, ``min`` or ``mean``); itself with one rank."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX if op == "max" else
                    dist.ReduceOp.SUM)
    return float(t) / (dist.get_world_size() if op == "mean" else 1)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere); ``[obj]`` with one rank."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
