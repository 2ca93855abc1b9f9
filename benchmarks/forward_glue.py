"""The work around the network's convolutions, each piece against the form it replaced, in one run.

On real positions (random games, encoded) and legal-move masks, times alternating rounds of:

- sampling one move per row of a rollout-sized batch: ``keisei.nn.policy.sample`` (inverse of the
  cumulative sum at one uniform number per row) against ``torch.multinomial`` (which draws an
  exponential number for every one of the 2187 labels);
- the entropy of a minibatch-sized batch, forward and backward: ``softmax(logits) * log_softmax``
  against ``log_softmax(...).exp() * log_softmax`` (exp of the masked labels' huge negative logs is slow);
- reading the uint8 planes: ``keisei.nn.model.split_planes`` (the board planes straight to float
  channels-last) against converting all 125 planes to float and then the board planes to channels-last.

Prints the median time of each form and the speed-up; docs/training.md#throughput has the figures.

    python benchmarks/forward_glue.py [--rollout 128] [--minibatch 1024] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from keisei.nn.model import split_planes
from keisei.nn.policy import masked_logits, sample
from keisei.shogi import Game, encode, random_opening
from keisei.shogi.features import BOARD_PLANES


def positions(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded planes (uint8) and legal masks of ``n`` positions from random games."""
    rng = np.random.default_rng(0)
    games = [random_opening(Game(max_plies=400), int(rng.integers(0, 120)), rng) for _ in range(n)]
    obs, mask = encode(games)
    return torch.from_numpy(obs), torch.from_numpy(mask)


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollout", type=int, default=128, help="rows sampled at once (num_envs)")
    parser.add_argument("--minibatch", type=int, default=1024, help="rows of the entropy and plane reading")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    obs, mask = positions(args.minibatch)
    logits = masked_logits(torch.randn(args.minibatch, mask.shape[1]) * 2, mask)
    probs = torch.softmax(logits[:args.rollout], dim=1)
    generator = torch.Generator().manual_seed(0)
    leaf = logits.clone().requires_grad_(True)

    def entropy_softmax() -> None:
        logp = torch.log_softmax(leaf, dim=1)
        (-(torch.softmax(leaf, dim=1) * logp).sum(dim=1)).sum().backward()

    def entropy_exp() -> None:
        logp = torch.log_softmax(leaf, dim=1)
        (-(logp.exp() * logp).sum(dim=1)).sum().backward()

    def planes_split() -> None:
        split_planes(obs, torch.float32)

    def planes_float_first() -> None:
        planes = obs.float()
        planes[:, :BOARD_PLANES].contiguous(memory_format=torch.channels_last)

    cases = [
        (f"sample {args.rollout} moves", lambda: sample(probs, generator),
         lambda: torch.multinomial(probs, 1, generator=generator)),
        (f"entropy of {args.minibatch}, fwd+bwd", entropy_softmax, entropy_exp),
        (f"read {args.minibatch} positions' planes", planes_split, planes_float_first),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds")
    print(f"{'':<32} {'now ms':>8} {'before ms':>10} {'speed-up':>9}")
    for name, now, before in cases:
        now_ms, before_ms = [], []
        for _ in range(3):  # alternate, so that a slow spell of the machine hits both forms
            now_ms.append(median_ms(now, args.rounds))
            before_ms.append(median_ms(before, args.rounds))
        a, b = statistics.median(now_ms), statistics.median(before_ms)
        print(f"{name:<32} {a:>8.2f} {b:>10.2f} {b / a:>8.1f}x")


if __name__ == "__main__":
    main()
