"""The background worker of periodic evaluation (``evaluation.periodic=background``), started by
``keisei.train.periodic_evaluation`` while training goes on::

    python -m keisei.evaluation.worker SNAPSHOT OUT_DIR CONFIG_JSON [--trainer PID]

It plays the snapshot checkpoint against the configured opponent (or, given a ``ladder``, rates it
on the ladder's rungs), then against each of the ``periodic_opponents`` (their configs, composed by
the trainer, by preset name), as ``periodic_matches`` does inline, and writes their results into
``OUT_DIR`` (``OUT_DIR/<name>/``). It stops, closing its engines, on the trainer's SIGTERM, and by
itself once the trainer is gone.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from keisei.config import EvaluationConfig, OpponentConfig
from keisei.evaluation.ladder import Rung
from keisei.evaluation.opponents import build_opponent, checkpoint_player
from keisei.evaluation.tournament import PeriodicLadder, periodic_matches
from keisei.play.players import Player


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and play the evaluation's matches; the opponents' engines are closed at
    the end, also when the trainer stops the worker (SIGTERM)."""
    parser = argparse.ArgumentParser(prog="python -m keisei.evaluation.worker")
    parser.add_argument("snapshot")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("config", help="JSON with 'evaluation', 'opponent', 'periodic_opponents', 'ladder', "
                                       "'seed', 'device'")
    parser.add_argument("--trainer", type=int, default=None, help="the trainer's pid (default: the parent's)")
    args = parser.parse_args(argv)
    spec = json.loads(args.config)
    ev: EvaluationConfig = _structured(EvaluationConfig, spec["evaluation"])
    device = torch.device(spec["device"])
    torch.set_num_threads(1)  # leave the cores to training
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped by the trainer: close the engines below
    _stop_with(os.getppid() if args.trainer is None else args.trainer)
    agent = checkpoint_player(args.snapshot, device, ev.temperature, spec["seed"], name="agent", search=ev.search)
    players: list[Player] = []  # seeded by periodic_matches
    try:
        main: Player | PeriodicLadder
        if spec.get("ladder"):
            main = _ladder(spec["ladder"])
        else:
            main = build_opponent(_structured(OpponentConfig, spec["opponent"]), device, spec["seed"])
            players.append(main)
        others: dict[str, Player] = {}
        for name, data in spec.get("periodic_opponents", {}).items():
            others[name] = build_opponent(_structured(OpponentConfig, data), device, spec["seed"])
            players.append(others[name])
        periodic_matches(agent, main, others, ev, args.out_dir, seed=spec["seed"], device=device)
    finally:
        for player in players:
            player.close()


def _stop_with(trainer: int) -> None:
    """SIGTERM this worker once its parent is not ``trainer`` (gone: killed, out of memory; also before the
    worker got here): an evaluation must not outlive its run, nor play beside the one a resumed run starts in
    the same directory."""
    def watch() -> None:
        while os.getppid() == trainer:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-trainer", daemon=True).start()


def _ladder(data: dict[str, Any]) -> PeriodicLadder:
    """The ladder of ``PeriodicLadder.to_json``."""
    return PeriodicLadder([Rung(**r) for r in data["rungs"]],
                          {p: _structured(OpponentConfig, op) for p, op in data["presets"].items()},
                          frozenset(data["trained_against"]))


def _structured(schema: type, data: dict[str, Any]) -> Any:
    """``data`` (a config section as plain JSON) as an instance of its schema dataclass."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))


if __name__ == "__main__":
    sys.exit(main())
