"""The rating ladder: fixed opponents (``conf/evaluation/ladder.yaml``, weakest first) rated once on
one Elo scale (``ladder.json`` beside this file, written by ``scripts/rate_ladder.py``), and an
agent's rating on that scale.

``rate_ladder`` plays every rung against its neighbour and next neighbour (``games`` each, one
match dir per pair, skipped when already played: it resumes) and fits all rungs' ratings together,
the ``anchor`` rung at 0. ``rate_agent`` plays the agent against a few rungs chosen as it goes (each
the unplayed rung rated nearest the agent's rating so far, starting mid-ladder) and fits the agent's
rating against the rungs' fixed ratings.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from keisei.config import ConfigError, EvaluationConfig, OpponentConfig, TrainConfig, from_container
from keisei.evaluation.elo import rating_against, rating_errors, ratings
from keisei.evaluation.opponents import build_opponent
from keisei.evaluation.report import ladder_table
from keisei.evaluation.tournament import play_and_record, write_json
from keisei.nn.checkpoint import CheckpointError, load_checkpoint
from keisei.play.players import Player

LADDER_FILE = Path(__file__).with_name("ladder.json")


@dataclass(frozen=True)
class Rung:
    preset: str  # conf/opponent/<preset>.yaml
    name: str  # the player's name in results and records
    elo: float
    error: float  # 95 % half-width, relative to the anchor


def load_ladder(presets: list[str], max_plies: int, path: Path = LADDER_FILE) -> list[Rung]:
    """The rated rungs of ``presets`` (``evaluation.players`` of ``evaluation=ladder``); a preset
    that ``path`` does not rate, or a ``max_plies`` other than the rating's, is a ``ConfigError``
    naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: no rated ladder (python scripts/rate_ladder.py writes it)")
    ladder = json.loads(path.read_text(encoding="utf-8"))
    if ladder["max_plies"] != max_plies:
        raise ConfigError(f"evaluation.max_plies={max_plies}: the ladder was rated with games of at most "
                          f"{ladder['max_plies']} plies; its ratings hold for that limit only")
    rated = {r["preset"]: r for r in ladder["rungs"]}
    missing = [p for p in presets if p not in rated]
    if missing:
        raise ConfigError(f"evaluation.players: {', '.join(missing)} not rated in {path} "
                          "(rate the ladder again: python scripts/rate_ladder.py)")
    return [Rung(**{k: rated[p][k] for k in ("preset", "name", "elo", "error")}) for p in presets]


def trained_against(cfg: TrainConfig, _depth: int = 0) -> frozenset[str]:
    """The ladder's presets that a run's agent played in training: the heuristic player when its
    opponent pool has one (``training.opponent_pool.heuristic_fraction``), and those of the run it
    started from (``training.init_checkpoint``, followed back while its checkpoints exist; one that is
    gone is named in a warning); every other rung is held out."""
    own = frozenset({"heuristic"}) if cfg.training.opponent_pool.heuristic_fraction > 0 else frozenset()
    start = cfg.training.init_checkpoint
    if not start or _depth >= 32:  # a chain of starts that long is a loop
        return own
    try:
        config = load_checkpoint(start)["config"]
    except CheckpointError as exc:
        print(f"warning: the agent started from {start}, which cannot be read ({exc}): the rungs that run "
              "trained against are not known, and count as held out", file=sys.stderr)
        return own
    return own | trained_against(from_container(config), _depth + 1)


def pairs(n: int) -> list[tuple[int, int]]:
    """The pairs of rungs (by index) that ``rate_ladder`` plays: neighbours and next neighbours."""
    return [(i, j) for i in range(n) for j in (i + 1, i + 2) if j < n]


