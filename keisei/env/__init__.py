"""The self-play environment: ``VecEnv`` steps N games in lockstep; ``make_env`` builds it, in this
process or sharded over worker processes (``WorkerVecEnv``)."""

from keisei.env.make import make_env
from keisei.env.vec_env import Env, StepResult, VecEnv
from keisei.env.workers import WorkerVecEnv

__all__ = ["Env", "StepResult", "VecEnv", "WorkerVecEnv", "make_env"]
