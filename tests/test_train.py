"""End to end: real ``python train.py`` subprocesses on tiny runs (mlp, 8 envs x 16 steps = 128 per update).

Run dirs live under pytest's tmp dirs (``hydra.run.dir=...``). Runs that several tests
read are module-scoped fixtures so that the file stays fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_clean_error

from keisei.config import from_container

REPO = Path(__file__).resolve().parents[1]
BATCH = 8 * 16
CONSTANT = "training.lr_schedule=constant"
LOSS_KEYS = ["losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
             "losses/clipfrac", "losses/explained_variance"]
METRIC_KEYS = ["global_step", "update", *LOSS_KEYS, "charts/learning_rate", "charts/SPS", "time/env_share",
               "time/inference_share", "time/update_share"]
CHECKPOINT_KEYS = {"global_step", "update", "model", "optimizer", "config", "rng", "env", "wandb_run_id",
                   "format", "encoding_version", "opponent_pool"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_MODE")}
    env.update(extra)
    return env


def train(run_dir: Path, *overrides: str, check: bool = True, env: dict[str, str] | None = None,
          tiny: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "train.py", *(TINY if tiny else []), f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env or clean_env(), timeout=300)
    if check:
        assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def checkpoint(run_dir: Path, name: str = "final.pt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def losses(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("update", "global_step", *LOSS_KEYS)} for r in records]


# --- shared runs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Four updates in one go (constant LR): the reference for resumes."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    return run_dir, train(run_dir, "training.total_timesteps=512", CONSTANT)


@pytest.fixture(scope="module")
def half_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``half`` again in another run dir, the total spelled ``2.56e2``."""
    run_dir = tmp_path_factory.mktemp("half_again") / "run"
    train(run_dir, "training.total_timesteps=2.56e2", CONSTANT)
    return run_dir


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first two updates of ``straight`` (same seed, constant LR); copy before resuming in it."""
    run_dir = tmp_path_factory.mktemp("half") / "run"
    train(run_dir, "training.total_timesteps=256", CONSTANT)
    return run_dir


# --- a smoke run --------------------------------------------------------------------------

def test_smoke_run_outputs(straight: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, proc = straight
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "metrics.jsonl").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["final.pt", "last.pt"]
    assert not list(run_dir.glob("*.tmp")), "temporary files left in the run dir"


def test_smoke_run_metrics(straight: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    records = metrics(straight[0])
    assert [r["update"] for r in records] == [1, 2, 3, 4]
    assert [r["global_step"] for r in records] == [BATCH, 2 * BATCH, 3 * BATCH, 4 * BATCH]
    for record in records:
        assert set(METRIC_KEYS) <= record.keys()
        assert any(k.startswith("games/") for k in record)
        assert record["charts/learning_rate"] == pytest.approx(3e-4)  # constant schedule
        assert record["charts/SPS"] > 0
        for key in ("losses/policy_loss", "losses/value_loss", "losses/entropy"):
            assert isinstance(record[key], float), key
        assert record["losses/entropy"] > 0


def test_smoke_run_checkpoints(straight: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir = straight[0]
    final, last = checkpoint(run_dir, "final.pt"), checkpoint(run_dir, "last.pt")
    assert final.keys() >= CHECKPOINT_KEYS
    assert final["global_step"] == 512 and final["update"] == 4
    assert last["global_step"] == 512 and last["update"] == 4
    assert_same_weights(final["model"], last["model"])
    assert final["wandb_run_id"] is None
    assert isinstance(final["format"], str) and final["encoding_version"] is not None
    cfg = from_container(final["config"])
    assert cfg.training.total_timesteps == 512 and cfg.model.name.value == "mlp"


def test_smoke_run_config_yaml(straight: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    from omegaconf import OmegaConf

    run_dir = straight[0]
    written = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    assert written["training"]["total_timesteps"] == 512
    assert written["training"]["lr_schedule"] == "constant"
    assert written["env"]["num_envs"] == 8 and written["model"]["name"] == "mlp"
    assert from_container(written) == from_container(checkpoint(run_dir)["config"])


def test_smoke_run_prints_objective(straight: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, proc = straight
    match = re.search(r"objective\b[^\n]*?(-?\d+\.\d+|nan)", proc.stdout, re.IGNORECASE)
    assert match, proc.stdout
    last = metrics(run_dir)[-1]["losses/explained_variance"]
    if last is None:
        assert match.group(1) == "nan"
    else:
        assert float(match.group(1)) == pytest.approx(last, abs=1e-4)
    assert str(run_dir) in proc.stdout


def test_scientific_notation_end_to_end(half_again: Path) -> None:
    assert [r["update"] for r in metrics(half_again)] == [1, 2]
    assert [r["global_step"] for r in metrics(half_again)] == [BATCH, 2 * BATCH]
    final = checkpoint(half_again)
    assert final["global_step"] == 256 and final["update"] == 2
    assert final["config"]["training"]["total_timesteps"] == 256


# --- bad overrides ------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "named", "code"), [
    ("foo=1", "foo", None),
    ("algorithm.gamma=abc", "algorithm.gamma", None),
    ("model=nope", "model/nope", None),
    ("algorithm.gamma=0", "algorithm.gamma", 2),
    ("algorithm.minibatch_size=100", "algorithm.minibatch_size", 2),
    ("training.precision=fp16 device=cpu", "training.precision", 2),
])
def test_bad_override_fails_cleanly(tmp_path: Path, override: str, named: str, code: int | None) -> None:
    run_dir = tmp_path / "run"
    proc = train(run_dir, "training.total_timesteps=128", *override.split(), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    if code is not None:
        assert proc.returncode == code
        assert f"Error: {named}=" in proc.stderr
    assert named in out
    assert "Traceback" not in out
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "metrics.jsonl").exists()


def test_full_error_shows_traceback(tmp_path: Path) -> None:
    proc = train(tmp_path / "run", "training.total_timesteps=128", "algorithm.gamma=0", check=False,
                 env=clean_env(HYDRA_FULL_ERROR="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" in out and "ConfigError" in out and "algorithm.gamma" in out


def test_appended_unknown_key_fails(tmp_path: Path) -> None:
    proc = train(tmp_path / "run", "training.total_timesteps=128", "+training.learning_rat=1e-3", check=False)
    assert proc.returncode != 0
    assert "learning_rat" in proc.stdout + proc.stderr


# --- determinism --------------------------------------------------------------------------

def test_same_seed_same_run(half: Path, half_again: Path) -> None:
    again = half_again
    assert losses(metrics(again)) == losses(metrics(half))
    assert_same_weights(checkpoint(again)["model"], checkpoint(half)["model"])


def test_different_seed_different_run(tmp_path: Path, half: Path) -> None:
    other = tmp_path / "run"
    train(other, "training.total_timesteps=256", CONSTANT, "seed=1")
    policy_losses = [r["losses/policy_loss"] for r in metrics(other)]
    assert policy_losses != [r["losses/policy_loss"] for r in metrics(half)]
    a, b = checkpoint(other)["model"], checkpoint(half)["model"]
    assert a.keys() == b.keys()
    assert not all(torch.equal(a[k], b[k]) for k in a)


# --- resume -------------------------------------------------------------------------------

# [file]: resume= naming a checkpoint file is also test_periodic_ladder.py's resumes (resume=.../last.pt); slow.
@pytest.mark.parametrize("target", ["run_dir", pytest.param("file", marks=pytest.mark.slow)])
def test_explicit_resume_from_other_run_dir(tmp_path: Path, half: Path,
                                            straight: tuple[Path, subprocess.CompletedProcess[str]],
                                            target: str) -> None:
    source = tmp_path / "source"
    shutil.copytree(half, source)
    resume = source if target == "run_dir" else source / "checkpoints" / "last.pt"
    run_dir = tmp_path / "continued"
    train(run_dir, "training.total_timesteps=512", CONSTANT, f"resume={resume}")
    final = checkpoint(run_dir)
    assert final["global_step"] == 512 and final["update"] == 4
    assert_same_weights(final["model"], checkpoint(straight[0])["model"])
    # The new run dir carries the source's history, then the updates it ran: no update missing or twice.
    assert [r["update"] for r in metrics(run_dir)] == [1, 2, 3, 4]
    assert losses(metrics(run_dir)) == losses(metrics(straight[0]))
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines[:2] == (source / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    # The source run is left alone.
    assert [r["update"] for r in metrics(source)] == [1, 2]
    assert checkpoint(source, "last.pt")["global_step"] == 256


def test_requeued_job_with_resume_goes_on_from_its_own_last_pt(tmp_path: Path, half: Path,
                                                                straight: tuple[Path, subprocess.CompletedProcess[str]]
                                                                ) -> None:
    # A requeued Slurm job runs its command line again, resume= included: the second run must go on
    # from the run dir's own last.pt (step 384), not go back to the source checkpoint (step 256).
    source = tmp_path / "source"
    shutil.copytree(half, source)
    run_dir = tmp_path / "job"
    train(run_dir, "training.total_timesteps=384", CONSTANT, f"resume={source}")
    assert checkpoint(run_dir, "last.pt")["global_step"] == 384
    train(run_dir, "training.total_timesteps=512", CONSTANT, f"resume={source}")
    assert [r["update"] for r in metrics(run_dir)] == [1, 2, 3, 4]
    assert_same_weights(checkpoint(run_dir)["model"], checkpoint(straight[0])["model"])


# Slow: the same command resuming in its run dir, bit for bit, is also
# test_resume_drops_metrics_written_after_checkpoint's and
# test_preemption.py::test_stop_signal_checkpoints_and_the_same_command_resumes[SIGTERM]'s.
@pytest.mark.slow
def test_automatic_resume_in_same_run_dir(tmp_path: Path, half: Path,
                                          straight: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(half, run_dir)
    before = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    train(run_dir, "training.total_timesteps=512", CONSTANT)
    after = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    # Resumed rather than restarted: the first two lines (with their timings) are untouched.
    assert after[:2] == before
    assert [r["update"] for r in metrics(run_dir)] == [1, 2, 3, 4]
    assert losses(metrics(run_dir)) == losses(metrics(straight[0]))
    final = checkpoint(run_dir)
    assert final["global_step"] == 512
    assert_same_weights(final["model"], checkpoint(straight[0])["model"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["final.pt", "last.pt"]


def test_resume_drops_metrics_written_after_checkpoint(tmp_path: Path, half: Path,
                                                       straight: tuple[Path, subprocess.CompletedProcess[str]]
                                                       ) -> None:
    """A crash after update 3 was logged but before it was checkpointed, the last line cut short."""
    run_dir = tmp_path / "run"
    shutil.copytree(half, run_dir)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"global_step": 3 * BATCH, "update": 3, "losses/policy_loss": 123.0}) + "\n")
        f.write('{"global_step": 512, "upd')
    train(run_dir, "training.total_timesteps=384", CONSTANT)
    records = metrics(run_dir)
    assert [r["update"] for r in records] == [1, 2, 3]
    assert records[2]["losses/policy_loss"] != 123.0
    assert losses(records) == losses(metrics(straight[0]))[:3]


def test_resume_with_other_batch_size_reaches_total(tmp_path: Path, half: Path) -> None:
    # 256 steps done with batches of 8 x 16; the rest with batches of 8 x 32: one more update.
    run_dir = tmp_path / "run"
    shutil.copytree(half, run_dir)
    train(run_dir, "training.total_timesteps=512", CONSTANT, "algorithm.num_steps=32")
    assert checkpoint(run_dir)["global_step"] == 512
    assert [r["global_step"] for r in metrics(run_dir)] == [128, 256, 512]


def test_resume_takes_the_optimizer_settings_of_its_command_line(tmp_path: Path, half: Path) -> None:
    """Resumed with training.optimizer=adamw and a weight decay (the run started with adam, none), the
    optimiser carries the saved moments and steps on with the new settings, as config.yaml records them."""
    run_dir = tmp_path / "run"
    shutil.copytree(half, run_dir)
    train(run_dir, "training.total_timesteps=384", CONSTANT, "training.optimizer=adamw", "training.weight_decay=0.05")
    before, after = checkpoint(half)["optimizer"], checkpoint(run_dir)["optimizer"]
    assert (before["param_groups"][0]["weight_decay"], after["param_groups"][0]["weight_decay"]) == (0.0, 0.05)
    if "decoupled_weight_decay" in after["param_groups"][0]:  # torch >= 2.6: AdamW is Adam with this set
        assert after["param_groups"][0]["decoupled_weight_decay"] is True
    assert from_container(checkpoint(run_dir)["config"]).training.weight_decay == 0.05
    # The saved moments went on (fresh ones would count only the last update's steps).
    assert min(int(s["step"]) for s in after["state"].values()) > max(int(s["step"]) for s in before["state"].values())


def test_fp16_without_cuda_fails_cleanly(tmp_path: Path) -> None:
    # device=auto resolves to the CPU here, where fp16 autocast and its gradient scaler do not apply.
    proc = train(tmp_path / "run", "training.total_timesteps=128", "training.precision=fp16", check=False)
    assert proc.returncode == 2
    assert "training.precision=fp16" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr


def resume_error(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess[str], str]:
    proc = train(tmp_path / "run", "training.total_timesteps=256", *overrides, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    return proc, lines[0]


def test_resume_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "last.pt"
    _, line = resume_error(tmp_path, f"resume={missing}")
    assert str(missing) in line


def test_resume_truncated_checkpoint(tmp_path: Path, half: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes((half / "checkpoints" / "last.pt").read_bytes()[:100_000])
    _, line = resume_error(tmp_path, f"resume={bad}")
    assert str(bad) in line


def test_resume_with_other_model_config(tmp_path: Path, half: Path) -> None:
    _, line = resume_error(tmp_path, f"resume={half}", "model.value_hidden=32")
    assert "model" in line and str(half) in line


# --- W&B offline --------------------------------------------------------------------------

def _wandb_env(tmp_path: Path) -> dict[str, str]:
    """W&B with no login, its files under ``tmp_path``, and no way out to the network."""
    dead = "http://127.0.0.1:9"  # any network use fails at once instead of reaching out
    env = clean_env(WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
                    WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
                    WANDB_DATA_DIR=str(tmp_path / "wandb_data"), HOME=str(tmp_path / "home"),
                    HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead, NO_PROXY="",
                    no_proxy="")
    env.pop("WANDB_API_KEY", None)
    return env


def test_wandb_refusing_to_start_leaves_the_record_as_it_was(tmp_path: Path) -> None:
    """Resuming with wandb.mode=online and no login: W&B refuses, in one line, before the run dir's
    record is touched (config.yaml still says what ran)."""
    env = _wandb_env(tmp_path)
    run_dir = tmp_path / "run"
    train(run_dir, "training.total_timesteps=128", CONSTANT, env=env)
    record = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", ".hydra/config.yaml")}
    proc = train(run_dir, "training.total_timesteps=512", CONSTANT, "wandb.mode=online", env=env, check=False)
    assert_clean_error(proc, "wandb.mode=online", "wandb login", "wandb.mode=disabled")
    assert {name: (run_dir / name).read_bytes() for name in record} == record


def test_wandb_offline_run_and_resume(tmp_path: Path) -> None:
    env = _wandb_env(tmp_path)
    run_dir = tmp_path / "run"
    train(run_dir, "training.total_timesteps=128", CONSTANT, "wandb.mode=offline", env=env)
    run_id = checkpoint(run_dir)["wandb_run_id"]
    assert isinstance(run_id, str) and run_id
    assert checkpoint(run_dir, "last.pt")["wandb_run_id"] == run_id
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and offline[0].is_dir()
    assert offline[0].name.endswith(f"-{run_id}")
    assert (offline[0] / f"run-{run_id}.wandb").is_file()

    train(run_dir, "training.total_timesteps=256", CONSTANT, "wandb.mode=offline", env=env)
    final = checkpoint(run_dir)
    assert final["global_step"] == 256
    assert final["wandb_run_id"] == run_id
    assert [r["update"] for r in metrics(run_dir)] == [1, 2]
    assert all(p.name.endswith(f"-{run_id}") for p in (run_dir / "wandb").glob("offline-run-*"))


# --- opponent pool ------------------------------------------------------------------------

def test_opponent_pool_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(run_dir, "training.total_timesteps=512", "training.opponent_pool.size=2",
          "training.opponent_pool.snapshot_interval=1")
    assert [r["update"] for r in metrics(run_dir)] == [1, 2, 3, 4]
    final = checkpoint(run_dir)
    assert final["global_step"] == 512
    state = final["opponent_pool"]
    assert state["pool"] == [2, 3]  # four snapshots taken (ids 0-3), the two newest kept
    pool = [state["snapshots"][k] for k in state["pool"]]
    for snapshot in pool:
        assert snapshot.keys() == final["model"].keys()
    assert_same_weights(pool[-1], final["model"])  # snapshot after the last update
    assert not all(torch.equal(pool[0][k], pool[1][k]) for k in pool[0])


def test_pool_games_keep_their_opponent_and_are_logged_apart(tmp_path: Path) -> None:
    """A game against a snapshot keeps it until the game ends; pool games are logged under pool/, not games/."""
    run_dir = tmp_path / "run"
    train(run_dir, "training.total_timesteps=2048", "training.opponent_pool.size=2",
          "training.opponent_pool.snapshot_interval=1", "training.opponent_pool.fraction=1.0", "env.max_plies=24")
    records = [r for r in metrics(run_dir) if "global_step" in r]
    assert sum(r["pool/games"] for r in records) > 0
    assert all(0 <= r["pool/learner_score"] <= 1 for r in records if r["pool/games"])
    # Fraction 1: once the pool has a snapshot every new game is a pool game, so self-play games are
    # only those that had started before the first snapshot (8 envs: at most 8 of them).
    assert records[-1]["games/finished_total"] <= 8
    state = checkpoint(run_dir)["opponent_pool"]
    assert all(k >= 0 for k in state["opponent"])  # every game in progress plays a snapshot
    assert set(state["opponent"]) <= set(state["snapshots"])  # ... whose weights are kept while it plays


# Slow: test_env_workers.py plays (and resumes) the same games in 1, 2 and 3 worker processes, and
# test_a_check_failing_after_the_env_started_closes_its_workers starts train's env.workers=2.
@pytest.mark.slow
def test_env_workers_train_the_same_run(tmp_path: Path, half: Path) -> None:
    """env.workers=2 steps the same games as one process: the same seed gives the same weights."""
    run_dir = tmp_path / "run"
    train(run_dir, "training.total_timesteps=256", CONSTANT, "env.workers=2")
    assert_same_weights(checkpoint(run_dir)["model"], checkpoint(half)["model"])
    assert [r["global_step"] for r in metrics(run_dir)] == [r["global_step"] for r in metrics(half)]


def test_resume_with_an_opponent_pool_is_exact(tmp_path: Path) -> None:
    """The pool's snapshots, each game's opponent and colour, and the draws all continue exactly."""
    pool = ["training.opponent_pool.size=2", "training.opponent_pool.snapshot_interval=1",
            "training.opponent_pool.fraction=0.5", "training.opponent_pool.heuristic_fraction=0.25",
            "env.max_plies=24", CONSTANT]
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    train(straight_dir, "training.total_timesteps=1024", *pool)
    train(resumed_dir, "training.total_timesteps=512", *pool)
    train(resumed_dir, "training.total_timesteps=1024", *pool)
    assert_same_weights(checkpoint(resumed_dir)["model"], checkpoint(straight_dir)["model"])
    assert losses(metrics(resumed_dir)) == losses(metrics(straight_dir))
    assert sum(r["pool/games"] for r in metrics(straight_dir)) > 0
    assert sum(r["pool/heuristic_games"] for r in metrics(straight_dir)) > 0


def test_a_resume_that_turns_the_opponents_off_goes_on_in_self_play(tmp_path: Path) -> None:
    """Resumed without the pool and the heuristic player, the games in progress against them go on as
    self-play games, and every game after them is one."""
    run_dir = tmp_path / "run"
    train(run_dir, "training.total_timesteps=512", "training.opponent_pool.size=2",
          "training.opponent_pool.snapshot_interval=1", "training.opponent_pool.fraction=0.5",
          "training.opponent_pool.heuristic_fraction=0.5", "env.max_plies=64")
    opponents = checkpoint(run_dir)["opponent_pool"]["opponent"]
    assert any(k >= 0 for k in opponents) and any(k == -2 for k in opponents)  # snapshot and heuristic games
    train(run_dir, "training.total_timesteps=1024", "env.max_plies=64")
    resumed = [r for r in metrics(run_dir) if r.get("global_step", 0) > 512]
    assert resumed and all(r.get("pool/games", 0) == 0 and r.get("pool/heuristic_games", 0) == 0 for r in resumed)
    assert set(checkpoint(run_dir)["opponent_pool"]["opponent"]) == {-1}


# [background]: its start builds the checkpoint opponent in this process too (to check it), as [inline] does;
# a background evaluation across a resume is
# test_a_background_evaluation_logged_after_the_checkpoint_survives_a_crash's. Slow.
@pytest.mark.parametrize("periodic", ["inline", pytest.param("background", marks=pytest.mark.slow)])
def test_resume_with_a_checkpoint_opponent_in_periodic_evaluation_is_exact(tmp_path: Path, half: Path,
                                                                          periodic: str) -> None:
    """Building the evaluation's checkpoint opponent at the start draws nothing from the run's generator:
    a resumed run (which builds it after restoring the generator) trains the same network."""
    evaluation = ["opponent=checkpoint", f"opponent.checkpoint={half}", "evaluation.interval_timesteps=256",
                  "evaluation.games=2", "evaluation.max_plies=20", f"evaluation.periodic={periodic}", CONSTANT]
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    train(straight_dir, "training.total_timesteps=512", *evaluation)
    train(resumed_dir, "training.total_timesteps=256", *evaluation)
    train(resumed_dir, "training.total_timesteps=512", *evaluation)
    updates = [[r for r in metrics(d) if "global_step" in r] for d in (resumed_dir, straight_dir)]
    assert losses(updates[0]) == losses(updates[1])
    assert_same_weights(checkpoint(resumed_dir)["model"], checkpoint(straight_dir)["model"])


def _child_pids() -> set[int]:
    """Live (not zombie) processes whose parent is this one, from /proc (multiprocessing's resource
    tracker aside: one per process, started with the first shared memory block, by design)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" \
                and b"resource_tracker" not in (stat.parent / "cmdline").read_bytes():
            children.add(int(stat.parent.name))
    return children


