"""The CPU learning baseline: train ``experiment=cpu_baseline``, then measure it.

Runs ``train.py experiment=cpu_baseline`` (about 20 minutes on 2 CPU cores), then
``evaluate.py`` with 200 games against random and 200 against the heuristic player (the raw
policy, greedy), the same again with play-time search (``--search-simulations``, default 1: the
policy's move after a mate search of 3 plies, moves that allow a mate in one left out; 0 skips
it; docs/search.md), prints the learning curve (periodic evaluation against random and training
metrics per evaluation interval) as a table, and saves the run's metrics plot (PNG). Periodic
evaluation against more opponents adds a win-rate column each:

    python benchmarks/learning.py [--run-dir outputs/cpu_baseline] [--games 200] [OVERRIDE ...]
    python benchmarks/learning.py 'evaluation.periodic_opponents=[heuristic]'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from keisei.plot import eval_opponents, main_opponent, plot_metrics, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=ROOT / "outputs" / "cpu_baseline")
    parser.add_argument("--games", type=int, default=200)
    parser.add_argument("--search-simulations", type=int, default=1,
                        help="also evaluate with this many simulations of search (0: the raw policy only)")
    parser.add_argument("--skip-training", action="store_true", help="measure an existing run dir")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()

    start = time.perf_counter()
    if not args.skip_training:
        run("train.py", "experiment=cpu_baseline", f"hydra.run.dir={run_dir}", "logging.progress_bar=false",
            *args.overrides)
    train_minutes = (time.perf_counter() - start) / 60

    results = {}
    evaluations = [(0, "final_eval", "")]  # (simulations, out dir, label suffix); 0: the raw policy
    if args.search_simulations:
        evaluations.append((args.search_simulations, "final_eval_search",
                            f", {args.search_simulations} simulation(s) of search"))
    for simulations, folder, suffix in evaluations:
        for opponent in ("random", "heuristic"):
            label, out = opponent + suffix, run_dir / folder / opponent
            run("evaluate.py", f"checkpoint={run_dir}", f"opponent={opponent}", f"evaluation.games={args.games}",
                "evaluation.max_plies=256", "logging.progress_bar=false", "device=cpu", f"hydra.run.dir={out}",
                f"evaluation.search.simulations={simulations}")
            results[label] = json.loads((out / "results.json").read_text(encoding="utf-8"))

    train, evals = read_metrics(run_dir)
    print(learning_curve(train, evals, main_opponent(run_dir) or "opponent"))
    print(f"\ntraining took {train_minutes:.1f} min" if not args.skip_training else "")
    for opponent, r in results.items():
        print(f"final vs {opponent}: {r['games']} games, +{r['wins']} ={r['draws']} -{r['losses']}, "
              f"win rate {r['win_rate']:.3f} [{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}], "
              f"Elo {r['elo']:+.0f} ± {r['elo_error']:.0f}, ended by {r['terminations']}")
    print(f"plot: {plot_metrics(run_dir, run_dir / 'learning.png')}")


def learning_curve(train: list[dict], evals: list[dict], opponent: str) -> str:
    """The table: per periodic evaluation, the win rate and draw rate against ``opponent``, the win
    rate against each of ``evaluation.periodic_opponents`` (a column each), and the training
    metrics of that update."""
    others = eval_opponents(evals)
    by_step = {r["global_step"]: r for r in train}
    nan = float("nan")
    widths = [max(9, len(name) + 3) for name in others]
    lines = [f"\nlearning curve (periodic evaluation: win rate vs {', '.join([opponent, *others])}; "
             "training metrics of that update)",
             f"{'env steps':>10} {'win rate':>9} {'draws':>6} "
             + "".join(f"{'vs ' + name:>{w}} " for name, w in zip(others, widths))
             + f"{'value loss':>11} {'entropy':>8} {'game length':>12}"]
    for e in evals:
        r = by_step.get(e["eval/global_step"], {})
        lines.append(
            f"{e['eval/global_step']:>10,} {e['eval/win_rate']:>9.2f} {e['eval/draw_rate']:>6.2f} "
            + "".join(f"{e.get(f'eval/{name}/win_rate', nan):>{w}.2f} " for name, w in zip(others, widths))
            + f"{r.get('losses/value_loss') or nan:>11.4f} {r.get('losses/entropy') or nan:>8.3f} "
            f"{r.get('games/length_mean') or nan:>12.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