def rate_ladder(rungs: dict[str, OpponentConfig], cfg: EvaluationConfig, out_dir: Path, *, anchor: str,
                seed: int, progress: bool = True) -> dict[str, Any]:
    """Rate ``rungs`` (opponent configs by preset name, weakest first): each pair of ``pairs`` plays
    ``cfg.games`` games into ``out_dir/<preset>--<preset>/`` unless a complete ``results.json`` is there
    already (in either order: the ladder may have been reordered since); then one maximum-likelihood
    fit of all the games of those pairs and of any other pair of these rungs played there before
    (``anchor`` at 0). Returns the ladder (as ``ladder.json`` stores it)."""
    presets = list(rungs)
    matches = []
    for k, (i, j) in enumerate(tqdm(pairs(len(presets)), desc="ladder pairs", disable=not progress)):
        played = _played(out_dir, presets[i], presets[j], cfg.games)
        if played is not None:
            matches.append(played)
            continue
        a, b = (build_opponent(rungs[presets[n]], torch.device("cpu"), seed + 2 * k + m) for m, n in enumerate((i, j)))
        try:
            matches.append(play_and_record(a, b, cfg, out_dir / f"{presets[i]}--{presets[j]}", seed=seed + k))
        finally:
            a.close()
            b.close()
    names = [rungs[p].name or rungs[p].kind.value for p in presets]
    return fit_ladder(presets, names, matches + _earlier_pairs(presets, out_dir, cfg.games), anchor, cfg.games)


def _earlier_pairs(presets: list[str], out_dir: Path, games: int) -> list[dict[str, Any]]:
    """The complete matches in ``out_dir`` between rungs of ``presets`` that ``pairs`` does not
    name: the neighbours of an earlier order of the ladder."""
    required = {frozenset((presets[i], presets[j])) for i, j in pairs(len(presets))}
    others = [(a, b) for i, a in enumerate(presets) for b in presets[i + 1:] if frozenset((a, b)) not in required]
    return [m for a, b in others if (m := _played(out_dir, a, b, games)) is not None]


def _played(out_dir: Path, a: str, b: str, games: int) -> dict[str, Any] | None:
    """The results of a complete match of ``games`` games between presets ``a`` and ``b`` in
    ``out_dir``, if any (a match of another length is played again)."""
    for path in (out_dir / f"{a}--{b}" / "results.json", out_dir / f"{b}--{a}" / "results.json"):
        if path.is_file():
            results = json.loads(path.read_text(encoding="utf-8"))
            if not results.get("partial") and results["games"] == games:
                return results
    return None


def fit_ladder(presets: list[str], names: list[str], matches: list[dict[str, Any]], anchor: str,
               games: int) -> dict[str, Any]:
    """The ladder's ratings from its pairs' ``matches``: each rung's Elo and 95 % half-width
    relative to ``anchor`` (a preset), best last, and the minutes the matches took, as ``ladder.json``
    stores them."""
    scores = [(m["player"], m["opponent"], s) for m in matches for s in _game_scores(m)]
    anchor_name = names[presets.index(anchor)]
    elo = ratings(names, scores, anchor=anchor_name)
    error = rating_errors(elo, scores, anchor_name)
    rungs = [asdict(Rung(p, n, round(elo[n], 1), round(error[n], 1))) for p, n in zip(presets, names, strict=True)]
    pair_rows = [{k: m[k] for k in ("player", "opponent", "games", "wins", "draws", "losses", "score")}
                 for m in matches]
    return {"anchor": anchor, "games_per_pair": games, "rungs": rungs, "pairs": pair_rows,
            "minutes": match_minutes(matches)}


def match_minutes(matches: list[dict[str, Any]]) -> float | None:
    """The wall time of ``matches`` in minutes, whenever (and in however many calls) they were
    played; None if one of them has no recorded time (a ``results.json`` older than ``seconds``)."""
    if any("seconds" not in m for m in matches):
        return None
    return round(sum(m["seconds"] for m in matches) / 60, 3)


def _game_scores(m: dict[str, Any]) -> list[float]:
    """A match's games as the first player's scores (1, 0.5, 0), from its W/D/L counts."""
    return [1.0] * m["wins"] + [0.5] * m["draws"] + [0.0] * m["losses"]


