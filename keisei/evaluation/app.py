"""Evaluations: build the players a config names, play the matches, write the results.

``evaluate(cfg, out_dir)`` is what ``evaluate.py`` runs (single opponent or round robin);
``evaluate_agent`` plays one match, also for periodic evaluation during training
(``keisei.train.periodic_evaluation``), whose background worker is this module's
``python -m keisei.evaluation.app SNAPSHOT OUT_DIR CONFIG_JSON``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from keisei.config import (
    CONF,
    ConfigError,
    EvaluateConfig,
    EvaluationConfig,
    EvaluationMode,
    OpponentConfig,
    OpponentKind,
    SearchConfig,
    SearchRoot,
    WandbMode,
    register_configs,
    to_container,
    validate_evaluate,
)
from keisei.evaluation.elo import ratings
from keisei.nn.checkpoint import load_model
from keisei.play.match import MatchInterrupted, match_results, on_workers, play_match, save_records
from keisei.play.players import AgentPlayer, HeuristicPlayer, Player, RandomPlayer
from keisei.play.usi_client import UsiPlayer


def build_opponent(cfg: OpponentConfig, device: torch.device, seed: int) -> Player:
    """The player an ``opponent`` config describes."""
    if cfg.kind is OpponentKind.random:
        return RandomPlayer(seed, name=cfg.name or "random")
    if cfg.kind is OpponentKind.heuristic:
        return HeuristicPlayer(seed, name=cfg.name or "heuristic")
    if cfg.kind is OpponentKind.checkpoint:
        return checkpoint_player(str(cfg.checkpoint), device, cfg.temperature, seed, cfg.name, cfg.search)
    return UsiPlayer(str(cfg.command), args=cfg.args, options=cfg.options, movetime_ms=cfg.movetime_ms,
                     byoyomi_ms=cfg.byoyomi_ms, depth=cfg.depth, timeout_s=cfg.timeout_s, name=cfg.name)


def checkpoint_player(path: str, device: torch.device, temperature: float, seed: int,
                      name: str | None = None, search: SearchConfig | None = None) -> AgentPlayer:
    """A trained agent rebuilt from its checkpoint file (or run dir) alone; it searches when
    ``search.simulations`` > 0, and its name then says so (``+search200``), as do the records."""
    model, _ = load_model(path, device)
    return AgentPlayer(model, name=searching_name(name or path, search), temperature=temperature, device=device,
                       seed=seed, search=search)


def searching_name(name: str, search: SearchConfig | None) -> str:
    """``name``, plus ``+searchN`` for a player searching N simulations (``+searchN-gumbel`` with a Gumbel root)."""
    if search is None or not search.simulations:
        return name
    root = SearchRoot(search.root)
    suffix = "" if root is SearchRoot.puct else f"-{root.value}"
    return f"{name}+search{search.simulations}{suffix}"


def evaluate_agent(agent: Player, opponent: Player, cfg: EvaluationConfig, out_dir: Path | None, *,
                   seed: int, progress: bool = False) -> dict[str, Any]:
    """One match; writes ``results.json`` and the game records into ``out_dir`` (if given).

    Interrupted (Ctrl-C), it writes the games that had finished and ``results.json`` with
    ``"partial": true`` and ``"games_planned"``, then raises ``MatchInterrupted`` again."""
    interrupted = None
    say_where(agent, opponent, cfg)
    try:
        games = play_match(agent, opponent, cfg.games, max_plies=cfg.max_plies, declaration=cfg.declaration,
                           opening_plies=cfg.opening_plies, seed=seed, progress=progress, workers=cfg.workers)
    except MatchInterrupted as exc:
        interrupted, games = exc, exc.games
        if not games:
            raise
    results = match_results(games, agent.name, opponent.name)
    if interrupted is not None:
        results.update(partial=True, games_planned=interrupted.planned)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.save_records:
            (out_dir / "games" / "games.jsonl").unlink(missing_ok=True)  # a rerun into this dir starts afresh
            save_records(games, agent.name, opponent.name, out_dir / "games")
        (out_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if interrupted is not None:
        print(f"interrupted: {len(games)} of {interrupted.planned} games played; partial results kept"
              + (f" in {out_dir / 'results.json'}" if out_dir is not None else ""), file=sys.stderr)
        raise interrupted
    return results


def say_where(a: Player, b: Player, cfg: EvaluationConfig) -> None:
    """With ``evaluation.workers`` > 1, say whether this match's games run on the env workers."""
    if cfg.workers > 1:
        where = (f"games stepped by {cfg.workers} env worker processes" if on_workers(a, b) else
                 "played in this process (evaluation.workers applies to two networks without search)")
        print(f"{a.name} vs {b.name}: {where}", flush=True)


