"""``make_env``: the self-play environment of an ``EnvConfig``, in this process or over worker processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keisei.env.vec_env import VecEnv
from keisei.env.workers import WorkerVecEnv

if TYPE_CHECKING:
    from keisei.config import EnvConfig


def make_env(cfg: EnvConfig) -> VecEnv | WorkerVecEnv:
    """The environment of ``cfg``: a ``VecEnv`` in this process when ``cfg.workers`` is 1, else a
    ``WorkerVecEnv`` over ``cfg.workers`` processes. Call ``close()`` on it when done (a no-op for
    ``VecEnv``) or use it as a context manager."""
    kwargs = {"max_plies": cfg.max_plies, "declaration": cfg.declaration, "opening_plies": cfg.opening_plies,
              "keep_finished": max(1024, 2 * cfg.num_envs)}  # every game of a step, whatever the batch
    if cfg.workers <= 1:
        return VecEnv(cfg.num_envs, **kwargs)
    return WorkerVecEnv(cfg.num_envs, workers=cfg.workers, **kwargs)