def test_a_check_failing_after_the_env_started_closes_its_workers(tmp_path: Path) -> None:
    """The periodic evaluation's opponent (an engine that cannot start) fails after the env's worker
    processes have started: the run fails with the engine's error and leaves no worker behind."""
    from hydra import compose, initialize_config_dir

    from keisei.config import register_configs, validate
    from keisei.play.usi_client import EngineError
    from keisei.train.loop import train as train_in_process

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = validate(compose("train", overrides=[*TINY, "env.workers=2", "opponent=usi",
                                                   f"opponent.command={tmp_path / 'no-such-engine'}",
                                                   "evaluation.interval_timesteps=1024"]))
    before = _child_pids()
    with pytest.raises(EngineError):
        train_in_process(cfg, tmp_path / "run")
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _child_pids() - before}
    assert not left


def _tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_resume_drops_tensorboard_events_written_after_checkpoint(tmp_path: Path) -> None:
    """A run that logged 4 updates but whose last checkpoint is at update 2 (a crash in between)
    resumes there; TensorBoard, like metrics.jsonl, then has every step once."""
    run_dir = tmp_path / "run"
    tb = ["logging.tensorboard=true", CONSTANT, "training.checkpoint_interval_timesteps=256"]
    train(run_dir, *tb, "training.total_timesteps=256")
    kept = (run_dir / "checkpoints" / "last.pt").read_bytes()
    train(run_dir, *tb, "training.total_timesteps=512")
    assert _tensorboard_steps(run_dir, "losses/value_loss") == [128, 256, 384, 512]
    (run_dir / "checkpoints" / "last.pt").write_bytes(kept)  # the crash: update 4 logged, not saved
    train(run_dir, *tb, "training.total_timesteps=512")
    assert _tensorboard_steps(run_dir, "losses/value_loss") == [128, 256, 384, 512]


