"""Environment throughput: raw rsshogi playouts vs. ``VecEnv`` steps, side by side.

(a) raw rsshogi: one Board, per ply ``legal_moves()`` + ``random.choice`` + ``push_move``
    + ``repetition_state()``, a new game at 320 plies or when it ends: plies/s.
(b) ``VecEnv``: random legal actions (chosen from the legal masks), every step also
    producing the observation planes and legal masks of every game: steps/s.
Both run in this one process, pinned to one core, alternating rounds so that
machine noise hits both alike. Prints the median rates and the median over rounds of
the ratio b/a of each round. Times are the process's CPU time by default
(``--clock cpu``): on a shared machine, time spent descheduled would otherwise count
against whichever side it fell on; on an idle machine CPU and wall time agree
(``--clock wall`` to check).

    python benchmarks/env_throughput.py [--num-envs 64 256] [--seconds 3] [--rounds 3] [--clock cpu]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable

import numpy as np
from rsshogi.core import Board
from rsshogi.types import RepetitionState

from keisei.env.vec_env import VecEnv

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def raw_playouts(seconds: float, seed: int, clock: Callable[[], float] = time.process_time) -> float:
    """Plies per second of bare rsshogi random playouts."""
    rng = random.Random(seed)
    board, ply, plies = Board(), 0, 0
    none = RepetitionState.NONE
    start = clock()
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
        now = clock()
        if now >= deadline:
            return plies / (now - start)


def random_legal_actions(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random legal label per row of ``mask`` (the row counts come from the flat
    indices of the legal labels, not from summing the whole mask)."""
    n, width = mask.shape
    legal = np.flatnonzero(mask)
    counts = np.bincount(legal // width, minlength=n)
    starts = np.cumsum(counts) - counts
    pick = starts + (rng.random(n) * counts).astype(np.int64)
    return legal[pick] - np.arange(n) * width


def vecenv_steps(env: VecEnv, seconds: float, seed: int, clock: Callable[[], float] = time.process_time
                 ) -> tuple[float, float]:
    """(steps/s including action choice, steps/s of ``env.step`` alone)."""
    rng = np.random.default_rng(seed)
    result = env.reset(seed=seed)
    steps, in_step = 0, 0.0
    start = clock()
    deadline = start + seconds
    while True:
        actions = random_legal_actions(result.legal_mask, rng)
        t0 = clock()
        result = env.step(actions)
        t1 = clock()
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
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="CPU time of this process (default) or wall-clock time")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    print(f"{'num_envs':>8} {'raw plies/s':>12} {'VecEnv steps/s':>15} {'step() only':>12} "
          f"{'ratio b/a':>10} {'ratio (step only)':>18}")
    for n in args.num_envs:
        env = VecEnv(n)
        raws, fulls, onlys = [], [], []
        for r in range(args.rounds):
            raws.append(raw_playouts(args.seconds, seed=r, clock=clock))
            full, only = vecenv_steps(env, args.seconds, seed=r, clock=clock)
            fulls.append(full)
            onlys.append(only)
        raw, full, only = (float(np.median(x)) for x in (raws, fulls, onlys))
        # ratios of the same round (next to each other in time), then their median
        ratio, ratio_only = (float(np.median(np.array(x) / np.array(raws))) for x in (fulls, onlys))
        print(f"{n:>8} {raw:>12,.0f} {full:>15,.0f} {only:>12,.0f} {ratio:>10.3f} {ratio_only:>18.3f}")


if __name__ == "__main__":
    main()
