"""Train a Shogi agent by PPO self-play: ``python train.py model=resnet training.total_timesteps=1e6``.

Every setting comes from ``conf/train.yaml`` and its groups (see docs/training.md).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from keisei.cli import fail_cleanly, output_dir, refuse_empty_output_dir
from keisei.config import register_configs, validate

register_configs()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    with fail_cleanly():
        from keisei.train.loop import train

        return train(validate(cfg), output_dir())


if __name__ == "__main__":
    refuse_empty_output_dir(sys.argv[1:])
    main()