def round_robin(players: list[Player], cfg: EvaluationConfig, out_dir: Path, *, seed: int,
                progress: bool = False) -> dict[str, Any]:
    """Every pair plays ``cfg.games`` games; pairwise results and an Elo table (first player at 0)."""
    pairings, results = [], []
    names = [p.name for p in players]
    if len(set(names)) != len(names):
        raise ConfigError(f"evaluation.players: round robin players need distinct names, got {names}")
    start = 0
    (out_dir / "games" / "games.jsonl").unlink(missing_ok=True)  # a rerun into this dir starts afresh
    interrupted = None
    for k, (a, b) in enumerate(itertools.combinations(players, 2)):
        say_where(a, b, cfg)
        try:
            games = play_match(a, b, cfg.games, max_plies=cfg.max_plies, declaration=cfg.declaration,
                               opening_plies=cfg.opening_plies, seed=seed + k, progress=progress,
                               workers=cfg.workers)
        except MatchInterrupted as exc:  # keep what was played: the pairings so far and this one's games
            interrupted, games = exc, exc.games
            if not games:
                break
        pairings.append(match_results(games, a.name, b.name))
        for m in games:
            winner = m.game.winner
            results.append((a.name, b.name, 0.5 if winner is None else float(winner is m.a_colour)))
        if cfg.save_records:
            save_records(games, a.name, b.name, out_dir / "games", start=start)
        start += len(games)
        if interrupted is not None:
            break
    if interrupted is not None and not results:
        raise interrupted
    table = ratings(names, results)  # only players with games: an interrupted run may leave some out
    summary = {"players": names, "pairings": pairings,
               "elo": dict(sorted(table.items(), key=lambda kv: -kv[1]))}
    if interrupted is not None:
        summary["partial"] = True
        summary["unrated"] = [n for n in names if n not in table]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if interrupted is not None:
        print(f"interrupted: partial results of {len(pairings)} pairing(s) kept in {out_dir / 'results.json'}",
              file=sys.stderr)
        raise interrupted
    return summary


def gauntlet(agent: Player, opponents: list[Player], cfg: EvaluationConfig, out_dir: Path, *, seed: int,
             progress: bool = False) -> dict[str, Any]:
    """The agent against each opponent of a ladder in turn (``cfg.games`` games each, colours
    alternating): each match in ``out_dir/<k>-<opponent>/``, and a table (``results.json``,
    ``results.md``) of win rate, interval, Elo and error per opponent. ``score``: the mean score."""
    matches: list[dict[str, Any]] = []
    interrupted = None
    for k, opponent in enumerate(opponents):
        match_dir = out_dir / f"{k:02d}-{re.sub(r'[^A-Za-z0-9_.+-]+', '_', opponent.name)}"
        try:
            matches.append(evaluate_agent(agent, opponent, cfg, match_dir, seed=seed + k, progress=progress))
        except MatchInterrupted as exc:
            interrupted = exc
            if (match_dir / "results.json").is_file():
                matches.append(json.loads((match_dir / "results.json").read_text(encoding="utf-8")))
            break
    if interrupted is not None and not matches:
        raise interrupted
    rows = ["| opponent | games | +W =D -L | win rate [95 %] | Elo |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in matches:
        rows.append(f"| {r['opponent']} | {r['games']} | +{r['wins']} ={r['draws']} -{r['losses']} | "
                    f"{r['win_rate']:.3f} [{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}] | "
                    f"{r['elo']:+.0f} ± {r['elo_error']:.0f} |")
    table = f"{agent.name}, {cfg.games} games per opponent\n\n" + "\n".join(rows) + "\n"
    summary = {"player": agent.name, "matches": matches, "score": sum(r["score"] for r in matches) / len(matches),
               "table": table}
    if interrupted is not None:
        summary["partial"] = True
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out_dir / "results.md").write_text(table, encoding="utf-8")
    if interrupted is not None:
        raise interrupted
    return summary


