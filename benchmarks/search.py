"""Search at play time: nodes per second (batched vs unbatched leaves), where a search's time goes, and
search vs the raw policy.

(a) Nodes per second of ``keisei.play.search.Search`` on positions of random openings, for leaves
evaluated one at a time (``batch_size`` 1), in batches of ``--batch-size`` (virtual loss), and with
``--lockstep`` games searched together; measured side by side in alternating rounds of one run,
reported as medians and the ratio batched / unbatched.

(b) Strength: the checkpoint's network with search (each of ``--simulations``; ``--simulations 1``
is the policy's move plus the mate search alone) against the same
network's raw policy (greedy; ``--baseline mate``: the policy with the same mate search, to isolate
what the tree adds), ``--games`` games per setting, colours alternating, each random
opening (``--opening-plies``) played with both colours; W/D/L, win rate with its 95 % Wilson
interval and the Elo difference (``keisei.play.match.match_results``).

    python benchmarks/search.py --checkpoint RUN_DIR_OR_FILE [--games 40] [--simulations 64 200]
        [--root puct|gumbel] [--threads 1] [--out results.json]

``--root`` is the searching side's root (``SearchConfig.root``: PUCT, or a Gumbel root with PUCT
below) in (a) and (b); the ``--baseline mate`` opponent keeps the PUCT root (one simulation: the
policy's move). The JSON output records it.

(c) Where one search's time goes (skipped with ``--no-costs``): the positions of (a), searched one
at a time with the search's own steps timed (each step's time exclusive of the steps it
calls): the network's forward pass (``Policy.logits_and_value``), encoding the leaves,
``Game.copy`` and ``Game.play_line`` per descent, the legal moves of the leaves, the root mate
search, the tree's own Python and numpy (the descents' selection and virtual loss; the expansion
of the leaves with their priors and the backup of their values) and the rest; the mate-in-one
test of each leaf (rsshogi, not reachable from Python to time in place) is timed afterwards on the
same leaf positions and taken out of the descents' time. Per playout and as shares of the
search's time, at ``--batch-size`` and at batch 1.

Without ``--checkpoint`` only (a) and (c) run, on an untrained ResNet of the CPU baseline's shape
(2 blocks of 32 channels); its speed is the same as a trained one's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keisei.config import ModelConfig, SearchConfig, SearchRoot
from keisei.evaluation.opponents import searching_name
from keisei.nn.checkpoint import load_model
from keisei.nn.model import build_model
from keisei.nn.policy import Policy
from keisei.play import search as search_module
from keisei.play.match import match_results, play_match
from keisei.play.players import AgentPlayer
from keisei.play.search import Search
from keisei.shogi import Encoder, Game, random_opening


def positions(count: int, seed: int) -> list[Game]:
    """Running positions after 6 to 40 random plies."""
    rng = np.random.default_rng(seed)
    return [random_opening(Game(), int(rng.integers(6, 40)), rng) for _ in range(count)]


def nodes_per_second(policy: Policy, games: list[Game], simulations: int, batch_size: int, lockstep: int,
                     root: SearchRoot = SearchRoot.puct) -> float:
    """Nodes/s of searching ``games``, ``lockstep`` of them at a time (fresh trees, no reuse)."""
    cfg = SearchConfig(simulations=simulations, batch_size=batch_size, reuse_tree=False, root=root)
    nodes, start = 0, time.perf_counter()
    for i in range(0, len(games), lockstep):
        nodes += sum(r.nodes for r in Search(policy, cfg).run(games[i:i + lockstep]))
    return nodes / (time.perf_counter() - start)


def speed(policy: Policy, args: argparse.Namespace) -> dict[str, float]:
    games = positions(args.positions, seed=1)
    settings = {"unbatched (batch 1)": (1, 1), f"batched (batch {args.batch_size})": (args.batch_size, 1),
                f"batched, {args.lockstep} games in lockstep": (args.batch_size, args.lockstep)}
    nodes_per_second(policy, games[:2], 32, args.batch_size, 1, args.root)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, (batch_size, lockstep) in settings.items():
            runs[name].append(nodes_per_second(policy, games, args.nps_simulations, batch_size, lockstep,
                                               args.root))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    base = medians["unbatched (batch 1)"]
    for name, value in medians.items():
        print(f"  {name:<36} {value:8.0f} nodes/s  x{value / base:.2f}   (rounds: "
              f"{', '.join(f'{v:.0f}' for v in runs[name])})")
    return medians


class StepTimer:
    """Exclusive times of the wrapped functions: a call's time less that of the timed calls it makes."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._nested = [0.0]  # per open call: the time of the timed calls made inside it

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        self.totals.setdefault(name, 0.0)
        self.calls.setdefault(name, 0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._nested.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._nested.pop()
                self.totals[name] += elapsed - inner
                self.calls[name] += 1
                self._nested[-1] += elapsed

        return timed

    @contextmanager
    def patch(self, owner: Any, attribute: str, name: str,
              function: Callable[..., Any] | None = None) -> Iterator[None]:
        """While inside, ``owner.attribute`` (a function, method or property) is timed under ``name``;
        with ``function``, that (which may call the original) replaces it, timed."""
        original = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        if isinstance(original, property):
            assert original.fget is not None
            setattr(owner, attribute, property(self.wrap(name, function or original.fget)))
        else:
            setattr(owner, attribute, self.wrap(name, function or original))
        try:
            yield
        finally:
            setattr(owner, attribute, original)


DESCENTS = "descents (selection, virtual loss)"
EXPANSION = "expansion and backup (priors, nodes)"


def search_costs(policy: Policy, games: list[Game], simulations: int, batch_size: int,
                 root: SearchRoot) -> tuple[float, int, dict[str, float]]:
    """One search of each of ``games`` with its steps timed: (seconds, playouts, seconds per step)."""
    timer, leaves = StepTimer(), []
    play_line = Game.play_line

    def kept_line(game: Game, moves: list) -> None:  # keep each leaf position for the mate-in-one timing
        play_line(game, moves)
        leaves.append(game)

    cfg = SearchConfig(simulations=simulations, batch_size=batch_size, reuse_tree=False, root=root)
    with ExitStack() as stack:
        stack.enter_context(timer.patch(Game, "play_line", "Game.play_line", kept_line))
        for owner, attribute, name in ((Policy, "logits_and_value", "network forward"),
                                       (Encoder, "encode", "encoding the leaves"), (Game, "copy", "Game.copy"),
                                       (Game, "legal_moves", "legal moves (leaves)"),
                                       (search_module, "find_mate", "root mate search"),
                                       (Search, "_collect", DESCENTS), (Search, "_expand_leaves", EXPANSION)):
            stack.enter_context(timer.patch(owner, attribute, name))
        start = time.perf_counter()
        nodes = sum(Search(policy, cfg).run([game])[0].nodes for game in games)
        total = time.perf_counter() - start
    running = [game for game in leaves if not game.is_over and game.ply < game.max_plies]
    start = time.perf_counter()
    for game in running:
        game.board.solve_mate_in_one()
    steps = dict(timer.totals)
    steps["mate in one (leaves)"] = time.perf_counter() - start
    steps[DESCENTS] -= steps["mate in one (leaves)"]  # made inside the descents
    steps["the rest (rounds, roots, Gumbel halving, results)"] = total - sum(steps.values())
    return total, nodes, steps


def costs(policy: Policy, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """``search_costs`` at ``--batch-size`` and at batch 1, printed per playout and as shares."""
    games = positions(args.positions, seed=1)
    search_costs(policy, games[:2], 32, args.batch_size, args.root)  # warm-up
    out = {}
    for batch_size in (args.batch_size, 1):
        total, nodes, steps = search_costs(policy, games, args.nps_simulations, batch_size, args.root)
        print(f"  batch {batch_size}: {nodes} playouts in {total:.2f} s, {1e6 * total / nodes:.0f} us a playout")
        for name, seconds in steps.items():
            print(f"    {name:<50} {1e6 * seconds / nodes:7.1f} us/playout  {100 * seconds / total:5.1f} %")
        out[f"batch {batch_size}"] = {"us_per_playout": 1e6 * total / nodes,
                                      **{name: seconds / total for name, seconds in steps.items()}}
    return out


def strength(model: torch.nn.Module, args: argparse.Namespace) -> list[dict]:
    results = []
    for simulations in args.simulations:
        cfg = SearchConfig(simulations=simulations, batch_size=args.batch_size, mate_plies=args.mate_plies,
                           root=args.root)
        searcher = AgentPlayer(model, name=f"{searching_name('net', cfg)}-mate{args.mate_plies}", seed=0,
                               search=cfg)
        if args.baseline == "raw":
            raw = AgentPlayer(model, name="raw")
        else:  # the policy's move, but with the same mate search (and mate-in-one avoidance)
            raw = AgentPlayer(model, name=f"policy+mate{args.mate_plies}",
                              search=SearchConfig(simulations=1, mate_plies=args.mate_plies))
        start = time.perf_counter()
        games = play_match(searcher, raw, args.games, max_plies=args.max_plies, opening_plies=args.opening_plies,
                           seed=args.seed)
        elapsed = time.perf_counter() - start
        r = match_results(games, searcher.name, raw.name)
        r["simulations"], r["mate_plies"], r["seconds"] = simulations, args.mate_plies, round(elapsed, 1)
        r["root"] = args.root.value
        results.append(r)
        print(f"  {simulations:>4} simulations, {args.root.value} root, mate search {args.mate_plies} plies, "
              f"vs {raw.name}: "
              f"{r['wins']}-{r['draws']}-{r['losses']} "
              f"(W-D-L of {r['games']}), score {r['score']:.3f}, win rate {r['win_rate']:.3f} "
              f"[{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}], Elo {r['elo']:+.0f} +- {r['elo_error']:.0f}; "
              f"{r['terminations']}; mean length {r['game_length']['mean']:.0f} plies; {elapsed:.0f} s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a checkpoint file or run dir; without it, only the speed part")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--positions", type=int, default=16, help="speed: positions searched per setting")
    parser.add_argument("--nps-simulations", type=int, default=128, help="speed: playouts per position")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lockstep", type=int, default=8, help="speed: games searched together")
    parser.add_argument("--rounds", type=int, default=3, help="speed: alternating rounds")
    parser.add_argument("--no-costs", dest="costs", action="store_false", help="skip (c), the search's costs")
    parser.add_argument("--games", type=int, default=40, help="strength: games per setting")
    parser.add_argument("--simulations", type=int, nargs="*", default=[64, 200], help="strength: settings")
    parser.add_argument("--mate-plies", type=int, default=3, help="strength: the searching side's mate search")
    parser.add_argument("--root", choices=[root.value for root in SearchRoot], default=SearchRoot.puct.value,
                        help="the searching side's root: puct (default) or gumbel (Gumbel root, PUCT below)")
    parser.add_argument("--baseline", choices=["raw", "mate"], default="raw",
                        help="strength: the opponent: the raw policy, or the policy with the same mate search")
    parser.add_argument("--max-plies", type=int, default=256)
    parser.add_argument("--opening-plies", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    args.root = SearchRoot(args.root)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, cfg = load_model(args.checkpoint)
        shape = cfg.model
    else:
        torch.manual_seed(0)
        shape = ModelConfig(blocks=2, channels=32, value_hidden=64)
        model = build_model(shape).eval()
    print(f"network: {shape.name.value} {shape.blocks} blocks x {shape.channels} channels; torch threads "
          f"{torch.get_num_threads()}; {args.root.value} root")
    print(f"(a) nodes/s, {args.positions} positions x {args.nps_simulations} playouts, median of {args.rounds} rounds:")
    out: dict = {"threads": torch.get_num_threads(), "root": args.root.value,
                 "nodes_per_second": speed(Policy(model), args)}
    if args.costs:
        print(f"(c) where a search's time goes, {args.positions} positions x {args.nps_simulations} playouts:")
        out["costs"] = costs(Policy(model), args)
    if args.checkpoint:
        print(f"(b) search vs {args.baseline} baseline, {args.games} games each, max {args.max_plies} plies, "
              f"{args.opening_plies} random opening plies:")
        out["strength"] = strength(model, args)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
