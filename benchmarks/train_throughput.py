"""End-to-end training throughput: env steps/s and where the wall time goes.

Composes the same config as ``train.py`` (any Hydra overrides), runs a few PPO updates
in a temporary run dir and prints, per update and in total, env steps/s and the shares
of wall time spent in the environment, in network inference (rollout forward passes and
GAE), in the PPO update, and in the remaining Python glue (rollout storage, transfers).

    python benchmarks/train_throughput.py [--updates 3] [OVERRIDE ...]
    python benchmarks/train_throughput.py model=resnet model.blocks=4 model.channels=32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from keisei.config import register_configs, validate
from keisei.train.algorithm import batch_size, build_algorithm
from keisei.train.optim import learning_rate, set_learning_rate
from keisei.train.run import start_run

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=3, help="measured updates (after one warm-up)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = validate(compose("train", overrides=["logging.progress_bar=false", *args.overrides]))
    m, e, a = cfg.model, cfg.env, cfg.algorithm
    print(f"model={m.name.value} blocks={m.blocks} channels={m.channels} num_envs={e.num_envs} "
          f"num_steps={a.num_steps} minibatch={a.minibatch_size} epochs={a.update_epochs} "
          f"device={cfg.device.value}")
    with tempfile.TemporaryDirectory() as tmp:
        state = start_run(cfg, Path(tmp))
        algorithm = build_algorithm(cfg, state)
        steps_per_update = batch_size(cfg, world=1)
        totals = {"env": 0.0, "inference": 0.0, "update": 0.0, "wall": 0.0}
        steps = 0
        print(f"{'update':>6} {'steps/s':>9} {'env':>6} {'infer':>6} {'update':>7} {'glue':>6}")
        for u in range(args.updates + 1):
            start = time.perf_counter()
            set_learning_rate(state.optimizer, learning_rate(cfg.training, u, args.updates + 1))
            batch, rollout = algorithm.collect()
            timing = rollout.timing
            t0 = time.perf_counter()
            algorithm.learn(batch)
            timing["update"] = time.perf_counter() - t0
            wall = time.perf_counter() - start
            glue = wall - timing["env"] - timing["inference"] - timing["update"]
            print(f"{u if u else 'warmup':>6} {steps_per_update / wall:>9.0f} {timing['env'] / wall:>6.1%} "
                  f"{timing['inference'] / wall:>6.1%} {timing['update'] / wall:>7.1%} {glue / wall:>6.1%}")
            if u:
                steps += steps_per_update
                totals["wall"] += wall
                for key in ("env", "inference", "update"):
                    totals[key] += timing[key]
        state.env.close()
    wall = totals["wall"]
    env_glue = (wall - totals["inference"] - totals["update"]) / wall
    print(f"total: {steps / wall:.0f} env steps/s; env {totals['env'] / wall:.1%}, inference "
          f"{totals['inference'] / wall:.1%}, update {totals['update'] / wall:.1%}; "
          f"env + Python glue {env_glue:.1%} of wall time (goal <= 15%)")


if __name__ == "__main__":
    main()
