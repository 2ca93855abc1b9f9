"""What ``evaluate.py`` runs: ``run_evaluation(cfg, out_dir)`` measures a checkpoint against one
opponent, a gauntlet of opponents or in a round robin (``evaluation.mode``), prints the results and
writes them to ``out_dir`` (and to W&B if enabled).
"""

from __future__ import annotations

import json
from contextlib import ExitStack, closing
from pathlib import Path

import torch

from keisei.config import EvaluateConfig, EvaluationMode, TrainConfig, WandbMode, from_container
from keisei.evaluation.ladder import load_ladder, rate_agent, trained_against
from keisei.evaluation.opponents import build_opponent, checkpoint_player, listed_player, opponent_preset
from keisei.evaluation.report import format_match, format_round_robin
from keisei.evaluation.tournament import gauntlet, play_and_record, round_robin
from keisei.nn.checkpoint import load_checkpoint
from keisei.play.players import AgentPlayer, Player
from keisei.runtime import start_wandb


def run_evaluation(cfg: EvaluateConfig, out_dir: Path) -> float:
    """What ``evaluate.py`` does: the checkpoint against one opponent, a gauntlet of opponents or in a
    round robin, or its rating on the ladder; prints the results, writes them to ``out_dir`` (and W&B if
    enabled). Returns the agent's win rate (single opponent), mean score (gauntlet) or Elo (round robin,
    ladder)."""
    from keisei.runtime import resolve_device

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    ev = cfg.evaluation
    agent = checkpoint_player(cfg.checkpoint, device, ev.temperature, cfg.seed, search=ev.search)
    modes = {EvaluationMode.single_opponent: _single_opponent, EvaluationMode.gauntlet: _gauntlet,
             EvaluationMode.round_robin: _round_robin, EvaluationMode.ladder: _ladder}
    objective = modes[ev.mode](cfg, agent, device, out_dir)
    per_match = ev.mode in (EvaluationMode.gauntlet, EvaluationMode.ladder)
    records = out_dir / ("NN-<opponent>/games" if per_match else "games")
    print(f"results: {out_dir / 'results.json'}" + (f", records: {records}" if ev.save_records else ""))
    if cfg.wandb.mode is not WandbMode.disabled:
        _log_to_wandb(cfg, out_dir)
    return objective


def _single_opponent(cfg: EvaluateConfig, agent: AgentPlayer, device: torch.device, out_dir: Path) -> float:
    """The agent against ``opponent`` (seeded ``seed + 1``); returns the agent's win rate."""
    with closing(build_opponent(cfg.opponent, device, cfg.seed + 1)) as opponent:
        results = play_and_record(agent, opponent, cfg.evaluation, out_dir, seed=cfg.seed,
                                  progress=cfg.logging.progress_bar)
        print(format_match(results))
    return results["win_rate"]


def _gauntlet(cfg: EvaluateConfig, agent: AgentPlayer, device: torch.device, out_dir: Path) -> float:
    """The agent against each of ``evaluation.players`` in turn; returns its mean score."""
    trained = trained_against(_run_config(cfg))
    with ExitStack() as stack:
        opponents = _listed_players(cfg, device, stack)
        results = gauntlet(agent, opponents, cfg.evaluation, out_dir, seed=cfg.seed,
                           progress=cfg.logging.progress_bar,
                           held_out=[entry not in trained for entry in cfg.evaluation.players])
        print(results["table"])
    return results["score"]


def _round_robin(cfg: EvaluateConfig, agent: AgentPlayer, device: torch.device, out_dir: Path) -> float:
    """The agent and ``evaluation.players``, every pair; returns the agent's Elo (the first player's: 0)."""
    with ExitStack() as stack:
        players = [agent, *_listed_players(cfg, device, stack)]
        results = round_robin(players, cfg.evaluation, out_dir, seed=cfg.seed, progress=cfg.logging.progress_bar)
        print(format_round_robin(results))
    return results["elo"][agent.name]


def _ladder(cfg: EvaluateConfig, agent: AgentPlayer, device: torch.device, out_dir: Path) -> float:
    """The agent's rating on the ladder of ``evaluation.players`` (``keisei.evaluation.ladder``); returns it."""
    ev = cfg.evaluation
    rungs = load_ladder(list(ev.players), ev.max_plies)
    presets = {r.preset: opponent_preset(r.preset) for r in rungs}
    results = rate_agent(agent, rungs, lambda rung, seed: build_opponent(presets[rung.preset], device, seed), ev,
                         out_dir, seed=cfg.seed, trained_against=trained_against(_run_config(cfg)),
                         progress=cfg.logging.progress_bar)
    print(results["table"])
    return results["elo"]


def _run_config(cfg: EvaluateConfig) -> TrainConfig:
    """The config of the run that trained the checkpoint (what it trained against)."""
    return from_container(load_checkpoint(cfg.checkpoint)["config"])


def _listed_players(cfg: EvaluateConfig, device: torch.device, stack: ExitStack) -> list[Player]:
    """The players of ``evaluation.players`` (the k-th seeded ``seed + k``), each closed when ``stack``
    closes (also those already built when a later one fails to start)."""
    return [stack.enter_context(closing(listed_player(entry, cfg.evaluation, device, cfg.seed + k)))
            for k, entry in enumerate(cfg.evaluation.players, start=1)]


def _log_to_wandb(cfg: EvaluateConfig, out_dir: Path) -> None:
    """A W&B run (job type ``evaluation``) with the config and, as its summary, ``results.json``."""
    run = start_wandb(cfg, out_dir, job_type="evaluation")
    run.summary.update(json.loads((out_dir / "results.json").read_text()))
    run.finish()