def format_match(results: dict[str, Any]) -> str:
    r = results
    ends = ", ".join(f"{k} {v}" for k, v in r["terminations"].items())
    return (f"{r['player']} vs {r['opponent']}: {r['games']} games, +{r['wins']} ={r['draws']} -{r['losses']}, "
            f"score {r['score']:.3f}, win rate {r['win_rate']:.3f} "
            f"[{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}], "
            f"Elo {r['elo']:+.0f} ± {r['elo_error']:.0f}; ended by: {ends}; "
            f"length {r['game_length']['mean']:.0f} plies")


def eval_metrics(results: dict[str, Any], global_step: int,
                 others: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """The metrics record of a periodic evaluation: ``eval/win_rate``, ... of the match against
    ``opponent`` (``results``), and ``eval/<name>/win_rate``, ... of each match against one of
    ``evaluation.periodic_opponents`` (``others``: results by preset name)."""
    record = {"eval/global_step": global_step, **_match_metrics(results, "eval/")}
    for name, other in (others or {}).items():
        record.update(_match_metrics(other, f"eval/{name}/"))
    return record


def _match_metrics(results: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}win_rate": results["win_rate"], f"{prefix}score": results["score"],
            f"{prefix}draw_rate": results["draws"] / results["games"], f"{prefix}elo": results["elo"],
            f"{prefix}elo_error": results["elo_error"], f"{prefix}games": results["games"],
            f"{prefix}game_length": results["game_length"]["mean"]}


def opponent_preset(name: str) -> OpponentConfig:
    """The opponent config of preset ``conf/opponent/<name>.yaml``, composed by Hydra: by the running
    app (``evaluate.py``, ``train.py``), or, outside one, from ``conf/`` for the call."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"opponent={name}", "checkpoint=preset"]
    if GlobalHydra.instance().is_initialized():
        composed = compose(config_name="evaluate", overrides=overrides)
    else:
        register_configs()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            composed = compose(config_name="evaluate", overrides=overrides)
    return validate_evaluate(composed).opponent


def periodic_opponents(ev: EvaluationConfig, main: OpponentConfig) -> dict[str, OpponentConfig]:
    """The opponent configs of ``evaluation.periodic_opponents`` by preset name, composed now (before
    training starts). A preset that cannot be played as it stands (``checkpoint``, ``usi``: they need a
    path) or that is the main ``opponent`` again is a ``ConfigError`` naming the key."""
    key = "evaluation.periodic_opponents"
    presets: dict[str, OpponentConfig] = {}
    for name in ev.periodic_opponents:
        try:
            op = opponent_preset(name)
        except (ConfigError, MissingMandatoryValue) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{key}={ev.periodic_opponents!r}: preset {name!r} cannot be played as it stands "
                              f"({detail}); make it the main opponent instead (opponent={name} ...)") from None
        if op == main:
            raise ConfigError(f"{key}={ev.periodic_opponents!r}: {name!r} is the main opponent already "
                              "(its results are eval/win_rate, ...)")
        presets[name] = op
    return presets


def periodic_matches(agent: Player, opponent: Player, others: dict[str, Player], cfg: EvaluationConfig,
                     out_dir: Path, *, seed: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A periodic evaluation: the match against ``opponent`` into ``out_dir``, then one against each of
    ``others`` (by preset name) into ``out_dir/<name>/``. Returns (results, the others' results).

    Every player is reseeded here, as ``evaluate.py`` seeds them (agent ``seed``, opponent ``seed + 1``,
    the k-th other ``seed + 1 + k``), so an evaluation plays the same games inline, where the opponents
    are built once per run, and in the background worker, where they are built for each evaluation."""
    agent.reseed(seed)
    opponent.reseed(seed + 1)
    results = evaluate_agent(agent, opponent, cfg, out_dir, seed=seed)
    played = {}
    for k, (name, player) in enumerate(others.items(), start=1):
        player.reseed(seed + 1 + k)
        played[name] = evaluate_agent(agent, player, cfg, out_dir / name, seed=seed + k)
    return results, played


