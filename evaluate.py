"""Measure a trained agent: ``python evaluate.py checkpoint=PATH [opponent=heuristic] [evaluation=round_robin]``.

Every setting comes from ``conf/evaluate.yaml`` and its groups (see docs/evaluation.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from keisei.cli import fail_cleanly
from keisei.config import (
    EvaluationMode,
    OpponentConfig,
    WandbMode,
    register_configs,
    to_container,
    validate_evaluate,
)

register_configs()
CONF = Path(__file__).resolve().parent / "conf"


def opponent_preset(name: str) -> OpponentConfig:
    """The opponent config of preset ``conf/opponent/<name>.yaml`` (composed by Hydra)."""
    composed = compose(config_name="evaluate", overrides=[f"opponent={name}", "checkpoint=preset"])
    return validate_evaluate(composed).opponent


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    with fail_cleanly():
        import torch

        from keisei.evaluation import (
            build_opponent,
            checkpoint_player,
            evaluate_agent,
            format_match,
            round_robin,
        )
        from keisei.trainer import resolve_device

        config = validate_evaluate(cfg)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        ev, progress = config.evaluation, config.logging.progress_bar
        agent = checkpoint_player(config.checkpoint, device, ev.temperature, config.seed)
        others = []
        try:
            if ev.mode is EvaluationMode.single_opponent:
                others.append(build_opponent(config.opponent, device, config.seed + 1))
                results = evaluate_agent(agent, others[0], ev, out_dir, seed=config.seed, progress=progress)
                print(format_match(results))
                objective = results["win_rate"]
            else:
                for k, spec in enumerate(ev.players, start=1):
                    if (CONF / "opponent" / f"{spec}.yaml").is_file():
                        others.append(build_opponent(opponent_preset(spec), device, config.seed + k))
                    else:
                        others.append(checkpoint_player(spec, device, ev.temperature, config.seed + k))
                results = round_robin([agent, *others], ev, out_dir, seed=config.seed, progress=progress)
                for pairing in results["pairings"]:
                    print(format_match(pairing))
                print("Elo (first player at 0): " + ", ".join(f"{k} {v:+.0f}" for k, v in results["elo"].items()))
                objective = results["elo"][agent.name]
        finally:
            for player in others:
                player.close()
        print(f"results: {out_dir / 'results.json'}" + (f", records: {out_dir / 'games'}" if ev.save_records else ""))
        if config.wandb.mode is not WandbMode.disabled:
            import wandb

            run = wandb.init(mode=config.wandb.mode.value, project=config.wandb.project,
                             entity=config.wandb.entity, name=config.wandb.name, group=config.wandb.group,
                             tags=list(config.wandb.tags), config=to_container(config), dir=str(out_dir),
                             job_type="evaluation")
            run.summary.update(json.loads((out_dir / "results.json").read_text()))
            run.finish()
        return objective


if __name__ == "__main__":
    main()
