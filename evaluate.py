"""Measure a trained agent: ``python evaluate.py checkpoint=PATH [opponent=heuristic] [evaluation=round_robin]``.

Every setting comes from ``conf/evaluate.yaml`` and its groups (see docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from keisei.cli import fail_cleanly
from keisei.config import register_configs, validate_evaluate

register_configs()


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    with fail_cleanly():
        from keisei.evaluation.app import evaluate

        return evaluate(validate_evaluate(cfg), Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