def evaluate(cfg: EvaluateConfig, out_dir: Path) -> float:
    """What ``evaluate.py`` does: the checkpoint against one opponent, a gauntlet of opponents or in a
    round robin; prints the results, writes them to ``out_dir`` (and W&B if enabled). Returns the
    agent's win rate (single opponent), mean score (gauntlet) or Elo (round robin)."""
    from keisei.runtime import resolve_device

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    ev, progress = cfg.evaluation, cfg.logging.progress_bar
    agent = checkpoint_player(cfg.checkpoint, device, ev.temperature, cfg.seed, search=ev.search)
    others: list[Player] = []
    try:
        if ev.mode is EvaluationMode.single_opponent:
            others.append(build_opponent(cfg.opponent, device, cfg.seed + 1))
            results = evaluate_agent(agent, others[0], ev, out_dir, seed=cfg.seed, progress=progress)
            print(format_match(results))
            objective = results["win_rate"]
        else:
            for k, spec in enumerate(ev.players, start=1):
                if (CONF / "opponent" / f"{spec}.yaml").is_file():
                    others.append(build_opponent(opponent_preset(spec), device, cfg.seed + k))
                else:
                    others.append(checkpoint_player(spec, device, ev.temperature, cfg.seed + k, search=ev.search))
        if ev.mode is EvaluationMode.gauntlet:
            results = gauntlet(agent, others, ev, out_dir, seed=cfg.seed, progress=progress)
            print(results["table"])
            objective = results["score"]
        elif ev.mode is EvaluationMode.round_robin:
            results = round_robin([agent, *others], ev, out_dir, seed=cfg.seed, progress=progress)
            for pairing in results["pairings"]:
                print(format_match(pairing))
            print("Elo (first player at 0): " + ", ".join(f"{k} {v:+.0f}" for k, v in results["elo"].items()))
            objective = results["elo"][agent.name]
    finally:
        for player in others:
            player.close()
    records = out_dir / ("NN-<opponent>/games" if ev.mode is EvaluationMode.gauntlet else "games")
    print(f"results: {out_dir / 'results.json'}" + (f", records: {records}" if ev.save_records else ""))
    if cfg.wandb.mode is not WandbMode.disabled:
        import wandb

        run = wandb.init(mode=cfg.wandb.mode.value, project=cfg.wandb.project, entity=cfg.wandb.entity,
                         name=cfg.wandb.name, group=cfg.wandb.group, tags=list(cfg.wandb.tags),
                         config=to_container(cfg), dir=str(out_dir), job_type="evaluation")
        run.summary.update(json.loads((out_dir / "results.json").read_text()))
        run.finish()
    return objective


def _worker(argv: list[str] | None = None) -> None:
    """Background evaluation: a snapshot checkpoint against the configured opponent, then against each
    of the ``periodic_opponents`` (their configs, composed by the trainer, by preset name)."""
    parser = argparse.ArgumentParser(prog="python -m keisei.evaluation.app")
    parser.add_argument("snapshot")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("config", help="JSON with 'evaluation', 'opponent', 'periodic_opponents', 'seed', 'device'")
    args = parser.parse_args(argv)
    spec = json.loads(args.config)
    ev: EvaluationConfig = OmegaConf.to_object(  # type: ignore[assignment]
        OmegaConf.merge(OmegaConf.structured(EvaluationConfig), spec["evaluation"]))

    def opponent_config(data: dict[str, Any]) -> OpponentConfig:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(OpponentConfig), data))  # type: ignore

    device = torch.device(spec["device"])
    torch.set_num_threads(1)  # leave the cores to training
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped by the trainer: close the engines below
    agent = checkpoint_player(args.snapshot, device, ev.temperature, spec["seed"], name="agent", search=ev.search)
    players: list[Player] = []  # seeded by periodic_matches
    try:
        players.append(build_opponent(opponent_config(spec["opponent"]), device, spec["seed"]))
        others: dict[str, Player] = {}
        for name, data in spec.get("periodic_opponents", {}).items():
            others[name] = build_opponent(opponent_config(data), device, spec["seed"])
            players.append(others[name])
        periodic_matches(agent, players[0], others, ev, args.out_dir, seed=spec["seed"])
    finally:
        for player in players:
            player.close()


if __name__ == "__main__":
    sys.exit(_worker())
