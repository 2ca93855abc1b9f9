"""Env throughput with worker processes: ``WorkerVecEnv`` with K workers over ``VecEnv`` and over
``WorkerVecEnv`` with 1 worker.

Every configuration steps the same number of games with uniformly random legal actions
(chosen here, in the parent, as a policy would be), in alternating rounds so that machine
noise hits all alike; wall-clock time. Two rates per configuration:

* env steps/s: games x steps over the time spent inside ``step`` (what the workers speed up),
* with action choice: over the whole loop (the parent's serial action choice included).

Prints the median rates and, per configuration, the median over rounds of its rate over the
``VecEnv`` rate and over the 1-worker rate of the same round (the second is how the workers
scale; the first is what they gain over stepping the games in the training process).

    python benchmarks/scaling.py [--num-envs 256] [--workers 1 2] [--seconds 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from env_throughput import random_legal_actions

from keisei.env.vec_env import StepResult, VecEnv
from keisei.env.workers import WorkerVecEnv


def run(env: VecEnv | WorkerVecEnv, out: StepResult, seconds: float, rng: np.random.Generator
        ) -> tuple[float, float, StepResult]:
    """(env steps/s inside ``step``, steps/s of the whole loop, the last result)."""
    steps, in_step = 0, 0.0
    start = time.perf_counter()
    while True:
        actions = random_legal_actions(out.legal_mask, rng)
        t0 = time.perf_counter()
        out = env.step(actions)
        t1 = time.perf_counter()
        in_step += t1 - t0
        steps += env.num_envs
        if t1 - start >= seconds:
            return steps / in_step, steps / (t1 - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare with VecEnv (and with 1 worker, when listed)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per round and configuration")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    envs: dict[str, VecEnv | WorkerVecEnv] = {"VecEnv": VecEnv(args.num_envs)}
    envs.update({f"{k} workers": WorkerVecEnv(args.num_envs, workers=k) for k in args.workers})
    try:
        outs = {name: env.reset(seed=0) for name, env in envs.items()}
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in envs}
        for r in range(args.rounds):
            for name, env in envs.items():
                in_step, whole, outs[name] = run(env, outs[name], args.seconds, np.random.default_rng(r))
                rates[name].append((in_step, whole))
    finally:
        for env in envs.values():
            env.close()

    base = np.array(rates["VecEnv"])
    one = np.array(rates["1 workers"]) if "1 workers" in rates else None
    print(f"num_envs {args.num_envs}, {args.rounds} rounds of {args.seconds:g} s")
    print(f"{'configuration':>14} {'env steps/s':>12} {'x VecEnv':>9} {'x 1 worker':>11} "
          f"{'with choice':>12} {'x VecEnv':>9} {'x 1 worker':>11}")
    for name, values in rates.items():
        v = np.array(values)
        ratio = np.median(v / base, axis=0)
        scaling = np.median(v / one, axis=0) if one is not None and name != "VecEnv" else (np.nan, np.nan)
        median = np.median(v, axis=0)
        print(f"{name:>14} {median[0]:>12,.0f} {ratio[0]:>9.2f} {scaling[0]:>11.2f} "
              f"{median[1]:>12,.0f} {ratio[1]:>9.2f} {scaling[1]:>11.2f}")


if __name__ == "__main__":
    main()
