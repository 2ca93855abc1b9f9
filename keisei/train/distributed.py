"""Decentralised distributed PPO (DD-PPO) on plain ``torch.distributed``.

Every rank (process) runs its own share of the games with its own seed, computes gradients on
its own batch, and the gradients are averaged over the ranks (one flat all-reduce) before every
optimizer step, so all ranks hold the same network throughout. Rank 0 alone writes the run's
record (config, metrics, checkpoints, evaluations). Launched by ``torchrun`` (which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) or as Slurm tasks
through submitit (``hydra.launcher.tasks_per_node=K``: the rendezvous comes from submitit's
``TorchDistributedEnvironment``). gloo on the CPU, NCCL on GPUs; a rank's GPU is its
``LOCAL_RANK``. With one process nothing here does anything.

Under ``torchrun --max-restarts=N`` a rank that dies (killed, out of memory, a crashed node) makes
torchrun stop the others and start the whole group again with the same command line; the ranks
resume from the run dir's ``checkpoints/last.pt`` (``keisei.train.run``). That needs the same run dir
at every start: such a launch must name it (``hydra.run.dir=...``) and is refused otherwise, since
Hydra's default run dir is named after the time it starts. torchrun keeps the store the ranks meet in
across restarts, with the previous group's addresses still in it; on one node each start of the group
uses keys of its own (``_elastic_store``), on several nodes torchrun must be told not to share its
store (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``), and such a launch is refused otherwise.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from torch import nn

from keisei.config import ConfigError

log = logging.getLogger(__name__)

#: How long the other ranks wait for rank 0 after an update (``wait_for_main``): as long as rank 0's
#: periodic evaluation may take (one inline, or a background one rank 0 waits for).
MAIN_WAIT_TIMEOUT = timedelta(hours=24)

_main_wait_group: dist.ProcessGroup | None = None


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


def check_restartable() -> None:
    """Under ``torchrun --max-restarts=N`` (N > 0), refuse what would keep a restarted group from resuming:
    a run dir named after the start time (Hydra's default: the group torchrun starts again would start
    over in a new one instead of resuming from this one's ``checkpoints/last.pt``), and on several nodes
    torchrun's store shared with the ranks (see ``_elastic_store``)."""
    max_restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if max_restarts <= 0:
        return
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise ConfigError(f"torchrun --max-restarts={max_restarts} on several nodes: start torchrun with "
                          "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment (else a restarted group may "
                          "read the previous group's addresses in torchrun's store and fail to connect)")
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    node = "sweep" if hydra.mode == RunMode.MULTIRUN else "run"
    key, template = f"hydra.{node}.dir", str(OmegaConf.to_container(hydra[node], resolve=False)["dir"])
    if "${now:" in template:
        raise ConfigError(f"torchrun --max-restarts={max_restarts}: set {key}=<a dir> (the same at every "
                          f"start) so that a group torchrun restarts resumes from its checkpoints/last.pt; "
                          f"the default, {template}, is a new dir at every start")


def _elastic_store(timeout: timedelta) -> dict[str, Any]:
    """Under torchrun on one node, the store the ranks meet in, with keys of this start of the group
    (else {}: ``init_process_group`` reads the environment). torchrun shares its own store with the
    ranks and keeps it across restarts (pytorch/pytorch#135712): a restarted group used to read the
    previous group's addresses there now and then, and failed to connect or hung. The restart count
    is the same on every rank only when one torchrun agent started them all, hence one node."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if (restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or int(os.environ.get("GROUP_WORLD_SIZE", "1")) != 1):
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    return {"store": dist.PrefixStore(f"keisei/start_{restart}/", store), "rank": int(os.environ["RANK"]),
            "world_size": int(os.environ["WORLD_SIZE"])}


def setup(use_cuda: bool, timeout: timedelta) -> Ranks:
    """Join the process group when launched as several processes (else one rank, nothing initialised).
    ``timeout``: how long joining and each collective wait for the other ranks
    (``training.collective_timeout_minutes``)."""
    check_restartable()
    _from_submitit()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        # Imported after the group is made (the optimiser's first use imports it), torch._dynamo keeps
        # references to the group that destroy_process_group leaves (torch 2.13): its gloo threads then
        # outlived ``shutdown`` into the interpreter's exit, where one could abort the finished rank.
        import torch._dynamo

        if use_cuda:  # NCCL's collectives (objects, barriers) run on the current device: this rank's GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout, **_elastic_store(timeout))
    global _main_wait_group
    # gloo's pairs time out by their group's timeout, whatever a call asks for: a group of its own.
    _main_wait_group = dist.new_group(backend="gloo", timeout=MAIN_WAIT_TIMEOUT)
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart and ranks.main:
        log.info("torchrun restart %d of at most %s: the group started again after a rank failed", restart,
                 os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?"))
    return ranks


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
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)  # NCCL reduces GPU tensors only
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


def wait_for_main() -> None:
    """Every rank waits here until rank 0 arrives, for up to ``MAIN_WAIT_TIMEOUT``: rank 0 may have spent
    longer than the collective timeout on a periodic evaluation, which the other ranks would otherwise
    wait out in the next collective, and fail there."""
    if active() and _main_wait_group is not None:
        dist.barrier(group=_main_wait_group)


def shutdown() -> None:
    global _main_wait_group
    _main_wait_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
