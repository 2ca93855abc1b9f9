"""Sweeps end to end: Hydra grid multiruns, a failing job, the Optuna search, a W&B sweep trial
and the submitit_local launcher, each as a real ``python train.py -m ...`` subprocess on tiny runs
(mlp, 8 envs x 16 steps = 128 steps per update). Sweep dirs live under pytest's tmp dirs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def clean_env() -> dict[str, str]:
    drop = ("HYDRA_FULL_ERROR", "WANDB_MODE")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith(("SLURM_", "SUBMITIT_", "WANDB_SWEEP"))}


def run(*args: str, check: bool = True, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "train.py", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def train_records(run_dir: Path) -> list[dict]:
    """The per-update lines of metrics.jsonl (evaluation lines carry ``eval/global_step`` instead)."""
    return [r for r in metrics(run_dir) if "global_step" in r]


def summary_csv(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summary_md(sweep_dir: Path) -> list[list[str]]:
    """The rows of summary.md (header and rule left out), as lists of stripped cells."""
    lines = (sweep_dir / "summary.md").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "| job | status | objective | overrides | error |"
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[2:]]


def overrides_dict(overrides: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in overrides.split())


def config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))


def printed_objectives(stdout: str) -> dict[str, str]:
    """``run dir -> objective`` as each job printed them in its summary."""
    found = re.findall(r"^run dir:\s+(\S+)$.*?^objective:\s+(\S+) ", stdout, flags=re.M | re.S)
    return dict(found)


# --- grid ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    proc = run("-m", "training.learning_rate=1e-4,3e-4", "seed=1,2", *TINY, "training.total_timesteps=256",
               f"hydra.sweep.dir={sweep}")
    return sweep, proc


def test_grid_sweep_runs_every_combination_in_its_own_dir(grid: tuple[Path, subprocess.CompletedProcess[str]]):
    sweep, _ = grid
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    combos = set()
    for job in range(4):
        job_dir = sweep / str(job)
        assert (job_dir / "checkpoints" / "final.pt").is_file()
        steps = [r["global_step"] for r in train_records(job_dir)]
        assert steps == [128, 256]
        cfg = config(job_dir)
        combos.add((cfg["training"]["learning_rate"], cfg["seed"]))
        final = torch.load(job_dir / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
        assert final["global_step"] == 256
        assert final["config"]["training"]["learning_rate"] == cfg["training"]["learning_rate"]
        assert final["config"]["seed"] == cfg["seed"]
    assert combos == {(1e-4, 1), (1e-4, 2), (3e-4, 1), (3e-4, 2)}


def test_grid_summary_lists_every_job_with_its_objective(grid: tuple[Path, subprocess.CompletedProcess[str]]):
    sweep, proc = grid
    rows = summary_csv(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    printed = printed_objectives(proc.stdout)
    seen = set()
    for row in rows:
        job_dir = sweep / row["job"]
        assert row["status"] == "completed"
        assert row["error"] == ""
        assert Path(row["dir"]) == job_dir
        ov = overrides_dict(row["overrides"])
        cfg = config(job_dir)
        assert float(ov["training.learning_rate"]) == cfg["training"]["learning_rate"]
        assert int(ov["seed"]) == cfg["seed"]
        seen.add((float(ov["training.learning_rate"]), int(ov["seed"])))
        # evaluation is off: the objective is the explained variance of the last update
        objective = float(row["objective"])
        assert math.isfinite(objective)
        assert objective == train_records(job_dir)[-1]["losses/explained_variance"]
        assert printed[str(job_dir)] == f"{objective:.4f}"
        assert json.loads((job_dir / "job_result.json").read_text(encoding="utf-8"))["objective"] == objective
    assert seen == {(1e-4, 1), (1e-4, 2), (3e-4, 1), (3e-4, 2)}

    md = summary_md(sweep)
    assert len(md) == 4
    for cells, row in zip(md, rows):
        assert cells[:3] == [row["job"], "completed", f"{float(row['objective']):.4f}"]
        assert cells[3] == f"`{row['overrides']}`"
        assert cells[4] == ""


def test_failing_job_is_reported_and_the_others_complete(tmp_path: Path):
    sweep = tmp_path / "sweep"
    proc = run("-m", "training.learning_rate=1e-4,-1,3e-4", *TINY, "training.total_timesteps=128",
               f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode != 0
    assert "must be > 0" in proc.stderr
    rows = summary_csv(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "failed"), ("2", "completed")]
    failed = rows[1]
    assert overrides_dict(failed["overrides"])["training.learning_rate"] == "-1"
    assert failed["objective"] == ""
    assert failed["error"].startswith("ConfigError: ")
    assert "training.learning_rate" in failed["error"] and "must be > 0" in failed["error"]
    assert not (sweep / "1" / "checkpoints" / "final.pt").exists()
    for job in ("0", "2"):  # before and after the failure
        assert (sweep / job / "checkpoints" / "final.pt").is_file()
        assert float(rows[int(job)]["objective"]) == train_records(sweep / job)[-1]["losses/explained_variance"]
    md = summary_md(sweep)
    assert [c[1] for c in md] == ["completed", "failed", "completed"]
    assert md[1][2] == ""
    assert "ConfigError" in md[1][4] and "must be > 0" in md[1][4]


# --- Optuna -------------------------------------------------------------------------------------

def test_optuna_search_without_evaluation_is_refused(tmp_path: Path):
    """Without periodic evaluation the objective would be the value head's fit, not strength."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "train.py", "hparams_search=ppo_optuna", "hydra.sweeper.n_trials=2", *TINY,
                           "training.total_timesteps=128", f"hydra.sweep.dir={sweep}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Error: evaluation.interval_timesteps=0" in proc.stderr and "Traceback" not in proc.stderr
    assert not sweep.exists()  # no trial ran


