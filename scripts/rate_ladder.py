"""Rate the ladder's rungs (``conf/evaluation/ladder.yaml``, ``evaluation.players``) on one Elo scale
and store the ratings in ``keisei/evaluation/ladder.json``:

    python scripts/rate_ladder.py [--games 200] [--anchor random] [--out outputs/ladder_rating]

Every rung plays its neighbour and next neighbour ``--games`` games (colours alternating, the
ladder's ``max_plies``). Each pair's match is kept in ``--out``; run it again to resume (pairs
already played are read back, not replayed). Ctrl-C keeps the finished games of the pair it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keisei.config import CONF, register_configs, validate_evaluate
from keisei.evaluation.ladder import LADDER_FILE, rate_ladder
from keisei.evaluation.opponents import opponent_preset
from keisei.play.match import MatchInterrupted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=200, help="games per pair of rungs")
    parser.add_argument("--anchor", default="random", help="the rung rated 0 (a preset of the ladder)")
    parser.add_argument("--out", type=Path, default=Path("outputs/ladder_rating"), help="the pairs' matches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ladder-file", type=Path, default=LADDER_FILE, help="where the ratings are written")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = validate_evaluate(compose(config_name="evaluate", overrides=[
            "evaluation=ladder", "checkpoint=none", f"evaluation.games={args.games}"]))
        presets = list(cfg.evaluation.players)
        if args.anchor not in presets:
            sys.exit(f"--anchor {args.anchor!r}: not a rung of the ladder ({', '.join(presets)})")
        ops = {p: opponent_preset(p) for p in presets}
    try:
        ladder = rate_ladder(ops, cfg.evaluation, args.out, anchor=args.anchor, seed=args.seed)
    except MatchInterrupted:
        sys.exit(f"interrupted: the pairs played so far are kept in {args.out}; run again to resume")
    ladder.update(max_plies=cfg.evaluation.max_plies,
                  command=f"python scripts/rate_ladder.py --games {args.games} --anchor {args.anchor}",
                  date=time.strftime("%Y-%m-%d"))
    args.ladder_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.ladder_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ladder, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.ladder_file)
    for r in ladder["rungs"]:
        print(f"{r['name']:40s} {r['elo']:7.0f} ± {r['error']:.0f}")
    print(f"ratings: {args.ladder_file}")


if __name__ == "__main__":
    main()