def rate_agent(agent: Player, rungs: list[Rung], build: Callable[[Rung, int], Player], cfg: EvaluationConfig,
               out_dir: Path | None, *, seed: int, trained_against: frozenset[str] = frozenset(),
               progress: bool = False) -> dict[str, Any]:
    """The agent's rating on the ladder: ``cfg.ladder_rungs`` rungs, ``cfg.games`` games each (colours
    alternating), the first mid-ladder, each next one the unplayed rung rated nearest the agent's
    rating so far; only rungs it never trained against (``trained_against``: they would rate what it
    learnt against them, not its strength) unless every rung is one. Returns (and writes to
    ``out_dir/results.json``, with a markdown table in ``results.md`` and each match in
    ``out_dir/<k>-<rung>/``) ``elo``, ``elo_error`` (95 %), and the per-rung ``matches``, each
    marked ``held_out``.

    Interrupted, it rates the agent on the games played (``"partial": true``) and raises again."""
    played: list[tuple[Rung, dict[str, Any]]] = []
    rungs = [r for r in rungs if r.preset not in trained_against] or rungs
    estimate = rungs[len(rungs) // 2].elo
    interrupted = None
    if out_dir is not None:  # an earlier run's rating in this dir is not this run's
        (out_dir / "results.json").unlink(missing_ok=True)
    for k in range(min(cfg.ladder_rungs, len(rungs))):
        rung = min((r for r in rungs if r not in {p for p, _ in played}), key=lambda r: abs(r.elo - estimate))
        match_dir = None if out_dir is None else out_dir / f"{k:02d}-{re.sub(r'[^A-Za-z0-9_.+-]+', '_', rung.name)}"
        if match_dir is not None:  # an earlier run's match in this dir is not this run's
            (match_dir / "results.json").unlink(missing_ok=True)
        try:  # Ctrl-C during a match, or between two (an engine starting): the games so far are rated
            opponent = build(rung, seed + 1 + k)
            try:
                played.append((rung, play_and_record(agent, opponent, cfg, match_dir, seed=seed + k,
                                                     progress=progress)))
            finally:
                opponent.close()
            estimate = _fit(played)[0]
        except KeyboardInterrupt as exc:
            interrupted = exc
            done = match_dir is not None and (match_dir / "results.json").is_file()
            if done and (not played or played[-1][0] is not rung):
                played.append((rung, json.loads((match_dir / "results.json").read_text(encoding="utf-8"))))
            break
    if not played:
        raise interrupted or RuntimeError("no rung played")
    summary = _summary(agent.name, played, trained_against)
    if interrupted is not None:
        summary["partial"] = True
    if out_dir is not None:
        write_json(out_dir / "results.json", summary)
        (out_dir / "results.md").write_text(summary["table"], encoding="utf-8")
    if interrupted is not None:
        print(f"interrupted: a rating from {sum(m['games'] for _, m in played)} games kept", file=sys.stderr)
        raise interrupted
    return summary


def _fit(played: list[tuple[Rung, dict[str, Any]]]) -> tuple[float, float]:
    """The agent's rating and 95 % half-width from its matches against rated rungs."""
    fixed = {r.name: r.elo for r, _ in played}
    return rating_against(fixed, [(r.name, s) for r, m in played for s in _game_scores(m)])


def _summary(player: str, played: list[tuple[Rung, dict[str, Any]]], trained_against: frozenset[str]
             ) -> dict[str, Any]:
    elo, error = _fit(played)
    matches = [{**m, "rung": r.preset, "rung_elo": r.elo, "held_out": r.preset not in trained_against}
               for r, m in sorted(played, key=lambda rm: rm[0].elo)]
    return {"player": player, "elo": elo, "elo_error": error, "games": sum(m["games"] for m in matches),
            "minutes": match_minutes(matches), "matches": matches, "table": ladder_table(player, elo, error, matches)}
