"""Supervised training from hcpe files (``algorithm=supervised``): real ``python train.py`` runs on tiny hcpe
files written with ``keisei.data.hcpe`` (positions of random openings, each labelled with one of its legal
moves), the value target on rows written by cshogi, the order of the positions and the held-out split."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, clean_env

from keisei.config import ConfigError, SupervisedConfig, hcpe_files
from keisei.data.hcpe import HCPE, Sample, from_hcpe, to_hcpe, write
from keisei.nn.checkpoint import load_model
from keisei.nn.policy import Policy
from keisei.plot import metrics_figure, plot_metrics
from keisei.shogi import Encoder, Game, Result, action_to_move, encode, random_opening
from keisei.train.supervised import CHUNK, HcpeData, Order, decode

REPO = Path(__file__).resolve().parents[1]
CSHOGI = REPO / "tests" / "data" / "hcpe" / "cshogi.hcpe"
RESULTS = (Result.BLACK_WIN, Result.WHITE_WIN, Result.DRAW)
#: A supervised run that takes seconds: batches of 8, a validation every 10 updates, a constant rate.
RUN = ["algorithm=supervised", "algorithm.batch_size=8", "algorithm.validation_interval=10",
       "algorithm.validation_fraction=0.1", "training.lr_schedule=constant", "logging.progress_bar=false"]
MLP = ["model=mlp", "training.learning_rate=3e-3"]
#: The default model family (a ResNet with GroupNorm, or BatchNorm), tiny.
RESNET = ["model=resnet", "model.blocks=1", "model.channels=8", "model.value_hidden=8", "training.learning_rate=1e-2"]


def labelled_positions(count: int, seed: int) -> list[Sample]:
    """``count`` distinct positions of random openings, each with one of its legal moves (picked by its
    place in the list), an eval and a result."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    samples: list[Sample] = []
    while len(samples) < count:
        game = random_opening(Game(), int(rng.integers(0, 30)), rng)
        board = game.sfen().rsplit(" ", 1)[0]
        if board in seen:
            continue
        seen.add(board)
        i = len(samples)
        legal = sorted(game.legal_usi())
        samples.append(Sample(game.sfen(), legal[7 * i % len(legal)], 137 * i % 1201 - 600, RESULTS[i % 3]))
    return samples


def write_positions(path: Path, count: int, seed: int = 0) -> list[Sample]:
    samples = labelled_positions(count, seed)
    write(path, to_hcpe(samples))
    return samples


def train(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=300)
    if check:
        assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)["model"]


def top_moves(run_dir: Path, samples: list[Sample]) -> list[str]:
    """The most likely legal move of the run's final network in each sample's position."""
    model, _ = load_model(run_dir)
    games = [sample.game() for sample in samples]
    obs, mask = encode(games)
    actions, _, _ = Policy(model).act(torch.from_numpy(obs), torch.from_numpy(mask), temperature=0)
    return [action_to_move(int(a), game) for a, game in zip(actions, games)]


# --- the value target and decoding ------------------------------------------------------------

def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize(("result_weight", "score_scale"), [(0.5, 600.0), (0.25, 756.09), (1.0, 600.0)])
def test_value_target_of_rows_written_by_cshogi(result_weight: float, score_scale: float) -> None:
    """Rows 0-2 of cshogi's file: the start position (Black to move, eval -908, a draw), Black to move at
    eval -577 in a game Black won, White to move at eval 2134 in a game Black won."""
    rows = np.fromfile(CSHOGI, dtype=HCPE)[:3]
    cfg = SupervisedConfig(train=[str(CSHOGI)], result_weight=result_weight, score_scale=score_scale)
    batch = decode(rows, ["row 0", "row 1", "row 2"], Encoder(3), cfg, torch.device("cpu"))
    expected = [result * result_weight + (1 - result_weight) * (2 * sigmoid(score / score_scale) - 1)
                for score, result in ((-908, 0), (-577, 1), (2134, -1))]
    assert batch.targets.tolist() == pytest.approx(expected, abs=1e-6)
    if (result_weight, score_scale) == (0.5, 600.0):
        assert batch.targets.tolist() == pytest.approx([-0.3196, 0.2765, -0.0277], abs=1e-4)  # by hand
    samples = [from_hcpe(row) for row in rows]
    assert [action_to_move(int(a), s.game()) for a, s in zip(batch.labels, samples)] == ["2h6h", "8h9g", "6f6g+"]
    assert batch.legal_mask[torch.arange(3), batch.labels].all()


