"""The training loop, read top to bottom: set the learning rate, collect, learn, log, checkpoint or stop.

``algorithm`` is the collect / learn pair of the configured way of training
(``keisei.train.algorithm``: PPO's rollout and clipped update); everything around it, the same for
every algorithm, is ``keisei.train.run.Run``. ``train.py`` is the Hydra entry point.

The objective returned (for sweepers) is the latest periodic evaluation's win rate (its ladder Elo
with ``evaluation=ladder``), or the explained variance of the value function in the last update when
evaluation is off.
"""

from __future__ import annotations

import time
from pathlib import Path

from keisei.config import TrainConfig
from keisei.train.run import Run


def train(cfg: TrainConfig, run_dir: Path) -> float:
    """Train per ``cfg`` in ``run_dir`` (resuming when ``cfg.resume`` or the run dir says so); prints a
    summary and returns the objective. Launched as several processes (torchrun, Slurm tasks) it trains
    one network on all of them (``keisei.train.distributed``); rank 0 writes the record."""
    with Run(cfg, run_dir) as run:
        algorithm = run.algorithm  # built and checked before the run's record is written
        while not run.done:
            start = time.perf_counter()
            lr = run.set_learning_rate()
            batch, rollout = algorithm.collect()
            learn_start = time.perf_counter()
            losses = algorithm.learn(batch)
            rollout.timing["update"] = time.perf_counter() - learn_start
            run.end_update(losses, rollout, lr, start)
            run.checkpoint_or_stop()
        return run.finish()
