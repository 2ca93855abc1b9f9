"""Environment throughput: raw rsshogi playouts vs. ``VecEnv`` steps, side by side.

(a) raw rsshogi: one Board, per ply ``legal_moves()`` + ``random.choice`` + ``push_move``
    + ``repetition_state()``, a new game at 320 plies or when it ends: plies/s.
(b) ``VecEnv``: random legal actions (chosen from the legal masks), every step also
    producing the observation planes and legal masks of every game: steps/s.
Both run in this one process, pinned to one core, alternating rounds so that
machine noise hits both alike. Prints both rates and the ratio b/a.

    python benchmarks/env_throughput.py [--num-envs 64 256] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
from rsshogi.core import Board
from rsshogi.types import RepetitionState

from keisei.env import VecEnv


def raw_playouts(seconds: float, seed: int) -> float:
    """Plies per second of bare rsshogi random playouts."""
    rng = random.Random(seed)
    board, ply, plies = Board(), 0, 0
    none = RepetitionState.NONE
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            moves = board.legal_moves()
            if not moves or ply >= 320:
                board, ply = Board(), 0
                continue
            board.push_move(rng.choice(moves))
            ply += 1
            plies += 1
            if board.repetition_state() != none:
                board, ply = Board(), 0
        now = time.perf_counter()
        if now >= deadline:
            return plies / (now - start)


def random_legal_actions(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random legal label per row of ``mask``."""
    legal = np.flatnonzero(mask)
    counts = mask.sum(axis=1)
    starts = np.cumsum(counts) - counts
    pick = starts + (rng.random(len(counts)) * counts).astype(np.int64)
    return legal[pick] % mask.shape[1]


def vecenv_steps(env: VecEnv, seconds: float, seed: int) -> tuple[float, float]:
    """(steps/s including action choice, steps/s of ``env.step`` alone)."""
    rng = np.random.default_rng(seed)
    result = env.reset(seed=seed)
    steps, in_step = 0, 0.0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        actions = random_legal_actions(result.legal_mask, rng)
        t0 = time.perf_counter()
        result = env.step(actions)
        t1 = time.perf_counter()
        in_step += t1 - t0
        steps += env.num_envs
        if t1 >= deadline:
            return steps / (t1 - start), steps / in_step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    print(f"{'num_envs':>8} {'raw plies/s':>12} {'VecEnv steps/s':>15} {'step() only':>12} "
          f"{'ratio b/a':>10} {'ratio (step only)':>18}")
    for n in args.num_envs:
        env = VecEnv(n)
        raws, fulls, onlys = [], [], []
        for r in range(args.rounds):
            raws.append(raw_playouts(args.seconds, seed=r))
            full, only = vecenv_steps(env, args.seconds, seed=r)
            fulls.append(full)
            onlys.append(only)
        raw, full, only = (float(np.median(x)) for x in (raws, fulls, onlys))
        print(f"{n:>8} {raw:>12,.0f} {full:>15,.0f} {only:>12,.0f} {full / raw:>10.3f} {only / raw:>18.3f}")


if __name__ == "__main__":
    main()
