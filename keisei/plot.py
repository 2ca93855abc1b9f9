"""Pictures of runs and games.

    python -m keisei.plot RUN_DIR [--out FILE.png]    # the run's metrics.jsonl as a PNG (default RUN_DIR/metrics.png)
    python -m keisei.plot RECORD [--out FILE.svg]     # a game record's final position (KIF, CSA, or a
                                                     # games.jsonl line number as games.jsonl:N)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

# Panels: (title, [(metric key, label)]); panels whose metrics are absent are left out.
PANELS = [
    ("policy", [("losses/policy_loss", "policy loss"), ("losses/entropy", "entropy")]),
    ("value", [("losses/value_loss", "value loss"), ("losses/explained_variance", "explained variance")]),
    ("update size", [("losses/approx_kl", "approx KL"), ("losses/clipfrac", "clip fraction")]),
    ("self-play outcomes", [("games/black_win", "black wins"), ("games/white_win", "white wins"),
                            ("games/draw", "draws")]),
    ("game length (plies)", [("games/length_mean", "mean")]),
    ("throughput (env steps/s)", [("charts/SPS", "steps/s")]),
]
EVAL_PANEL = ("periodic evaluation", [("eval/win_rate", "win rate"), ("eval/score", "score"),
                                      ("eval/draw_rate", "draw rate")])


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training records, evaluation records) of a run dir's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run dir?)")
    train, evals = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        (train if "global_step" in record else evals).append(record)
    return train, evals


def plot_metrics(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the metrics of ``run_dir`` against env steps into a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(run_dir)
    panels = [(title, [(k, label) for k, label in series if any(r.get(k) is not None for r in train)])
              for title, series in PANELS]
    panels = [(title, series, train, "global_step") for title, series in panels if series]
    if evals:
        panels.append((*EVAL_PANEL, evals, "eval/global_step"))
    if not panels:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: nothing to plot")
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, (title, series, records, x_key) in zip(axes.flat, panels):
        for key, label in series:
            points = [(r[x_key], r[key]) for r in records if r.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = out or run_dir / "metrics.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def final_position_svg(record: str) -> str:
    """SVG of the last position of a game record: ``x.kif``, ``x.csa`` or ``games.jsonl:N`` (line N, from 1)."""
    from rsshogi.core import Board
    from rsshogi.record import Record

    path, _, line = record.partition(".jsonl:")
    if line:
        lines = Path(path + ".jsonl").read_text(encoding="utf-8").splitlines()
        position = json.loads(lines[int(line) - 1])["usi"]
        start, _, moves = position.partition(" moves ")
        board = Board() if start == "startpos" else Board(start.removeprefix("sfen "))
        usi_moves = moves.split()
    else:
        file = Path(record)
        parse = {".kif": Record.from_kif_str, ".csa": Record.from_csa_str}.get(file.suffix.lower())
        if parse is None:
            raise ValueError(f"{record}: expected a .kif or .csa file, or games.jsonl:N")
        data = file.read_bytes()
        try:
            text = data.decode("utf-8")  # Keisei writes UTF-8
        except UnicodeDecodeError:
            text = data.decode("shift_jis")  # the traditional encoding of .kif files
        rec = parse(text)
        board = Board(rec.init_position_sfen)
        usi_moves = [entry.move.to_usi() for entry in rec.moves]
    last = None
    for usi in usi_moves:
        last = board.push_usi(usi)  # the Move32 (with its piece) marks the last move in the picture
    return str(board.to_svg(last_move=last, scale=2.0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m keisei.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a run dir, or a game record (.kif, .csa, games.jsonl:N)")
    parser.add_argument("--out", type=Path, help="output file (PNG for a run dir, SVG for a record)")
    args = parser.parse_args(argv)
    try:
        target = Path(args.target)
        if target.is_dir():
            print(plot_metrics(target, args.out))
        else:
            out = args.out or Path(f"{args.target.replace('.jsonl:', '-')}.svg")
            out.write_text(final_position_svg(args.target), encoding="utf-8")
            print(out)
    except (OSError, ValueError, IndexError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
