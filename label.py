"""Label Shogi positions with a USI engine: ``python label.py output=data/fs8.hcpe positions=100000``.

Every setting comes from ``conf/label.yaml`` and its ``teacher`` group (see docs/data.md).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from keisei.cli import fail_cleanly
from keisei.config import register_configs

register_configs()


@hydra.main(config_path="conf", config_name="label", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with fail_cleanly():
        from keisei.data.label import label, validate_label

        report = label(validate_label(cfg))
        print(report)


if __name__ == "__main__":
    main()