def test_optuna_search(tmp_path: Path):
    sweep = tmp_path / "sweep"
    run("hparams_search=ppo_optuna", "hydra.sweeper.n_trials=2", *TINY, "training.total_timesteps=128",
        "evaluation.interval_timesteps=128", "evaluation.games=2", "evaluation.max_plies=30",
        f"hydra.sweep.dir={sweep}")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text(encoding="utf-8"))
    best = results["best_params"]
    assert set(best) == {"training.learning_rate", "algorithm.ent_coef", "algorithm.clip_coef", "algorithm.gae_lambda"}
    assert 1e-5 <= best["training.learning_rate"] <= 1e-3
    assert 0.0 <= best["algorithm.ent_coef"] <= 0.03
    assert best["algorithm.clip_coef"] in (0.1, 0.2, 0.3)
    assert 0.9 <= best["algorithm.gae_lambda"] <= 1.0

    rows = summary_csv(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    trials = []
    for row in rows:
        job_dir = sweep / row["job"]
        assert (job_dir / "checkpoints" / "final.pt").is_file()
        ov = overrides_dict(row["overrides"])
        cfg = config(job_dir)
        params = {key: float(ov[key]) for key in best}
        for key, value in params.items():
            section, name = key.split(".")
            assert cfg[section][name] == value
        # evaluation is on: the objective is the latest evaluation's win rate
        evals = [r for r in metrics(job_dir) if "eval/win_rate" in r]
        assert evals, "no periodic evaluation ran"
        assert float(row["objective"]) == evals[-1]["eval/win_rate"]
        trials.append((float(row["objective"]), params))
    assert results["best_value"] == max(objective for objective, _ in trials)
    assert any(params == best for objective, params in trials if objective == results["best_value"])
    assert len(summary_md(sweep)) == 2


# --- W&B sweep ----------------------------------------------------------------------------------

def render_wandb_trial(spec: dict, rng: random.Random) -> tuple[dict, list[str]]:
    """Pick one value per parameter, as the W&B agent gets them, and render ``${args_no_hyphens}``.

    From a list of ``values`` the first is taken (the example lists no default first), from a
    log-uniform range a random point."""
    values = {}
    for key, param in spec["parameters"].items():
        if "values" in param:
            values[key] = param["values"][0]
        elif param.get("distribution") == "log_uniform_values":
            values[key] = math.exp(rng.uniform(math.log(param["min"]), math.log(param["max"])))
        else:
            raise AssertionError(f"parameter {key}: this test does not know {param}")
    rendered = [f"{key}={value}" for key, value in values.items()]  # what the W&B agent does
    return values, rendered


def default_value(key: str) -> object:
    """A key's default, which the schema holds (the conf/ presets train.py starts from repeat none)."""
    from keisei.config import TrainConfig, to_container

    section, name = key.split(".")
    return to_container(TrainConfig())[section][name]


def test_wandb_sweep_example_drives_train_py(tmp_path: Path):
    spec = yaml.safe_load((REPO / "docs" / "examples" / "wandb_sweep.yaml").read_text(encoding="utf-8"))
    assert spec["program"] == "train.py"
    assert (REPO / spec["program"]).is_file()
    command = spec["command"]
    assert "${args_no_hyphens}" in command
    assert command.index("${program}") < command.index("${args_no_hyphens}")

    values, rendered = render_wandb_trial(spec, random.Random(3))
    for key, value in values.items():  # so that the run's config shows that the trial's values were applied
        assert value != default_value(key), key
    try:  # the agent's own renderer, where wandb can be imported
        from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
    except ImportError:
        pass
    else:
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
        assert args["args_no_hyphens"] == rendered

    argv: list[str] = []
    for item in command:
        if item == "${env}":
            continue  # /usr/bin/env: the test runs sys.executable directly
        if item in ("python", "${interpreter}"):
            argv.append(sys.executable)
        elif item == "${program}":
            argv.append(spec["program"])
        elif item == "${args_no_hyphens}":
            argv.extend(rendered)
        elif item == "wandb.mode=online":
            argv.append("wandb.mode=disabled")
        else:
            argv.append(item)
    assert argv[0] == sys.executable and argv[1] == "train.py"
    run_dir = tmp_path / "run"
    argv += [*TINY, "training.total_timesteps=256", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=240)
    assert proc.returncode == 0, f"{argv}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    cfg = config(run_dir)
    for key, value in values.items():
        section, name = key.split(".")
        assert cfg[section][name] == value, key
    assert cfg["wandb"]["mode"] == "disabled"
    assert cfg["evaluation"]["interval_timesteps"] == 100000  # the example's fixed items apply too
    assert cfg["training"]["total_timesteps"] == 256
    assert (run_dir / "checkpoints" / "final.pt").is_file()


# --- submitit_local -------------------------------------------------------------------------------

def test_submitit_local_multirun(tmp_path: Path):
    sweep = tmp_path / "sweep"
    run("-m", "hydra/launcher=submitit_local", "seed=1,2", *TINY, "training.total_timesteps=128",
        f"hydra.sweep.dir={sweep}")
    rows = summary_csv(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    for row in rows:
        job_dir = sweep / row["job"]
        assert (job_dir / "checkpoints" / "final.pt").is_file()
        assert config(job_dir)["seed"] == int(overrides_dict(row["overrides"])["seed"])
        assert float(row["objective"]) == train_records(job_dir)[-1]["losses/explained_variance"]
    # each job ran as its own submitit process, which pickled its result
    results = sorted((sweep / ".submitit").glob("*/*_0_result.pkl"))
    assert len(results) == 2
    assert len(summary_md(sweep)) == 2
