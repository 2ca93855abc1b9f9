"""load_checkpoint on files that are not checkpoints: one short line saying what the file is not.

The message must never pass on PyTorch's advice to retry with ``weights_only=False``: that
unpickles arbitrary code, and these are files of unknown origin.
"""

from __future__ import annotations

import argparse
import pickle
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from keisei.nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def real_checkpoint(path: Path) -> bytes:
    """A checkpoint written the way training writes one; its bytes."""
    save_checkpoint({"model": {"w": torch.arange(20_000, dtype=torch.float32)}, "global_step": 7}, path)
    return path.read_bytes()


def truncated_half(path: Path) -> None:
    data = real_checkpoint(path)
    path.write_bytes(data[: len(data) // 2])


def truncated_head(path: Path) -> None:
    path.write_bytes(real_checkpoint(path)[:100])


def legacy_truncated(path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1000)}}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def text_file(path: Path) -> None:
    path.write_text("model: resnet\nglobal_step: 7\n", encoding="utf-8")


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


def plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"format": "keisei-checkpoint-v1", "model": {}}))


def torch_file_with_objects(path: Path) -> None:
    torch.save({"args": argparse.Namespace(lr=1e-3)}, path)  # refused by a weights-only load


# (how the file is made, what the message must say the file is)
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated_half": (truncated_half, "truncated or corrupt torch file"),
    "truncated_head": (truncated_head, "truncated or corrupt torch file"),
    "legacy_truncated": (legacy_truncated, "truncated or corrupt torch file"),
    "random_bytes": (random_bytes, "not a torch file"),
    "text_file": (text_file, "not a torch file"),
    "empty_file": (empty_file, "empty file"),
    "plain_pickle": (plain_pickle, "not a torch file"),
    "torch_file_with_objects": (torch_file_with_objects, "not a Keisei checkpoint"),
}


def assert_short_safe_line(message: str, path: Path, says: str) -> None:
    assert str(path) in message, message
    assert says in message, message
    assert "\n" not in message, message
    assert "weights_only" not in message and "arbitrary code" not in message, message
    assert len(message) <= len(str(path)) + 100, message  # short: no PyTorch essay


