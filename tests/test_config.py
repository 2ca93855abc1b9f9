"""The config schema and conf/ files, composed with Hydra's compose API (no subprocess).

Composition (types, unknown keys, enums, group options) is Hydra's job; range and
cross-field checks are ``keisei.config.validate``'s, which names the key in a ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from conftest import TINY
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from keisei.config import (
    ConfigError,
    Device,
    ModelName,
    PPOConfig,
    Precision,
    Schedule,
    TrainConfig,
    WandbMode,
    from_container,
    register_configs,
    to_container,
    validate,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

#: The small-batch setup the subprocess tests use: batch = 8 * 16 = 128.


@pytest.fixture(scope="module", autouse=True)
def _schemas() -> None:
    register_configs()


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def error_text(exc: BaseException) -> str:
    """The message of an exception and of every exception it was raised from."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def yaml_values(path: Path) -> dict:
    """A conf/ file's own keys (without its defaults list)."""
    data = OmegaConf.to_container(OmegaConf.load(path))
    data.pop("defaults", None)
    return data


# --- defaults and groups ----------------------------------------------------------------

def test_defaults_compose_and_validate() -> None:
    cfg = validate(compose_cfg())
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.name is ModelName.resnet
    assert cfg.training.lr_schedule is Schedule.linear
    assert cfg.training.precision is Precision.fp32
    assert cfg.device is Device.auto
    assert cfg.wandb.mode is WandbMode.disabled
    assert cfg.resume is None
    assert cfg.training.total_timesteps == 1_000_000 and type(cfg.training.total_timesteps) is int
    interval = cfg.training.checkpoint_interval_timesteps
    assert interval == 50_000 and type(interval) is int
    assert (cfg.env.num_envs * cfg.algorithm.num_steps) % cfg.algorithm.minibatch_size == 0


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_model_group_picks_its_file(name: str) -> None:
    cfg = validate(compose_cfg(f"model={name}"))
    assert cfg.model.name is ModelName(name)
    own = yaml_values(CONF_DIR / "model" / f"{name}.yaml")
    assert own, "the model file sets values"
    for key, value in own.items():
        assert OmegaConf.to_container(OmegaConf.structured(cfg.model), enum_to_str=True)[key] == value, key


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_experiment_presets_compose_validate_and_set_their_values(name: str) -> None:
    """Each experiment preset composes into a valid config that carries the file's own model, env and
    training values (e.g. cpu_baseline's two shaping potentials)."""
    cfg = to_container(validate(compose_cfg(f"experiment={name}")))
    own = yaml_values(CONF_DIR / "experiment" / f"{name}.yaml")
    for group in ("model", "env", "training", "algorithm"):
        for key, value in own.get(group, {}).items():
            if not isinstance(value, dict):
                assert cfg[group][key] == value, f"{group}.{key}"


def test_cpu_strong_is_the_baseline_with_the_measured_overrides() -> None:
    """experiment=cpu_strong composes to exactly the command its ladder rows measured: cpu_baseline with a
    wider network and more, shorter games a rollout (docs/results.md), nothing else changed."""
    strong = to_container(validate(compose_cfg("experiment=cpu_strong")))
    measured = to_container(validate(compose_cfg("experiment=cpu_baseline", "model.channels=64", "env.num_envs=256",
                                                 "algorithm.num_steps=16")))
    assert strong == measured
    assert strong != to_container(validate(compose_cfg("experiment=cpu_baseline")))


def test_defaults_have_one_source_the_schema() -> None:
    """conf/ files name their preset and repeat no schema default: composing with no overrides gives
    the dataclass defaults (the opponent preset aside), and the mlp preset differs only in its name."""
    composed, schema = validate(compose_cfg()), validate(TrainConfig())
    assert dataclasses.replace(composed, opponent=schema.opponent) == schema
    assert validate(compose_cfg("model=mlp")).model == dataclasses.replace(TrainConfig().model, name=ModelName.mlp)
    defaults = to_container(TrainConfig())
    for group in ("model", "training", "algorithm", "evaluation"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            repeated = {k: v for k, v in yaml_values(path).items() if k not in ("name", "mode")
                        and defaults[group].get(k) == v}
            assert not repeated, f"{path} repeats schema defaults: {repeated}"


def test_training_smoke_picks_its_values_and_keeps_ppo_defaults() -> None:
    cfg = validate(compose_cfg("training=smoke"))
    smoke = yaml_values(CONF_DIR / "training" / "smoke.yaml")
    assert not yaml_values(CONF_DIR / "training" / "default.yaml"), "default.yaml holds no values: the schema does"
    assert not yaml_values(CONF_DIR / "algorithm" / "ppo.yaml"), "ppo.yaml holds no values: the schema does"
    assert smoke["training"] and smoke["algorithm"], "smoke.yaml overrides something in both"
    defaults = to_container(TrainConfig())
    for group in ("training", "algorithm"):
        composed = to_container(cfg)[group]
        for key, value in smoke[group].items():
            assert composed[key] == value, key
        kept = {k: v for k, v in defaults[group].items() if k not in smoke[group]}
        for key, value in kept.items():
            assert composed[key] == value, key
    assert {"learning_rate", "lr_schedule", "opponent_pool"} <= defaults["training"].keys() - smoke["training"].keys()
    assert {"gamma", "clip_coef"} <= defaults["algorithm"].keys() - smoke["algorithm"].keys()
    # Spot checks independent of reading the files.
    assert cfg.algorithm.num_steps == 16 and cfg.training.total_timesteps == 2048
    assert cfg.algorithm.gamma == 0.99 and cfg.training.lr_schedule is Schedule.linear


# --- step counts ------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("1e6", 1_000_000), ("2.5e5", 250_000), ("1000000", 1_000_000), ("1.0e3", 1000),
])
def test_total_timesteps_accepts_integral_numbers(value: str, expected: int) -> None:
    cfg = validate(compose_cfg(f"training.total_timesteps={value}"))
    assert cfg.training.total_timesteps == expected
    assert type(cfg.training.total_timesteps) is int


