"""The teacher's score scale: ``s`` such that sigmoid(score / s) is the side to move's chance to win.

dlshogi turns an hcpe score into a value target with ``sigmoid(score / 756.09)``, a scale fitted to
YaneuraOu-family engines; another teacher needs its own. ``fit_score_scale`` fits ``s`` to the game
results of hcpe rows by maximum likelihood (a draw counts half a win); mate scores are left out.

    python -m keisei.data.scale data/fs8.hcpe [more.hcpe ...]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from keisei.data.hcpe import HCPE, read
from keisei.play.usi_client import MATE_SCORE

#: Scores this close to ``MATE_SCORE`` are mates, not centipawns.
MATE_BAND = 1000


def mover_results(rows: np.ndarray) -> np.ndarray:
    """The side to move's result of each hcpe row: 1 won, 0.5 draw, 0 lost (the side to move is read from the hcp)."""
    black_to_move = (rows["hcp"][:, 0] & 1) == 0  # the first bit of an hcp: the side to move (0: Black)
    won = np.where(black_to_move, rows["gameResult"] == 1, rows["gameResult"] == 2)
    lost = np.where(black_to_move, rows["gameResult"] == 2, rows["gameResult"] == 1)
    return np.where(won, 1.0, np.where(lost, 0.0, 0.5))


def log_loss(scale: float, scores: np.ndarray, results: np.ndarray) -> float:
    """Mean cross-entropy of the results under sigmoid(score / scale)."""
    z = scores / scale
    return float(np.mean(np.logaddexp(0, -z) * results + np.logaddexp(0, z) * (1 - results)))


def fit_score_scale(rows: np.ndarray, low: float = 10.0, high: float = 10_000.0) -> float:
    """The scale in [low, high] that best predicts the rows' results from their scores (golden-section
    search over log scale); mate scores are left out."""
    scores = rows["eval"].astype(np.float64)
    keep = np.abs(scores) < MATE_SCORE - MATE_BAND
    scores, results = scores[keep], mover_results(rows)[keep]
    if not len(scores):
        raise ValueError("no rows with a centipawn score to fit the scale to")
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if log_loss(math.exp(c), scores, results) < log_loss(math.exp(d), scores, results):
            b = d
        else:
            a = c
    scale = math.exp((a + b) / 2)
    if not low * 1.01 < scale < high * 0.99:
        raise ValueError(f"no scale in [{low:g}, {high:g}] fits: the best is at its bound ({scale:.0f}), so the rows' "
                         "results do not follow their scores (too few rows, or results unrelated to the scores)")
    return scale


def main() -> None:
    parser = argparse.ArgumentParser(description="Fit the score scale of hcpe files' teacher to their game results.")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    try:
        rows = np.concatenate([read(f, HCPE) for f in args.files])
        scale = fit_score_scale(rows)
    except (OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    scores = rows["eval"].astype(np.float64)
    keep = np.abs(scores) < MATE_SCORE - MATE_BAND
    loss = log_loss(scale, scores[keep], mover_results(rows)[keep])
    print(f"score scale {scale:.1f} (sigmoid(score / {scale:.1f}); {keep.sum():,} rows, log loss {loss:.4f}); "
          f"train with algorithm.score_scale={scale:.0f}")


if __name__ == "__main__":
    main()