def test_a_bad_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.hcpe"
    rows = to_hcpe(labelled_positions(3, seed=1))
    rows[1]["gameResult"] = 7
    write(path, rows)
    data = HcpeData([path], 0.1)  # rows 0 and 1 train, row 2 held out
    with pytest.raises(ConfigError, match=r"algorithm.train: .*bad\.hcpe: row 1: game result 7"):
        decode(*data.train_rows(np.arange(2)), Encoder(2), SupervisedConfig(train=[str(path)]), torch.device("cpu"))


# --- the order and the split ------------------------------------------------------------------

def test_each_epoch_visits_every_train_row_once_in_its_own_order() -> None:
    order = Order(1000, seed=3, chunk=64)
    epochs = [order.rows(e * 1000, 1000) for e in range(3)]
    for rows in epochs:
        assert sorted(rows.tolist()) == list(range(1000))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # Any slice of positions is the same rows, however it is cut into batches, by another instance too.
    again = Order(1000, seed=3, chunk=64)
    assert np.array_equal(np.concatenate([again.rows(s, 77) for s in range(0, 3003, 77)])[:3000],
                          np.concatenate(epochs))
    # Chunked: the first 64 positions of an epoch are one chunk's rows; the last chunk (1000 = 15 * 64 + 40) is short.
    assert len({r // 64 for r in epochs[0][:64].tolist()}) == 1
    assert not np.array_equal(Order(1000, seed=4, chunk=64).rows(0, 1000), epochs[0])
    assert Order(10, seed=0).chunk == CHUNK and sorted(Order(10, seed=-1).rows(0, 10).tolist()) == list(range(10))


def test_held_out_rows_are_the_last_of_each_file_and_no_train_row(tmp_path: Path) -> None:
    write_positions(tmp_path / "a.hcpe", 37, seed=1)
    write_positions(tmp_path / "b.hcpe", 20, seed=2)
    (tmp_path / "empty.hcpe").write_bytes(b"")
    paths = hcpe_files([str(tmp_path)])
    assert [p.name for p in paths] == ["a.hcpe", "b.hcpe", "empty.hcpe"]
    data = HcpeData(paths, 0.1)
    assert (data.n_train, data.n_held) == (33 + 18, 4 + 2)  # ceil(3.7) and ceil(2.0) held out
    train = set(zip(*(a.tolist() for a in data.locate(np.arange(data.n_train), data.train_counts,
                                                       np.zeros(3, dtype=np.int64)))))
    held = set(zip(*(a.tolist() for a in data.locate(np.arange(data.n_held), data.held_counts, data.train_counts))))
    assert not train & held
    assert train | held == {(0, r) for r in range(37)} | {(1, r) for r in range(20)}
    assert held == {(0, r) for r in range(33, 37)} | {(1, 18), (1, 19)}
    # The rows themselves: an epoch of the order reads every train row's bytes once, and no held-out row's.
    epoch, _ = data.train_rows(Order(data.n_train, seed=0).rows(0, data.n_train))
    held_rows, wheres = data.held_out_rows(np.arange(data.n_held))
    assert wheres[0].endswith("a.hcpe: row 33") and wheres[-1].endswith("b.hcpe: row 19")
    files = [np.fromfile(p, dtype=epoch.dtype) for p in paths[:2]]
    assert sorted(r.tobytes() for r in epoch) == sorted(r.tobytes() for r in [*files[0][:33], *files[1][:18]])
    assert not {r.tobytes() for r in epoch} & {r.tobytes() for r in held_rows}


# --- bad configs ------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "named"), [
    ("algorithm.train=[{dir}/missing.hcpe]", "algorithm.train=['{dir}/missing.hcpe']: {dir}/missing.hcpe: no such"),
    ("algorithm.train=[]", "algorithm.train=[]: needs at least one hcpe file"),
    ("algorithm.train=[{dir}]", "{dir}: a folder without *.hcpe files"),
    ("algorithm.train=[{dir}/a.hcpe] algorithm.validation_fraction=1.5", "algorithm.validation_fraction=1.5: must be"),
    ("algorithm.train=[{dir}/a.hcpe] algorithm.validation_fraction=0", "algorithm.validation_fraction=0.0: must be"),
    ("algorithm.train=[{dir}/cut.hcpe]", "cut.hcpe': 40 bytes is not a whole number of 38-byte hcpe rows"),
    ("", "algorithm.train is required"),
])
def test_bad_config_is_one_line_before_any_run_dir(tmp_path: Path, override: str, named: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if "a.hcpe" in override:
        write_positions(data / "a.hcpe", 4)
    if "cut.hcpe" in override:
        (data / "cut.hcpe").write_bytes(bytes(40))  # not a whole number of rows
    run_dir = tmp_path / "run"
    proc = train(run_dir, *MLP, *RUN, *override.format(dir=data).split(), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert named.format(dir=data) in lines[0], lines[0]
    assert not run_dir.exists()


# --- learning ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Sample]]:
    """24 labelled positions in one file: 21 train rows, 3 held out."""
    path = tmp_path_factory.mktemp("data") / "labelled.hcpe"
    return path, write_positions(path, 24)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory, labelled: tuple[Path, list[Sample]]) -> Path:
    """The MLP on the 21 train positions, 40 epochs (105 updates of 8)."""
    run_dir = tmp_path_factory.mktemp("mlp") / "run"
    train(run_dir, *MLP, *RUN, f"algorithm.train=[{labelled[0]}]", "training.total_timesteps=840")
    return run_dir


def assert_learnt(run_dir: Path, samples: list[Sample]) -> None:
    """The policy loss fell far, and the labelled move is the top move in every train position."""
    records = metrics(run_dir)
    first, last = records[0]["losses/policy_loss"], records[-1]["losses/policy_loss"]
    assert last < 0.2 * first, (first, last)
    assert top_moves(run_dir, samples[:21]) == [s.move for s in samples[:21]]


def test_tiny_mlp_run_learns_the_labelled_moves(mlp_run: Path, labelled: tuple[Path, list[Sample]]) -> None:
    assert_learnt(mlp_run, labelled[1])


# [group]: GroupNorm is the default model's, which many fast runs train (test_gumbel_az.py's ResNet [group]
# learn step too); slow.
@pytest.mark.parametrize("norm", [pytest.param("group", marks=pytest.mark.slow), "batch"])
def test_tiny_resnet_run_learns_the_labelled_moves(tmp_path: Path, labelled: tuple[Path, list[Sample]],
                                                   norm: str) -> None:
    """The default model family with its normalisation layers (BatchNorm: trained on batch statistics,
    measured on its running statistics)."""
    train(tmp_path / "run", *RESNET, f"model.norm={norm}", *RUN, f"algorithm.train=[{labelled[0]}]",
          "training.total_timesteps=1680")
    assert_learnt(tmp_path / "run", labelled[1])


def test_metrics_validation_and_objective(mlp_run: Path) -> None:
    records = metrics(mlp_run)
    assert [r["global_step"] for r in records] == list(range(8, 841, 8))
    validated = [r["update"] for r in records if "val/accuracy" in r]
    assert validated == [*range(10, 101, 10), 105]  # every 10 updates and the last
    for key in ("losses/policy_loss", "losses/value_loss", "losses/accuracy", "losses/explained_variance",
                "time/data_share", "time/update_share"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert all(r["games/finished"] == 0 for r in records)
    last = records[-1]
    assert {"val/policy_loss", "val/value_loss", "val/accuracy", "val/value_error"} <= last.keys()
    assert last["losses/accuracy"] == 1.0  # the train positions are learnt
    assert 0 <= last["val/accuracy"] <= 1 and last["val/value_error"] >= 0
    state = torch.load(mlp_run / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert state["objective"] == pytest.approx(last["val/accuracy"])


def test_plot_shows_train_and_validation_loss_and_accuracy(mlp_run: Path, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = metrics_figure(mlp_run)
    try:
        panels = {ax.get_title(): {line.get_label(): line for line in ax.get_lines()} for ax in fig.axes}
    finally:
        plt.close(fig)
    for title in ("policy loss (cross-entropy)", "value loss (MSE)", "move accuracy"):
        assert list(panels[title]) == ["train", "validation"], title
    assert list(panels["move accuracy"]["train"].get_xdata()) == list(range(8, 841, 8))
    assert list(panels["move accuracy"]["validation"].get_xdata()) == [*range(80, 801, 80), 840]
    assert "self-play outcomes" not in panels and "update size" not in panels  # no games, no PPO
    assert plot_metrics(mlp_run, tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


# Slow: the objective's value is test_metrics_validation_and_objective's, its printing
# test_train.py::test_smoke_run_prints_objective's.
@pytest.mark.slow
def test_summary_names_the_objective(tmp_path: Path, labelled: tuple[Path, list[Sample]]) -> None:
    proc = train(tmp_path / "run", *MLP, *RUN, f"algorithm.train=[{labelled[0]}]", "training.total_timesteps=16")
    val = metrics(tmp_path / "run")[-1]["val/accuracy"]
    assert f"objective:   {val:.4f} (move accuracy on the held-out positions" in proc.stdout


# --- resume, and what comes after --------------------------------------------------------------

# Slow: test_a_file_that_grows_between_stop_and_resume_changes_nothing resumes the same run and checks the
# same losses and validations against one without a break.
@pytest.mark.slow
def test_resumed_run_equals_one_without_a_break(tmp_path: Path, labelled: tuple[Path, list[Sample]]) -> None:
    """12 updates of 8 over 21 train rows (the epochs end at 21, 42, 63, 84) in one go, and stopped
    after 6 then resumed: the same positions, losses and weights, bit for bit."""
    args = [*MLP, *RUN, f"algorithm.train=[{labelled[0]}]", "algorithm.validation_interval=4"]
    train(tmp_path / "straight", *args, "training.total_timesteps=96")
    train(tmp_path / "resumed", *args, "training.total_timesteps=48")
    half = final_weights(tmp_path / "resumed")
    train(tmp_path / "resumed", *args, "training.total_timesteps=96")
    keys = ("global_step", "losses/policy_loss", "losses/value_loss", "losses/accuracy")
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in resumed]
    # Validations at updates 4, 8 and 12 in both (the stopped run also validated at its last update, 6).
    assert [r["val/policy_loss"] for r in straight if "val/policy_loss" in r] == \
        [r["val/policy_loss"] for r in resumed if "val/policy_loss" in r and r["update"] != 6]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["policy.weight"], half["policy.weight"])  # the resumed half trained


def test_a_file_that_grows_between_stop_and_resume_changes_nothing(
        tmp_path: Path, labelled: tuple[Path, list[Sample]]) -> None:
    """label.py may still be writing a file a run trains on: a resumed run reads the rows the file held
    when the run started (the split and the order as without a break: the same positions and losses),
    says so, and refuses a file that lost rows in one line."""
    data = tmp_path / "growing.hcpe"
    data.write_bytes(labelled[0].read_bytes())
    args = [*MLP, *RUN, f"algorithm.train=[{data}]", "algorithm.validation_interval=4"]
    train(tmp_path / "straight", *args, "training.total_timesteps=96")
    train(tmp_path / "resumed", *args, "training.total_timesteps=48")
    more = tmp_path / "more.hcpe"
    write_positions(more, 8, seed=1)
    data.write_bytes(data.read_bytes() + more.read_bytes())  # 32 rows now, 24 at the start
    proc = train(tmp_path / "resumed", *args, "training.total_timesteps=96")
    assert "holds 32 rows, 24 when this run started" in proc.stdout + proc.stderr
    keys = ("global_step", "losses/policy_loss", "losses/value_loss", "losses/accuracy")
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in resumed]
    assert [r["val/policy_loss"] for r in straight if "val/policy_loss" in r] == \
        [r["val/policy_loss"] for r in resumed if "val/policy_loss" in r and r["update"] != 6]

    data.write_bytes(labelled[0].read_bytes()[: 20 * HCPE.itemsize])  # 20 rows: fewer than the run's 24
    record = {name: (tmp_path / "resumed" / name).read_bytes() for name in ("config.yaml", ".hydra/overrides.yaml")}
    proc = train(tmp_path / "resumed", *args, "training.total_timesteps=144", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"Error: algorithm.train: {data} holds 20 rows, 24 when this run started")
    # The refused config did not run: the run dir's record is still the one that did.
    assert {name: (tmp_path / "resumed" / name).read_bytes() for name in record} == record


def test_a_resume_on_other_files_or_by_another_algorithm_is_one_line(
        tmp_path: Path, labelled: tuple[Path, list[Sample]]) -> None:
    """Another file of the same number of rows, or another algorithm, stops the resume with one line naming
    it; the run dir's record stays the one that ran."""
    other = tmp_path / "other.hcpe"
    other.write_bytes(labelled[0].read_bytes())
    run = tmp_path / "run"
    train(run, *MLP, *RUN, f"algorithm.train=[{labelled[0]}]", "training.total_timesteps=48")
    record = (run / "config.yaml").read_bytes()
    refusals = [([*MLP, *RUN, f"algorithm.train=[{other}]"], "Error: algorithm.train: the files ['other.hcpe'], "
                 "['labelled.hcpe'] when this run started"),
                ([*MLP, "algorithm=gumbel_az", "logging.progress_bar=false"],
                 "written by algorithm=supervised, this run has algorithm=gumbel_az")]
    for args, message in refusals:
        proc = train(run, *args, "training.total_timesteps=96", check=False)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert (run / "config.yaml").read_bytes() == record


def test_ppo_starts_from_a_supervised_run_whose_data_is_gone(tmp_path: Path,
                                                             labelled: tuple[Path, list[Sample]]) -> None:
    """The checkpoint loads on its own (its config's hcpe files are not checked), and PPO self-play
    starts from its weights (``training.init_checkpoint``)."""
    copy = tmp_path / "gone.hcpe"
    copy.write_bytes(labelled[0].read_bytes())
    source = tmp_path / "supervised"
    train(source, *MLP, *RUN, f"algorithm.train=[{copy}]", "training.total_timesteps=16")
    copy.unlink()
    _, cfg = load_model(source)
    assert cfg.algorithm.train == [str(copy)]
    train(tmp_path / "ppo", *TINY, "training.total_timesteps=128", f"training.init_checkpoint={source}",
          "algorithm.update_epochs=1", "algorithm.minibatch_size=128")
    (first,) = metrics(tmp_path / "ppo")
    assert first["losses/init_kl"] == pytest.approx(0.0, abs=1e-9)  # it started from the supervised network


def test_two_ranks_train_on_halves_of_the_batch_of_one_process(tmp_path: Path,
                                                               labelled: tuple[Path, list[Sample]]) -> None:
    """torchrun, 2 ranks of 8 positions per update (gloo): each rank takes its own half of the 16 positions
    one process takes, and their averaged gradients train the network that process trains."""
    args = [*MLP, *RUN, f"algorithm.train=[{labelled[0]}]", "training.total_timesteps=64"]
    train(tmp_path / "one", *args, "algorithm.batch_size=16")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "train.py",
           f"hydra.run.dir={tmp_path / 'two'}", *args]  # RUN's batch_size=8 per rank
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["global_step"] for r in two] == [r["global_step"] for r in one] == [16, 32, 48, 64]
    assert two[-1]["val/policy_loss"] == pytest.approx(one[-1]["val/policy_loss"], abs=1e-5)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
