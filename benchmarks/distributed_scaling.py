"""Training throughput of DD-PPO: env steps/s with K processes over 1, side by side in one run.

Each setting runs ``torchrun --standalone --nproc_per_node=K train.py`` on the same config (per
rank: ``env.num_envs`` games), alternating rounds so that machine noise hits all alike, and reads
``charts/SPS`` (all ranks' steps per second) from the run's metrics after the first update.

    python benchmarks/distributed_scaling.py [--procs 1 2] [--rounds 2] [--updates 4] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = ["model.blocks=2", "model.channels=32", "env.num_envs=64", "algorithm.num_steps=32",
           "algorithm.minibatch_size=512", "algorithm.update_epochs=2", "device=cpu"]


def steps_per_second(procs: int, updates: int, overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(o.split("=", 1) for o in [*DEFAULT, *overrides])
        per_update = procs * int(settings["env.num_envs"]) * int(settings["algorithm.num_steps"])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               str(REPO / "train.py"), *DEFAULT, *overrides, "logging.progress_bar=false",
               f"training.total_timesteps={updates * per_update}", f"hydra.run.dir={tmp}/run"]
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, text=True)
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
        sps = [json.loads(line)["charts/SPS"] for line in lines if "charts/SPS" in line]
        return statistics.median(sps[1:] or sps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results: dict[int, list[float]] = {k: [] for k in args.procs}
    for _ in range(args.rounds):
        for k in args.procs:
            results[k].append(steps_per_second(k, args.updates, args.overrides))
    base = statistics.median(results[args.procs[0]])
    print(f"{'procs':>5} {'env steps/s':>12} {'ratio':>6}")
    for k, values in results.items():
        sps = statistics.median(values)
        print(f"{k:>5} {sps:>12,.0f} {sps / base:>6.2f}")


if __name__ == "__main__":
    main()