@pytest.mark.parametrize("case", list(CASES))
def test_unreadable_file_gives_one_short_line(tmp_path: Path, case: str) -> None:
    make, says = CASES[case]
    path = tmp_path / f"{case}.pt"
    make(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert_short_safe_line(str(info.value), path, says)


def test_intact_checkpoint_still_loads(tmp_path: Path) -> None:
    real_checkpoint(tmp_path / "ok.pt")
    data = load_checkpoint(tmp_path / "ok.pt")
    assert data["global_step"] == 7 and torch.equal(data["model"]["w"], torch.arange(20_000, dtype=torch.float32))


# Each file's line is test_unreadable_file_gives_one_short_line's; evaluate.py passing it on is the same for
# every file: [torch_file_with_objects] here and test_evaluate.py::test_bad_checkpoint_fails_cleanly stay fast.
@pytest.mark.parametrize("case", [pytest.param("random_bytes", marks=pytest.mark.slow),
                                  pytest.param("truncated_half", marks=pytest.mark.slow), "torch_file_with_objects"])
def test_evaluate_on_an_unreadable_checkpoint(tmp_path: Path, case: str) -> None:
    """The real entry point: ``evaluate.py checkpoint=<file>`` prints that line and exits 2."""
    make, says = CASES[case]
    path = tmp_path / f"{case}.pt"
    make(path)
    proc = subprocess.run([sys.executable, "evaluate.py", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'eval'}",
                           "logging.progress_bar=false", "evaluation.games=2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert_short_safe_line(lines[0].removeprefix("Error: "), path, says)
    assert not (tmp_path / "eval" / "results.json").exists()


def test_a_v1_checkpoint_still_loads_with_its_config_keys_renamed(tmp_path: Path) -> None:
    """v1 named the ResNet value head's width ``model.hidden`` and the checkpoint interval
    ``training.checkpoint_interval``; a v1 file rebuilds the same network under v2's names."""
    from keisei.config import ModelConfig, ModelName, TrainConfig, to_container
    from keisei.nn.checkpoint import FORMAT, load_model, model_state
    from keisei.nn.model import build_model
    from keisei.shogi import ENCODING_VERSION

    cfg = TrainConfig(model=ModelConfig(name=ModelName.resnet, blocks=1, channels=8, value_hidden=24))
    config = to_container(cfg)
    config["model"]["hidden"] = config["model"].pop("value_hidden")
    del config["model"]["mlp_hidden"]
    config["training"]["checkpoint_interval"] = config["training"].pop("checkpoint_interval_timesteps")
    model = build_model(cfg.model)
    path = tmp_path / "v1.pt"
    torch.save({"format": "keisei-checkpoint-v1", "encoding_version": ENCODING_VERSION, "config": config,
                "model": model_state(model)}, path)
    data = load_checkpoint(path)
    assert data["format"] == FORMAT
    assert data["config"]["model"]["value_hidden"] == 24
    assert data["config"]["training"]["checkpoint_interval_timesteps"] == 50_000
    rebuilt, loaded_cfg = load_model(path)
    assert loaded_cfg.model == cfg.model
    assert all(torch.equal(v, model_state(model)[k]) for k, v in model_state(rebuilt).items())


def test_a_checkpoint_from_before_the_value_head_fixes_rebuilds_its_own_head(tmp_path: Path) -> None:
    """A checkpoint written before model.value_reach, model.value_plane_norm and model.value_plane_relu
    existed (its config has none) had a value head in [-1, 1] behind a normalised, ReLU'd plane: it is
    rebuilt so, its weights
    load (the plane's GroupNorm included) and it gives the values it was trained to give."""
    from keisei.config import ModelConfig, ModelName, TrainConfig, to_container
    from keisei.nn.checkpoint import FORMAT, load_model, model_state
    from keisei.nn.model import build_model
    from keisei.shogi import ENCODING_VERSION, Game
    from keisei.shogi.encoding import encode

    old = ModelConfig(name=ModelName.resnet, blocks=1, channels=8, value_hidden=16, material_potential=0.03,
                      value_reach=False, value_plane_norm=True, value_plane_relu=True)
    cfg = TrainConfig(model=old)
    config = to_container(cfg)
    del config["model"]["value_reach"], config["model"]["value_plane_norm"], config["model"]["value_plane_relu"]
    torch.manual_seed(0)
    model = build_model(old).eval()
    path = tmp_path / "before.pt"
    torch.save({"format": FORMAT, "encoding_version": ENCODING_VERSION, "config": config,
                "model": model_state(model)}, path)
    rebuilt, loaded = load_model(path)
    assert loaded.model == old
    obs = torch.from_numpy(encode([Game()])[0])
    with torch.no_grad():
        assert torch.equal(rebuilt(obs)[1], model(obs)[1])
    assert build_model(ModelConfig(name=ModelName.resnet, blocks=1, channels=8, value_hidden=16)
                       ).state_dict().keys() != model.state_dict().keys()  # the new head has no plane norm


def old_encoding_checkpoint(path: Path) -> str:
    """A training checkpoint written by the 119-plane encoding (v1), its network's first layer 119
    planes wide; the version it names."""
    from keisei.config import ModelConfig, ModelName, TrainConfig, to_container
    from keisei.nn.checkpoint import FORMAT, model_state
    from keisei.nn.model import build_model

    cfg = TrainConfig(model=ModelConfig(name=ModelName.resnet, blocks=1, channels=8, value_hidden=16))
    state = model_state(build_model(cfg.model))
    stem = next(k for k, v in state.items() if v.ndim == 4)  # the first convolution: (channels, planes, 3, 3)
    state[stem] = torch.zeros(state[stem].shape[0], 119, 3, 3)
    old = "keisei-obs119-dlshogi2187-v1"
    torch.save({"format": FORMAT, "encoding_version": old, "config": to_container(cfg), "model": state,
                "global_step": 7}, path)
    return old


def test_a_checkpoint_of_another_encoding_is_one_line_naming_both_versions(tmp_path: Path) -> None:
    """Not a shape mismatch deep in ``load_state_dict``: the file, its encoding and this Keisei's."""
    from keisei.nn.checkpoint import load_model
    from keisei.shogi import ENCODING_VERSION

    path = tmp_path / "old.pt"
    old = old_encoding_checkpoint(path)
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message and old in message and ENCODING_VERSION in message, message
        assert "\n" not in message and "size mismatch" not in message, message


# Slow: the line is test_a_checkpoint_of_another_encoding_is_one_line_naming_both_versions'; evaluate.py passes
# a CheckpointError on as in test_evaluate_on_an_unreadable_checkpoint[torch_file_with_objects].
@pytest.mark.slow
def test_evaluate_on_a_checkpoint_of_another_encoding(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    old = old_encoding_checkpoint(path)
    proc = subprocess.run([sys.executable, "evaluate.py", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'eval'}",
                           "logging.progress_bar=false", "evaluation.games=2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in lines[0] and old in lines[0], lines[0]
