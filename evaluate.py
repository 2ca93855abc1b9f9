"""Measure a trained agent: ``python evaluate.py checkpoint=PATH [opponent=heuristic] [evaluation=round_robin]``.

Every setting comes from ``conf/evaluate.yaml`` and its groups (see docs/evaluation.md).
"""

from __future__ import annotations

import sys
import textwrap

import hydra
from omegaconf import DictConfig, OmegaConf

from keisei.cli import fail_cleanly, output_dir, refuse_empty_output_dir
from keisei.config import CONF, register_configs, validate_evaluate


def conf_options(group: str, selected: str) -> str:
    """The options of config group ``group`` (the files ``conf/<group>/*.yaml``), ``selected`` first and
    marked, wrapped to follow the 18-column labels of the ``--help`` text (conf/evaluate.yaml)."""
    others = sorted(path.stem for path in (CONF / group).glob("*.yaml") if path.stem != selected)
    return textwrap.fill(", ".join([f"{selected} (selected)", *others]), width=110, initial_indent=" " * 18,
                         subsequent_indent=" " * 18).lstrip()


register_configs()
OmegaConf.register_new_resolver("conf_options", conf_options, replace=True)


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    with fail_cleanly():
        from keisei.evaluation.app import run_evaluation

        return run_evaluation(validate_evaluate(cfg), output_dir())


if __name__ == "__main__":
    refuse_empty_output_dir(sys.argv[1:])
    main()
