"""Labelling rate of label.py: positions per second for several teacher settings, measured in one run.

Each setting labels ``--positions`` positions of teacher self-play games (``source=selfplay``, the
settings of the measured dataset: 0..8 random opening moves, 5 % random moves) with ``--workers``
worker processes into a fresh file; the table gives positions/s and the ratio to the first setting.
A setting is ``fs:depth=8`` (fairy-stockfish, full strength), ``fs:movetime=50`` or
``gps:byoyomi=100`` (gpsusi). What a budget allows: rate x seconds.

    python benchmarks/label_rate.py [--positions 600] [--workers 2] [SETTING ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from keisei.config import LabelConfig, LabelSource, LoggingConfig, OpponentConfig, OpponentKind
from keisei.data.label import label

ENGINES = {"fs": ("/usr/games/fairy-stockfish", {"Threads": 1, "Hash": 16}), "gps": ("/usr/games/gpsusi", {})}
KEYS = {"depth": "depth", "movetime": "movetime_ms", "byoyomi": "byoyomi_ms"}
DEFAULT = ["fs:depth=4", "fs:depth=6", "fs:depth=8", "fs:depth=10", "gps:byoyomi=100"]


def teacher(setting: str) -> OpponentConfig:
    engine, _, limit = setting.partition(":")
    key, _, value = limit.partition("=")
    command, options = ENGINES[engine]
    return OpponentConfig(kind=OpponentKind.usi, command=command, options=dict(options), movetime_ms=None,
                          timeout_s=30.0, **{KEYS[key]: int(value)})


def rate(setting: str, positions: int, workers: int, out: Path) -> float:
    cfg = LabelConfig(output=str(out), positions=positions, source=LabelSource.selfplay, teacher=teacher(setting),
                      opening_plies=8, random_move_rate=0.05, workers=workers,
                      logging=LoggingConfig(progress_bar=False))
    start = time.perf_counter()
    report = label(cfg)
    return report.written / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="*", default=DEFAULT)
    parser.add_argument("--positions", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rates = {s: rate(s, args.positions, args.workers, Path(tmp) / f"{i}.hcpe") for i, s in enumerate(args.settings)}
    first = next(iter(rates.values()))
    print(f"{'teacher':<18} {'positions/s':>12} {'per hour':>10} {'ratio':>6}   ({args.workers} workers, "
          f"{args.positions} positions each, start-up included)")
    for setting, r in rates.items():
        print(f"{setting:<18} {r:12.1f} {r * 3600:10,.0f} {r / first:6.2f}")


if __name__ == "__main__":
    main()
