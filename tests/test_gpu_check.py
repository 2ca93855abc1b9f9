"""benchmarks/gpu_check.py: the dry run end to end on the CPU (every case and evaluation), the refusal
without CUDA, the real run's configs, failed and skipped cases, and the GPU busy sampler (with a fake
nvidia-smi)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir

from keisei.config import Device, Precision, register_configs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def rows(table: str, header: str) -> dict[str, dict[str, str]]:
    """The rows of the markdown table whose first cell is ``header``, by case name, as column -> cell."""
    lines = table.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"| {header} |"))
    columns = [c.strip() for c in lines[start].strip("|").split("|")]
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(columns, cells))
    return out


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def run_script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.fixture
def in_process(monkeypatch):
    """main() in this process, leaving this worker's torch threads alone."""
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    return gpu_check.main


def test_dry_run_measures_every_case(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    start = time.monotonic()
    done = run_script("--dry", "--out", str(out))
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout
    assert out.read_text(encoding="utf-8") == table
    assert table.startswith("## DRY RUN on the CPU")
    plan = gpu_check.Plan.dry_run()
    train = rows(table, "case | network | precision")
    assert list(train) == [c.name for c in gpu_check.cases(plan)]
    for case in gpu_check.cases(plan):
        row = train[case.name]
        assert number(row["env steps/s"]) > 0, row
        assert row["workers"] == str(case.workers)
        assert row["precision"] == case.precision
        assert row["compile"] == ("skipped (dry run)" if case.compile else "no")
        assert row["GPU busy %"] == "n/a"
        assert int(row["updates"]) == 1
    evals = rows(table, "case | network | opponent")
    assert list(evals) == ["eval-baseline", "eval-resnet"]
    for row in evals.values():
        assert number(row["games/s"]) > 0 and number(row["plies/s"]) > 0, row
        assert row["simulations"] == "2" and int(row["games"]) == 2
    assert "torch.compile: skipped in the dry run" in table
    assert "every case ran." in table
    assert "Total wall time" in table
    # progress on stderr, one line per case and evaluation
    assert len([line for line in done.stderr.splitlines() if line.startswith("gpu_check [")]) == len(train) + 2
    print(f"dry run: {wall:.1f} s")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_real_run_refuses_without_cuda_in_one_line() -> None:
    done = run_script(timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gpu_check: no CUDA device") and "--dry" in lines[0]


def test_real_cases_compose_and_validate() -> None:
    """Every config the real run builds passes train.py's checks (device=cuda is only resolved by start_run)."""
    plan = gpu_check.Plan.real()
    cases = gpu_check.cases(plan)
    names = [c.name for c in cases]
    assert len(set(names)) == len(names) == 8
    assert {(c.network, c.precision, c.compile) for c in cases if c.workers == 8} == {
        (n, p, k) for n in ("baseline", "resnet") for p, k in (("fp32", False), ("bf16", False), ("fp32", True))}
    assert sorted(c.workers for c in cases if c.workers != 8) == [1, 15]
    register_configs()
    with initialize_config_dir(config_dir=str(gpu_check.CONF), version_base="1.3"):
        for case in cases:
            cfg = gpu_check.compose_config(case.overrides(plan))
            assert cfg.device is Device.cuda
            assert cfg.training.precision is Precision(case.precision)
            assert cfg.training.compile is case.compile
            assert cfg.env.workers == case.workers
            assert cfg.evaluation.interval_timesteps == 0
            assert cfg.training.opponent_pool.heuristic_fraction == 0
            assert cfg.model.blocks == (2 if case.network == "baseline" else 6)
        for evaluation in gpu_check.eval_cases():
            cfg = gpu_check.compose_config(evaluation.overrides(plan))
            assert cfg.device is Device.cuda
            assert cfg.evaluation.search.batch_size >= 1
    assert plan.simulations == 200 and plan.compile


def test_a_failed_case_is_shown_and_the_others_still_run(in_process, capsys) -> None:
    # 2 envs: the 3-worker case is refused by the config's checks, the 1-worker case runs
    code = in_process(["--dry", "--only", "baseline-fp32-w1,baseline-fp32-w3,eval-baseline", "env.num_envs=2",
                       "algorithm.minibatch_size=8"])
    assert code == 1
    table = capsys.readouterr().out
    train = rows(table, "case | network | precision")
    assert number(train["baseline-fp32-w1"]["env steps/s"]) > 0
    failed = train["baseline-fp32-w3"]["env steps/s"]
    assert failed.startswith("FAILED: ConfigError: env.workers=3"), failed
    assert number(rows(table, "case | network | opponent")["eval-baseline"]["games/s"]) > 0
    assert "FAILED: baseline-fp32-w3." in table


def test_cases_after_the_budget_are_skipped(in_process, capsys) -> None:
    assert in_process(["--dry", "--budget=-1", "--only", "resnet-bf16-w2,eval-resnet"]) == 1
    table = capsys.readouterr().out
    assert rows(table, "case | network | precision")["resnet-bf16-w2"]["precision"].startswith("SKIPPED")
    assert rows(table, "case | network | opponent")["eval-resnet"]["opponent"].startswith("SKIPPED")
    assert "SKIPPED (over --budget): resnet-bf16-w2, eval-resnet." in table


def test_an_unknown_case_is_refused(in_process, capsys) -> None:
    assert in_process(["--dry", "--only", "resnet-fp16-w2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet-fp16-w2: no such case" in err[0]


def test_busy_sampler_averages_its_readings() -> None:
    readings = iter(range(10, 1000, 10))
    with gpu_check.BusySampler(lambda: next(readings), interval=0.01) as sampler:
        time.sleep(0.2)
    assert len(sampler.samples) >= 3
    assert sampler.mean == pytest.approx(sum(sampler.samples) / len(sampler.samples))
    assert gpu_check.busy_text(sampler) == f"{sampler.mean:.0f}"


def test_busy_sampler_short_block_failed_read_and_no_reader() -> None:
    with gpu_check.BusySampler(lambda: 55.0, interval=60) as short:
        pass
    assert short.samples == [55.0] and short.mean == 55.0  # one reading at the end

    def broken() -> float:
        raise RuntimeError("NVML lost the GPU\nmore")

    with gpu_check.BusySampler(broken, interval=0.01) as failed:
        time.sleep(0.05)
    assert failed.mean is None and failed.error == "RuntimeError: NVML lost the GPU"
    assert gpu_check.busy_text(failed) == "n/a (RuntimeError: NVML lost the GPU)"
    with gpu_check.BusySampler(None) as none:
        pass
    assert none.mean is None and none._thread is None and gpu_check.busy_text(none) == "n/a"
    assert gpu_check.utilisation_reader(torch.device("cpu")) == (None, "n/a on the CPU")


def fake_nvidia_smi(directory: Path, output: str) -> Path:
    """An ``nvidia-smi`` that records its arguments in ``args.txt`` and prints ``output``."""
    directory.mkdir(exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > "{directory}/args.txt"\nprintf "{output}"\n')
    script.chmod(0o755)
    return directory / "args.txt"


def test_nvidia_smi_reader(tmp_path: Path, monkeypatch) -> None:
    args = fake_nvidia_smi(tmp_path / "bin", "37\\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_check.nvidia_smi_reader(0)() == 37.0
    assert args.read_text().split() == ["--id=0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_check.nvidia_smi_reader(1)() == 37.0
    assert args.read_text().split()[0] == "--id=5"
    assert gpu_check.nvidia_smi_id(0, "GPU-1234abcd") == "GPU-1234abcd"
    assert gpu_check.parse_nvidia_smi(" 80 \n") == 80.0
    with pytest.raises(ValueError):
        gpu_check.parse_nvidia_smi("[N/A]\n")
    with pytest.raises(ValueError, match="one line"):
        gpu_check.parse_nvidia_smi("10\n20\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_utilisation_falls_back_to_nvidia_smi_then_to_na(tmp_path: Path, monkeypatch) -> None:
    """On this CPU build torch.cuda.utilization fails (no pynvml, no GPU): nvidia-smi is asked; without it, n/a."""
    fake_nvidia_smi(tmp_path / "bin", "12\\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    read, how = gpu_check.utilisation_reader(torch.device("cuda", 0))
    assert how == "nvidia-smi" and read() == 12.0
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    read, how = gpu_check.utilisation_reader(torch.device("cuda", 0))
    assert read is None and how.startswith("n/a (torch.cuda.utilization(): ") and "; nvidia-smi: " in how
    first = gpu_check.first_working([("a", lambda: 1 / 0), ("b", lambda: 7.0)])
    assert first[1] == "b" and first[0]() == 7.0


@pytest.mark.slow
def test_dry_run_with_torch_compile() -> None:
    """The compile path on the CPU (inductor; about 2 minutes on 2 cores)."""
    done = run_script("--dry", "--dry-compile", "--only", "baseline-compile-w2", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    row = rows(done.stdout, "case | network | precision")["baseline-compile-w2"]
    assert row["compile"] == "yes" and number(row["env steps/s"]) > 0
    assert "torch.compile: skipped" not in done.stdout
