"""Environment demo: random self-play through ``VecEnv``, with a summary and game records.

    python -m keisei.demo [--games 200] [--num-envs 64] [--seed 0] [--out outputs/demo]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from keisei.env.vec_env import VecEnv
from keisei.shogi import MAX_PLIES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Random self-play through keisei's VecEnv.")
    parser.add_argument("--games", type=int, default=200, help="games to finish")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--max-plies", type=int, default=MAX_PLIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    args = parser.parse_args(argv)

    env = VecEnv(args.num_envs, max_plies=args.max_plies)
    rng = np.random.default_rng(args.seed)
    out = env.reset(seed=args.seed)
    finished, steps = [], 0
    start = time.perf_counter()
    with tqdm(total=args.games, unit="game", desc="random self-play") as bar:
        while len(finished) < args.games:
            # A uniformly random legal action per game: the scores of illegal actions are -1.
            scores = np.where(out.legal_mask, rng.random(out.legal_mask.shape), -1.0)
            out = env.step(scores.argmax(axis=1))
            steps += env.num_envs
            new = env.pop_finished()[: args.games - len(finished)]
            finished += new
            bar.update(len(new))
    elapsed = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    game = finished[0]
    (args.out / "game0.kif").write_text(game.to_kif(), encoding="utf-8")
    (args.out / "game0.csa").write_text(game.to_csa(), encoding="utf-8")
    reasons = Counter(g.termination.name.lower() for g in finished)
    results = Counter(g.result.value for g in finished)
    lengths = [g.ply for g in finished]
    print(f"{len(finished)} games, {steps:,} steps in {elapsed:.1f}s ({steps / elapsed:,.0f} steps/s)")
    print("results:      " + ", ".join(f"{k} {v}" for k, v in results.most_common()))
    print("terminations: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    print(f"game length:  mean {np.mean(lengths):.0f}, min {min(lengths)}, max {max(lengths)} plies")
    print(f"first game's record: {args.out / 'game0.kif'} (and .csa)")


if __name__ == "__main__":
    main()