def test_a_background_evaluation_logged_after_the_checkpoint_survives_a_crash(tmp_path: Path) -> None:
    """A background evaluation of the network at step 256 reports after the checkpoint at update 2;
    a crash before the next checkpoint resumes from update 2. The report is of a network the resumed
    run goes on from (and will not evaluate again): metrics.jsonl keeps it, so every evaluation is
    there once."""
    evaluation = ["evaluation.interval_timesteps=256", "evaluation.periodic=background", "evaluation.games=2",
                  "evaluation.max_plies=20", CONSTANT]
    saved_dir, run_dir = tmp_path / "saved", tmp_path / "run"
    train(saved_dir, "training.total_timesteps=256", CONSTANT)  # the same run's checkpoint at update 2
    train(run_dir, "training.total_timesteps=512", *evaluation)
    late = [r for r in metrics(run_dir) if r.get("eval/global_step") == 256]
    assert len(late) == 1 and late[0]["update"] > 2, late  # reported after the checkpoint the crash keeps
    shutil.copyfile(saved_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")  # the crash
    train(run_dir, "training.total_timesteps=512", *evaluation)
    rows = metrics(run_dir)
    assert [r["global_step"] for r in rows if "global_step" in r] == [128, 256, 384, 512]
    assert [r["eval/global_step"] for r in rows if "eval/global_step" in r] == [256, 512]


# --- starting from a trained network (training.init_checkpoint, algorithm.init_kl_coef) -----------

#: TINY with a tiny ResNet, the default model (1 block of 8 channels).
RESNET = [*(o for o in TINY if o != "model=mlp"), "model=resnet", "model.blocks=1", "model.channels=8",
          "model.value_hidden=8"]
#: Six updates at a high learning rate from ``resnet_source``: the policy drifts far from its start.
DRIFT = [*RESNET, CONSTANT, "training.learning_rate=1e-2", "training.total_timesteps=768"]


@pytest.fixture(scope="module")
def resnet_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained network to start from: one update of the tiny ResNet (seed 5)."""
    run_dir = tmp_path_factory.mktemp("resnet_source") / "run"
    train(run_dir, *RESNET, "training.total_timesteps=128", "seed=5", tiny=False)
    return run_dir


@pytest.fixture(scope="module")
def drift(tmp_path_factory: pytest.TempPathFactory, resnet_source: Path) -> dict[float, Path]:
    """``DRIFT`` from ``resnet_source`` without (0) and with (10) the KL penalty; same seed."""
    runs = {}
    for coef in (0.0, 10.0):
        runs[coef] = tmp_path_factory.mktemp(f"drift_{coef:g}") / "run"
        train(runs[coef], *DRIFT, f"training.init_checkpoint={resnet_source}", f"algorithm.init_kl_coef={coef}",
              tiny=False)
    return runs


def test_start_run_builds_the_network_of_init_checkpoint(tmp_path: Path, resnet_source: Path) -> None:
    """What train.py trains first (``start_run``, in process): the checkpoint's weights, as the network
    and as the frozen starting network; optimiser and counters fresh."""
    from hydra import compose, initialize_config_dir

    from keisei.config import register_configs, validate
    from keisei.train.run import start_run

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = validate(compose("train", overrides=[*RESNET, f"training.init_checkpoint={resnet_source}"]))
    state = start_run(cfg, tmp_path / "run")
    try:
        source = checkpoint(resnet_source, "last.pt")["model"]
        assert_same_weights(state.policy.model.state_dict(), source)
        assert state.init_policy is not None
        assert_same_weights(state.init_policy.model.state_dict(), source)
        assert not any(p.requires_grad for p in state.init_policy.model.parameters())
        assert state.global_step == state.update == 0 and not state.optimizer.state
    finally:
        state.env.close()


def test_run_from_init_checkpoint_starts_from_its_weights(tmp_path: Path, resnet_source: Path) -> None:
    """One update, one epoch, one minibatch: the KL to the starting network is measured before the
    first step (0: the network trained is the one the checkpoint holds); only the weights came over."""
    source = resnet_source / "checkpoints" / "final.pt"
    run_dir = tmp_path / "run"
    train(run_dir, *RESNET, "training.total_timesteps=128", "algorithm.update_epochs=1",
          "algorithm.minibatch_size=128", f"training.init_checkpoint={source}", tiny=False)
    (first,) = metrics(run_dir)
    assert first["losses/init_kl"] == pytest.approx(0.0, abs=1e-9)
    assert first["losses/approx_kl"] == pytest.approx(0.0, abs=1e-9)
    final, start = checkpoint(run_dir), checkpoint(resnet_source)
    assert_same_weights(final["init_model"], start["model"])
    assert not all(torch.equal(final["model"][k], start["model"][k]) for k in start["model"])  # it trained
    assert final["global_step"] == 128 and final["update"] == 1
    assert {s["step"].item() for s in final["optimizer"]["state"].values()} == {1}  # a fresh Adam: one step
    assert from_container(final["config"]).training.init_checkpoint == str(source)
    assert f"init_checkpoint: {source}" in (run_dir / "config.yaml").read_text(encoding="utf-8")


def test_smoke_run_has_no_starting_network(straight: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    assert not any("losses/init_kl" in r for r in metrics(straight[0]))
    assert "init_model" not in checkpoint(straight[0])


def init_error(run_dir: Path, *overrides: str) -> str:
    """The one line a refused launch prints; nothing of the run dir is left."""
    proc = train(run_dir, *overrides, check=False, tiny=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert not run_dir.exists()
    return lines[0]


@pytest.mark.parametrize(("overrides", "named"), [
    (["model.channels=16"], "model.channels=16 (checkpoint: 8)"),
    (["model=mlp"], "model.name='mlp' (checkpoint: 'resnet')"),
])
def test_init_checkpoint_of_another_model_is_refused(tmp_path: Path, resnet_source: Path, overrides: list[str],
                                                     named: str) -> None:
    base = RESNET if overrides[0] != "model=mlp" else TINY
    line = init_error(tmp_path / "run", *base, *overrides, "training.total_timesteps=128",
                      f"training.init_checkpoint={resnet_source}")
    assert str(resnet_source / "checkpoints" / "last.pt") in line and "training.init_checkpoint" in line
    assert named in line


def test_unreadable_or_missing_init_checkpoint_is_refused(tmp_path: Path, resnet_source: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes((resnet_source / "checkpoints" / "last.pt").read_bytes()[:10_000])
    line = init_error(tmp_path / "run", *RESNET, f"training.init_checkpoint={bad}")
    assert str(bad) in line and "not a readable checkpoint" in line
    missing = tmp_path / "nowhere.pt"
    assert str(missing) in init_error(tmp_path / "run", *RESNET, f"training.init_checkpoint={missing}")


def test_init_kl_coef_without_init_checkpoint_is_refused(tmp_path: Path) -> None:
    line = init_error(tmp_path / "run", *TINY, "algorithm.init_kl_coef=0.1")
    assert line.startswith("Error: algorithm.init_kl_coef=0.1: needs training.init_checkpoint")


def _kl_to(start: Path, final: Path, games: list) -> float:
    """KL(start's policy || final's policy) over the legal moves, averaged over the positions of ``games``."""
    from keisei.nn.checkpoint import load_model
    from keisei.nn.policy import Policy, kl_divergence
    from keisei.shogi import encode

    obs, mask = (torch.from_numpy(a) for a in encode([g for g in games if not g.is_over]))
    with torch.no_grad():
        start_logits, final_logits = (Policy(load_model(p)[0]).logits_and_value(obs, mask)[0] for p in (start, final))
        return float(kl_divergence(start_logits, final_logits).mean())


def test_init_kl_coef_keeps_the_policy_near_its_start(drift: dict[float, Path], resnet_source: Path,
                                                      random_positions: list) -> None:
    free, held = (_kl_to(resnet_source, drift[c] / "checkpoints" / "final.pt", random_positions) for c in (0.0, 10.0))
    assert held < free / 2, (held, free)  # measured: 0.024 against 0.124
    for run_dir in drift.values():  # logged with the penalty on or off
        assert all(r["losses/init_kl"] >= 0 for r in metrics(run_dir))
    assert metrics(drift[10.0])[-1]["losses/init_kl"] < metrics(drift[0.0])[-1]["losses/init_kl"]


def test_resume_ignores_init_checkpoint(tmp_path: Path, drift: dict[float, Path], resnet_source: Path) -> None:
    """A run resumed in its run dir goes on from its own checkpoint, the network and the starting network
    it holds, even with init_checkpoint now naming another network: the same run as without a break."""
    run_dir, penalty = tmp_path / "run", "algorithm.init_kl_coef=10.0"
    train(run_dir, *DRIFT, "training.total_timesteps=384", f"training.init_checkpoint={resnet_source}", penalty,
          tiny=False)
    other = drift[0.0] / "checkpoints" / "final.pt"  # same model config, other weights
    train(run_dir, *DRIFT, f"training.init_checkpoint={other}", penalty, tiny=False)
    straight_dir = drift[10.0]
    assert [r["update"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert losses(metrics(run_dir)) == losses(metrics(straight_dir))
    assert [r["losses/init_kl"] for r in metrics(run_dir)] == [r["losses/init_kl"] for r in metrics(straight_dir)]
    assert_same_weights(checkpoint(run_dir)["model"], checkpoint(straight_dir)["model"])
    assert_same_weights(checkpoint(run_dir)["init_model"], checkpoint(resnet_source)["model"])
