"""Matches and tournaments between players, each writing its results (``results.json``) and game
records into an output dir: one match (``play_and_record``), a round robin with an Elo table, a
gauntlet (the agent against a ladder of opponents) and the matches of a periodic evaluation (or its
rating on the rated ladder, ``PeriodicLadder``).

Interrupted (Ctrl-C), each keeps what was played: the finished games' records and a ``results.json``
over them marked ``"partial": true``, then raises ``MatchInterrupted`` again.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from keisei.config import ConfigError, EvaluationConfig, OpponentConfig, to_container
from keisei.evaluation.elo import ratings
from keisei.evaluation.opponents import build_opponent
from keisei.evaluation.report import gauntlet_table
from keisei.play.match import MatchGame, MatchInterrupted, match_results, on_workers, play_match, save_records
from keisei.play.players import Player

if TYPE_CHECKING:
    from keisei.evaluation.ladder import Rung


def play_and_record(agent: Player, opponent: Player, cfg: EvaluationConfig, out_dir: Path | None, *,
                    seed: int, progress: bool = False) -> dict[str, Any]:
    """One match of ``cfg.games`` games (colours alternating); returns its results (the agent's view,
    with the match's wall time in ``seconds``) and writes ``results.json`` and the game records into
    ``out_dir`` (if given).

    Interrupted (Ctrl-C), it writes the games that had finished and ``results.json`` with
    ``"partial": true`` and ``"games_planned"``, then raises ``MatchInterrupted`` again."""
    interrupted = None
    start = time.monotonic()
    if out_dir is not None:  # a rerun into this dir starts afresh: an earlier run's results never count as this one's
        (out_dir / "results.json").unlink(missing_ok=True)
        (out_dir / "games" / "games.jsonl").unlink(missing_ok=True)
    try:
        games = _play(agent, opponent, cfg, seed=seed, progress=progress)
    except MatchInterrupted as exc:
        interrupted, games = exc, exc.games
        if not games:
            raise
    results = match_results(games, agent.name, opponent.name) | {"seconds": round(time.monotonic() - start, 3)}
    if interrupted is not None:
        results.update(partial=True, games_planned=interrupted.planned)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.save_records:
            save_records(games, agent.name, opponent.name, out_dir / "games")
        write_json(out_dir / "results.json", results)
    if interrupted is not None:
        print(f"interrupted: {len(games)} of {interrupted.planned} games played; partial results kept"
              + (f" in {out_dir / 'results.json'}" if out_dir is not None else ""), file=sys.stderr)
        raise interrupted
    return results


def round_robin(players: list[Player], cfg: EvaluationConfig, out_dir: Path, *, seed: int,
                progress: bool = False) -> dict[str, Any]:
    """Every pair plays ``cfg.games`` games (the k-th pairing seeded ``seed + k``); returns and writes
    ``results.json``: ``players``, ``pairings`` (each pair's results) and ``elo``, a table fitted to
    all the games (first player at 0, best first); the records go to ``out_dir/games``.

    Interrupted, it keeps the pairings so far (the interrupted one's finished games included), rates
    the players that played, lists the others under ``"unrated"`` and raises ``MatchInterrupted``."""
    names = [p.name for p in players]
    if len(set(names)) != len(names):
        raise ConfigError(f"evaluation.players: round robin players need distinct names, got {names}")
    (out_dir / "games" / "games.jsonl").unlink(missing_ok=True)  # a rerun into this dir starts afresh
    pairings, scores, interrupted = _play_pairings(players, cfg, out_dir, seed=seed, progress=progress)
    if interrupted is not None and not scores:
        raise interrupted
    table = ratings(names, scores)  # only players with games: an interrupted run may leave some out
    summary = {"players": names, "pairings": pairings,
               "elo": dict(sorted(table.items(), key=lambda kv: -kv[1]))}
    if interrupted is not None:
        summary["partial"] = True
        summary["unrated"] = [n for n in names if n not in table]
    write_json(out_dir / "results.json", summary)
    if interrupted is not None:
        print(f"interrupted: partial results of {len(pairings)} pairing(s) kept in {out_dir / 'results.json'}",
              file=sys.stderr)
        raise interrupted
    return summary


def _play_pairings(players: list[Player], cfg: EvaluationConfig, out_dir: Path, *, seed: int, progress: bool
                   ) -> tuple[list[dict[str, Any]], list[tuple[str, str, float]], MatchInterrupted | None]:
    """The round robin's matches in turn, each one's records saved as it ends (numbered on from the
    previous ones). Returns each pairing's results, every game as (a, b, a's score) for the Elo fit,
    and the Ctrl-C that stopped them (``None``: all played)."""
    pairings: list[dict[str, Any]] = []
    scores: list[tuple[str, str, float]] = []
    start = 0
    for k, (a, b) in enumerate(itertools.combinations(players, 2)):
        interrupted = None
        began = time.monotonic()
        try:
            games = _play(a, b, cfg, seed=seed + k, progress=progress)
        except MatchInterrupted as exc:  # keep what was played: the pairings so far and this one's games
            interrupted, games = exc, exc.games
        if games:
            pairings.append(match_results(games, a.name, b.name) | {"seconds": round(time.monotonic() - began, 3)})
            scores += [(a.name, b.name, _score(m)) for m in games]
            if cfg.save_records:
                save_records(games, a.name, b.name, out_dir / "games", start=start)
            start += len(games)
        if interrupted is not None:
            return pairings, scores, interrupted
    return pairings, scores, None


def gauntlet(agent: Player, opponents: list[Player], cfg: EvaluationConfig, out_dir: Path, *, seed: int,
             progress: bool = False, held_out: list[bool] | None = None) -> dict[str, Any]:
    """The agent against each opponent of a ladder in turn (``cfg.games`` games each, colours
    alternating): each match in ``out_dir/<k>-<opponent>/``, and a table (``results.json``,
    ``results.md``) of win rate, interval, Elo and error per opponent. ``score``: the mean score.
    ``held_out`` (one per opponent): whether the agent never trained against it, a column of the table.

    Interrupted, it keeps the matches so far (the interrupted one's finished games included) in a
    ``results.json`` marked ``"partial": true`` and raises ``MatchInterrupted``."""
    matches: list[dict[str, Any]] = []
    interrupted = None
    (out_dir / "results.json").unlink(missing_ok=True)  # an earlier run's table in this dir is not this run's
    for k, opponent in enumerate(opponents):
        match_dir = out_dir / f"{k:02d}-{re.sub(r'[^A-Za-z0-9_.+-]+', '_', opponent.name)}"
        try:
            matches.append(play_and_record(agent, opponent, cfg, match_dir, seed=seed + k, progress=progress))
        except MatchInterrupted as exc:
            interrupted = exc
            if (match_dir / "results.json").is_file():
                matches.append(json.loads((match_dir / "results.json").read_text(encoding="utf-8")))
            break
    if interrupted is not None and not matches:
        raise interrupted
    if held_out is not None:
        matches = [{**m, "held_out": h} for m, h in zip(matches, held_out, strict=False)]
    table = gauntlet_table(agent.name, cfg.games, matches)
    summary = {"player": agent.name, "matches": matches, "score": sum(r["score"] for r in matches) / len(matches),
               "table": table}
    if interrupted is not None:
        summary["partial"] = True
    write_json(out_dir / "results.json", summary)
    (out_dir / "results.md").write_text(table, encoding="utf-8")
    if interrupted is not None:
        raise interrupted
    return summary


@dataclass(frozen=True)
class PeriodicLadder:
    """What a periodic evaluation needs to rate the network on the ladder (``evaluation=ladder``),
    composed before training starts: the rated rungs (``keisei.evaluation.ladder.load_ladder``), their
    opponent configs by preset, and the presets the run trains against (not held out)."""

    rungs: list[Rung]
    presets: dict[str, OpponentConfig]
    trained_against: frozenset[str]

    def rate(self, agent: Player, cfg: EvaluationConfig, out_dir: Path, device: torch.device, seed: int
             ) -> dict[str, Any]:
        """The agent's rating on the ladder (``rate_agent``, which builds and closes each rung played)."""
        from keisei.evaluation.ladder import rate_agent  # keisei.evaluation.ladder imports this module

        def build(rung: Rung, rung_seed: int) -> Player:
            return build_opponent(self.presets[rung.preset], device, rung_seed)

        return rate_agent(agent, self.rungs, build, cfg, out_dir, seed=seed, trained_against=self.trained_against)

    def to_json(self) -> dict[str, Any]:
        """As plain JSON, for the background worker."""
        return {"rungs": [asdict(r) for r in self.rungs], "trained_against": sorted(self.trained_against),
                "presets": {p: to_container(op) for p, op in self.presets.items()}}


def periodic_matches(agent: Player, main: Player | PeriodicLadder, others: dict[str, Player], cfg: EvaluationConfig,
                     out_dir: Path, *, seed: int, device: torch.device
                     ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A periodic evaluation: the match against the ``main`` opponent, or the agent's rating on the
    ``main`` ladder, into ``out_dir``; then a match against each of ``others`` (by preset name) into
    ``out_dir/<name>/``. Returns (the match's results or the rating, the others' results).

    Every player is reseeded here, as ``evaluate.py`` seeds them (agent ``seed``, opponent ``seed + 1``,
    the k-th other ``seed + 1 + k``; ladder rungs are built afresh, as ``rate_agent`` seeds them), so an
    evaluation plays the same games inline, where the opponents are built once per run, and in the
    background worker, where they are built for each evaluation."""
    agent.reseed(seed)
    if isinstance(main, PeriodicLadder):
        results = main.rate(agent, cfg, out_dir, device, seed)
    else:
        main.reseed(seed + 1)
        results = play_and_record(agent, main, cfg, out_dir, seed=seed)
    played = {}
    for k, (name, player) in enumerate(others.items(), start=1):
        player.reseed(seed + 1 + k)
        played[name] = play_and_record(agent, player, cfg, out_dir / name, seed=seed + k)
    return results, played


def say_where(a: Player, b: Player, cfg: EvaluationConfig) -> None:
    """With ``evaluation.workers`` > 1, say whether this match's games run on the env workers."""
    if cfg.workers > 1:
        where = (f"games stepped by {cfg.workers} env worker processes" if on_workers(a, b) else
                 "played in this process (evaluation.workers applies to two networks without search)")
        print(f"{a.name} vs {b.name}: {where}", flush=True)


def _play(a: Player, b: Player, cfg: EvaluationConfig, *, seed: int, progress: bool) -> list[MatchGame]:
    """The games of ``a`` against ``b`` under the ``evaluation`` settings (raises ``MatchInterrupted``)."""
    say_where(a, b, cfg)
    return play_match(a, b, cfg.games, max_plies=cfg.max_plies, declaration=cfg.declaration,
                      opening_plies=cfg.opening_plies, seed=seed, progress=progress, workers=cfg.workers)


def _score(game: MatchGame) -> float:
    """The first player's score in a game: 1 a win, 0.5 a draw, 0 a loss."""
    winner = game.game.winner
    return 0.5 if winner is None else float(winner is game.a_colour)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
