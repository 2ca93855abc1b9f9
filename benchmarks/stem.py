"""The network's first convolution: ``StemConv`` (constant planes as one number per position, output
channels-last) against a plain ``nn.Conv2d`` with the same weights (the whole network then runs
channels-first, as before ``StemConv``), inside the whole network.

Builds the configured network (``experiment=cpu_baseline``'s 2x32 ResNet by default), encodes real
positions from random games, and times, alternating rounds in this process:
(a) one PPO-sized training step (forward, backward, Adam) on a minibatch, and (b) a rollout-sized
forward pass without gradients, each with the model as built (``StemConv``) and with its stem swapped
for ``nn.Conv2d`` holding the same parameters. Prints the time of each and the speed-up.

    python benchmarks/stem.py [--minibatch 1024] [--rollout 128] [--rounds 5] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from keisei.config import register_configs, validate
from keisei.nn.model import StemConv, build_model
from keisei.shogi import Game, encode, random_opening

CONF = Path(__file__).resolve().parents[1] / "conf"


def positions(count: int, seed: int = 0) -> torch.Tensor:
    """Observations of ``count`` positions from random games (hands, checks and both sides to move)."""
    rng = np.random.default_rng(seed)
    games = [random_opening(Game(max_plies=400), int(rng.integers(0, 160)), rng) for _ in range(count)]
    return torch.from_numpy(encode(games)[0])


class PlainStem(nn.Conv2d):
    """The first convolution as it was before ``StemConv``: all 125 planes converted to float and
    convolved channels-first."""

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return super().forward(planes.float())


def plain_stem(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``StemConv`` is a ``PlainStem`` with the same parameters."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        for child_name, child in module.named_children():
            if isinstance(child, StemConv):
                conv = PlainStem(child.in_channels, child.out_channels, child.kernel_size,
                                 padding=child.padding, bias=child.bias is not None)
                conv.load_state_dict(child.state_dict())
                setattr(module, child_name, conv)
                return plain
    raise SystemExit(f"{type(model).__name__} has no StemConv (the MLP has no stem)")


def timed(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minibatch", type=int, default=1024)
    parser.add_argument("--rollout", type=int, default=128, help="positions per rollout forward pass")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = validate(compose("train", overrides=["experiment=cpu_baseline", *args.overrides]))
    torch.manual_seed(0)
    built = build_model(cfg.model).eval()
    models = {"StemConv": built, "nn.Conv2d": plain_stem(built)}
    obs = positions(args.minibatch)
    small = obs[:args.rollout]
    with torch.no_grad():
        difference = (built(obs)[0] - models["nn.Conv2d"](obs)[0]).abs().max().item()
    print(f"model={cfg.model.name.value} blocks={cfg.model.blocks} channels={cfg.model.channels} "
          f"threads={torch.get_num_threads()} max |logit difference| {difference:.1e}")

    def train_step(model: nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

        def step() -> None:
            logits, value = model(obs)
            loss = logits.logsumexp(1).mean() + value.square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    def infer(model: nn.Module) -> Callable[[], None]:
        def forward() -> None:
            with torch.no_grad():
                model(small)
        return forward

    steps = {name: train_step(model) for name, model in models.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            times.setdefault(("train", name), []).append(timed(steps[name], 3))
            times.setdefault(("infer", name), []).append(timed(infer(model), 20))
    for kind, label in (("train", f"training step, minibatch {args.minibatch}"),
                        ("infer", f"forward pass, {args.rollout} positions")):
        new, old = min(times[(kind, "StemConv")]), min(times[(kind, "nn.Conv2d")])
        print(f"{label}: nn.Conv2d {old * 1e3:.1f} ms, StemConv {new * 1e3:.1f} ms, speed-up {old / new:.2f}x "
              f"(best of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
