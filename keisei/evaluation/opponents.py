"""The players an evaluation config names: the agent rebuilt from its checkpoint, opponents from an
``opponent`` config or a preset (``conf/opponent/<name>.yaml``), and the presets of
``evaluation.periodic_opponents``.
"""

from __future__ import annotations

import torch
from omegaconf.errors import MissingMandatoryValue

from keisei.config import (
    CONF,
    ConfigError,
    EvaluationConfig,
    OpponentConfig,
    OpponentKind,
    SearchConfig,
    SearchRoot,
    register_configs,
    validate_evaluate,
)
from keisei.nn.checkpoint import load_model
from keisei.play.players import AgentPlayer, HeuristicPlayer, Player, RandomPlayer
from keisei.play.usi_client import UsiPlayer


def build_opponent(cfg: OpponentConfig, device: torch.device, seed: int) -> Player:
    """The player an ``opponent`` config describes."""
    if cfg.kind is OpponentKind.random:
        return RandomPlayer(seed, name=cfg.name or "random")
    if cfg.kind is OpponentKind.heuristic:
        return HeuristicPlayer(seed, name=cfg.name or "heuristic", random_moves=cfg.random_moves)
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


def listed_player(entry: str, ev: EvaluationConfig, device: torch.device, seed: int) -> Player:
    """The player an entry of ``evaluation.players`` names: an opponent preset (``random``,
    ``fairy_stockfish``, ...), else a checkpoint file or run dir, which plays with the agent's
    ``evaluation.temperature`` and ``evaluation.search``."""
    if (CONF / "opponent" / f"{entry}.yaml").is_file():
        try:
            preset = opponent_preset(entry)
        except (ConfigError, MissingMandatoryValue) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"evaluation.players={ev.players!r}: preset {entry!r} cannot be played as it stands "
                              f"({detail}); list a checkpoint file or run dir itself, or a preset that needs "
                              "no path") from None
        return build_opponent(preset, device, seed)
    return checkpoint_player(entry, device, ev.temperature, seed, search=ev.search)


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


def periodic_opponents(ev: EvaluationConfig, main: OpponentConfig | None) -> dict[str, OpponentConfig]:
    """The opponent configs of ``evaluation.periodic_opponents`` by preset name, composed now (before
    training starts). A preset that cannot be played as it stands (``checkpoint``, ``usi``: they need a
    path) or that is the main ``opponent`` again (``None``: none is played) is a ``ConfigError`` naming
    the key."""
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