def test_checkpoint_interval_accepts_scientific_notation() -> None:
    cfg = validate(compose_cfg("training.checkpoint_interval_timesteps=1e4"))
    interval = cfg.training.checkpoint_interval_timesteps
    assert interval == 10_000 and type(interval) is int


@pytest.mark.parametrize("value", ["1.5", "abc", "true", "inf", "nan", "0", "-1e3", "'1e6'"])
def test_total_timesteps_rejects_non_counts(value: str) -> None:
    cfg = compose_cfg(f"training.total_timesteps={value}")
    with pytest.raises(ConfigError, match=re.escape("training.total_timesteps")):
        validate(cfg)


# --- composition errors -----------------------------------------------------------------

@pytest.mark.parametrize(("override", "named"), [
    ("foo=1", "foo"),
    ("training.bogus=1", "training.bogus"),
    ("algorithm.gamma=abc", "algorithm.gamma"),
    ("algorithm.num_steps=1.5", "algorithm.num_steps"),
    ("training.lr_schedule=bogus", "training.lr_schedule"),
    ("model.name=cnn", "model.name"),
    ("device=tpu", "device"),
    ("model=nope", "model/nope"),
    ("training=nope", "training/nope"),
])
def test_composition_rejects(override: str, named: str) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose_cfg(override)
    assert named in error_text(info.value)


def test_bad_enum_message_lists_the_choices() -> None:
    with pytest.raises(HydraException) as info:
        compose_cfg("training.lr_schedule=bogus")
    text = error_text(info.value)
    assert "bogus" in text and all(s.value in text for s in Schedule)


@pytest.mark.parametrize("override", ["+foo=1", "+training.learning_rat=1e-3"])
def test_appended_unknown_key_is_rejected(override: str) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException, ConfigError)):
        validate(compose_cfg(override))


# --- range and consistency checks ---------------------------------------------------------

@pytest.mark.parametrize(("overrides", "key"), [
    (["training.learning_rate=0"], "training.learning_rate"),
    (["training.learning_rate=-1e-3"], "training.learning_rate"),
    (["training.collective_timeout_minutes=0"], "training.collective_timeout_minutes"),
    (["training.collective_timeout_minutes=inf"], "training.collective_timeout_minutes"),
    (["algorithm.gamma=0"], "algorithm.gamma"),
    (["algorithm.gamma=1.01"], "algorithm.gamma"),
    ([*TINY, "algorithm.minibatch_size=100"], "algorithm.minibatch_size"),
    (["env.num_envs=3", "algorithm.num_steps=16", "algorithm.minibatch_size=32"], "algorithm.minibatch_size"),
    (["env.opening_plies=320"], "env.opening_plies"),
    (["env.max_plies=10", "env.opening_plies=11"], "env.opening_plies"),
    (["training.precision=fp16", "device=cpu"], "training.precision"),
    (["training.opponent_pool.fraction=1.5"], "training.opponent_pool.fraction"),
    (["model.material_potential=0.5"], "model.material_potential"),
    (["model.king_potential=0.05"], "model.king_potential"),
    (["training.opponent_pool.fraction=0.5", "training.opponent_pool.heuristic_fraction=0.75"],
     "training.opponent_pool.heuristic_fraction"),
    (["training.opponent_pool.heuristic_fraction=0.5", "env.workers=2"], "training.opponent_pool.heuristic_fraction"),
    (["algorithm.init_kl_coef=-0.1", "training.init_checkpoint=start.pt"], "algorithm.init_kl_coef"),
    (["algorithm.init_kl_coef=0.1"], "algorithm.init_kl_coef"),
])
def test_range_checks_name_the_key(overrides: list[str], key: str) -> None:
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value).startswith(f"{key}=")


@pytest.mark.parametrize("overrides", [
    ["algorithm.gamma=1"],
    ["training.learning_rate=1e-9"],
    [*TINY, "algorithm.minibatch_size=128"],
    [*TINY, "algorithm.minibatch_size=1"],
    ["env.max_plies=10", "env.opening_plies=9"],
    ["training.precision=bf16", "device=cpu"],
    ["training.precision=fp16", "device=cuda"],
    ["algorithm.init_kl_coef=0", "training.init_checkpoint=start.pt"],
    ["algorithm.init_kl_coef=0.1", "training.init_checkpoint=start.pt"],
])
def test_boundary_values_are_accepted(overrides: list[str]) -> None:
    assert isinstance(validate(compose_cfg(*overrides)), TrainConfig)


