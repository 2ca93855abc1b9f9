"""Evaluation throughput: agent vs random, all games batched vs one game at a time; and a match of
two networks in this process vs on env worker processes.

The agent is a freshly initialised network (its strength does not matter here, only
the cost of playing). (a) ``play_match`` with all N games in parallel, the agent's moves
for every game in one forward pass per ply; (b) the same N games one after another,
one position per forward pass. Both in this process, alternating rounds; prints games/s
of each and the speed-up a/b. Then (c) the agent against a second network, the games stepped
in this process, and (d) the same match with its games stepped by ``--workers`` env worker
processes (``play_match(workers=K)``: the same games); prints games/s of each and d/c.

    python benchmarks/eval_throughput.py [--games 64] [--max-plies 160] [--rounds 2] [--workers 2] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from keisei.config import register_configs, validate
from keisei.nn.model import build_model
from keisei.play.match import play_match
from keisei.play.players import AgentPlayer, RandomPlayer

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=64)
    parser.add_argument("--max-plies", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="env worker processes of (d)")
    parser.add_argument("overrides", nargs="*", help="model overrides, e.g. model.blocks=2 model.channels=32")
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = validate(compose("train", overrides=args.overrides))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    print(f"model={cfg.model.name.value} blocks={cfg.model.blocks} channels={cfg.model.channels}, "
          f"{args.games} games of at most {args.max_plies} plies vs random, torch threads {torch.get_num_threads()}")

    batched, single = [], []
    for r in range(args.rounds):
        agent, opponent = AgentPlayer(model, seed=r), RandomPlayer(seed=r)
        start = time.perf_counter()
        play_match(agent, opponent, args.games, max_plies=args.max_plies, seed=r)
        batched.append(args.games / (time.perf_counter() - start))
        start = time.perf_counter()
        for k in range(args.games):
            play_match(agent, opponent, 1, max_plies=args.max_plies, seed=r * args.games + k)
        single.append(args.games / (time.perf_counter() - start))
    a, b = float(np.median(batched)), float(np.median(single))
    print(f"batched: {a:.2f} games/s; one at a time: {b:.2f} games/s; speed-up {a / b:.1f}x")

    torch.manual_seed(1)
    other = build_model(cfg.model).eval()
    here, there = [], []
    for r in range(args.rounds):
        for workers, out in ((1, here), (args.workers, there)):
            start = time.perf_counter()
            play_match(AgentPlayer(model, seed=r), AgentPlayer(other, seed=r), args.games,
                       max_plies=args.max_plies, seed=r, workers=workers)
            out.append(args.games / (time.perf_counter() - start))
    c, d = float(np.median(here)), float(np.median(there))
    print(f"network vs network: stepped here {c:.2f} games/s; on {args.workers} env workers {d:.2f} games/s; "
          f"ratio {d / c:.2f}x")


if __name__ == "__main__":
    main()