def test_init_kl_coef_without_init_checkpoint_says_what_it_needs() -> None:
    with pytest.raises(ConfigError, match=r"^algorithm\.init_kl_coef=0\.1: needs training\.init_checkpoint="):
        validate(compose_cfg("algorithm.init_kl_coef=0.1"))
    assert validate(compose_cfg()).training.init_checkpoint is None
    assert validate(compose_cfg()).algorithm.init_kl_coef == 0.0


def test_minibatch_error_states_the_batch() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.minibatch_size=100\b.*128"):
        validate(compose_cfg(*TINY, "algorithm.minibatch_size=100"))


# --- precedence ---------------------------------------------------------------------------

def test_file_value_kept_unless_overridden() -> None:
    assert validate(compose_cfg("training=smoke")).algorithm.num_steps == 16  # smoke.yaml, not ppo's 128
    cfg = validate(compose_cfg("training=smoke", "algorithm.num_steps=32"))
    assert cfg.algorithm.num_steps == 32
    # What the user did not override keeps its config value (smoke.yaml's, then ppo.yaml's).
    assert cfg.algorithm.minibatch_size == 128
    assert cfg.algorithm.update_epochs == 2
    assert cfg.training.total_timesteps == 2048
    assert cfg.algorithm.gamma == 0.99


def test_command_line_wins_regardless_of_order() -> None:
    cfg = validate(compose_cfg("algorithm.num_steps=32", "training=smoke"))
    assert cfg.algorithm.num_steps == 32
    assert cfg.training.total_timesteps == 2048


def test_override_inside_a_group_keeps_the_rest_of_the_file() -> None:
    cfg = validate(compose_cfg("model=resnet", "model.blocks=2"))
    assert cfg.model.blocks == 2
    assert cfg.model.channels == 64 and cfg.model.value_hidden == 128


def test_top_level_override_keeps_siblings() -> None:
    cfg = validate(compose_cfg("env.num_envs=8", "algorithm.minibatch_size=1024"))
    assert cfg.env.num_envs == 8
    assert cfg.env.max_plies == 320 and cfg.env.declaration is True and cfg.env.opening_plies == 0
    assert cfg.seed == 0


def test_nested_override() -> None:
    cfg = validate(compose_cfg("training.opponent_pool.size=3"))
    assert cfg.training.opponent_pool.size == 3
    assert cfg.training.opponent_pool.snapshot_interval == 10 and cfg.training.opponent_pool.fraction == 0.5


# --- containers ---------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    [],
    [*TINY, "training.total_timesteps=1e6", "seed=7", "training.lr_schedule=cosine", "wandb.tags=[a,b]",
     "algorithm.target_kl=0.02", "device=cpu", "training.precision=bf16"],
    ["evaluation.interval_timesteps=1e5", "evaluation.periodic_opponents=[heuristic,fairy_stockfish_weakest]"],
])
def test_container_round_trip(overrides: list[str]) -> None:
    cfg = validate(compose_cfg(*overrides))
    data = to_container(cfg)
    assert isinstance(data, dict)
    json.dumps(data)  # plain values only
    assert isinstance(data["model"]["name"], str) and not isinstance(data["model"]["name"], ModelName)
    again = from_container(data)
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
    # Through YAML, as train.py writes config.yaml.
    assert from_container(OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(data)))) == cfg


def test_round_trip_keeps_overrides() -> None:
    cfg = validate(compose_cfg(*TINY, "seed=7", "training.lr_schedule=cosine", "wandb.tags=[a,b]"))
    again = from_container(to_container(cfg))
    assert again.seed == 7 and again.training.lr_schedule is Schedule.cosine
    assert again.wandb.tags == ["a", "b"] and again.model.name is ModelName.mlp


def test_from_container_reads_a_config_written_before_the_algorithm_group() -> None:
    """A checkpoint's config from before ``algorithm`` existed has the PPO keys under ``training``."""
    data = to_container(validate(compose_cfg("algorithm.gamma=0.9", "algorithm.num_steps=32")))
    old = {k: v for k, v in data.items() if k != "algorithm"}
    old["training"] = {**data["training"], **{k: v for k, v in data["algorithm"].items() if k != "name"}}
    cfg = from_container(old)
    assert isinstance(cfg.algorithm, PPOConfig)
    assert cfg.algorithm.gamma == 0.9 and cfg.algorithm.num_steps == 32
    assert to_container(cfg) == data


def test_from_container_validates() -> None:
    data = to_container(validate(compose_cfg()))
    data["training"]["total_timesteps"] = 2.5e5
    assert from_container(data).training.total_timesteps == 250_000
    data["algorithm"]["gamma"] = 0.0
    with pytest.raises(ConfigError, match=re.escape("algorithm.gamma")):
        from_container(data)
