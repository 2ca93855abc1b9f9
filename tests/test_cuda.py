"""The CUDA paths on a real GPU: the sampler, train.py with bf16 autocast and torch.compile, a resume,
evaluate.py with search, Gumbel AlphaZero's batched search and one NCCL rank under torchrun.

Skipped where torch sees no CUDA device (CI and this project's CPU machines); on a GPU machine:
``python -m pytest tests/test_cuda.py -n 4`` (docs/gpu.md says when it last ran and what it found).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import clean_env, metric_steps, play_random_games

from keisei.nn.checkpoint import load_model
from keisei.nn.policy import masked_logits, sample
from keisei.shogi import NUM_ACTIONS, legal_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

REPO = Path(__file__).resolve().parents[1]
#: The baseline's network (a ResNet with normalisation layers) and its opponents, a few updates long.
SHORT = ["experiment=cpu_baseline", "device=cuda", "env.num_envs=64", "algorithm.num_steps=32",
         "training.checkpoint_interval_timesteps=4096", "evaluation.interval_timesteps=0",
         "evaluation.periodic_opponents=[]", "logging.progress_bar=false"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=clean_env(),
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc


def test_the_sampler_on_cuda_never_draws_an_illegal_label() -> None:
    """Real legal-move masks, peaked policies (many labels of probability 0 and some tiny ones), over
    two million draws of CUDA's parallel cumulative sum: every drawn label is legal, and a label's
    share of the draws matches its probability."""
    games = play_random_games(seed=7, games=4, max_plies=120)
    playing = [g for g in games if not g.is_over]
    mask = torch.stack([torch.from_numpy(legal_mask(g)) for g in playing[:: max(1, len(playing) // 256)]]).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(mask.shape, device="cuda", generator=generator) * 8
    probs = torch.softmax(masked_logits(logits, mask), dim=1)
    counts = torch.zeros_like(probs)
    rounds = max(1, 2_000_000 // probs.shape[0] // 32)
    for _ in range(rounds):
        drawn = sample(probs.repeat(32, 1), generator).view(32, -1)
        assert mask.gather(1, drawn.T).all(), "an illegal label was drawn"
        counts += torch.nn.functional.one_hot(drawn, NUM_ACTIONS).sum(0).float()
    draws = rounds * 32
    expected = probs * draws
    sigma = (expected * (1 - probs)).sqrt()
    assert torch.all((counts - expected).abs() <= 6 * sigma + 1)


def test_train_bf16_compiled_resume_then_evaluate_with_search_on_cuda(tmp_path: Path) -> None:
    """train.py on the GPU (bf16 autocast, torch.compile), extended by a resume in the same run dir;
    its checkpoint loads on the CPU and evaluate.py plays it on the GPU with search."""
    run_dir = tmp_path / "run"
    common = [*SHORT, "training.precision=bf16", "training.compile=true", f"hydra.run.dir={run_dir}"]
    run("train.py", *common, "training.total_timesteps=8192")
    assert metric_steps(run_dir)[-1] == 8192
    run("train.py", *common, "training.total_timesteps=16384")
    assert metric_steps(run_dir)[-1] == 16384
    assert sorted(set(metric_steps(run_dir))) == metric_steps(run_dir)  # the resume repeated no update
    model, cfg = load_model(run_dir, "cpu")
    assert cfg.training.precision == "bf16" and next(model.parameters()).device.type == "cpu"
    out = tmp_path / "eval"
    run("evaluate.py", f"checkpoint={run_dir}", "device=cuda", "evaluation.games=4", "evaluation.max_plies=64",
        "evaluation.search.simulations=32", "logging.progress_bar=false", f"hydra.run.dir={out}")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["games"] == 4 and results["wins"] + results["draws"] + results["losses"] == 4


def test_gumbel_alphazero_trains_on_cuda(tmp_path: Path) -> None:
    """Gumbel AlphaZero's batched search and its update on the GPU (the network of its CPU preset)."""
    run_dir = tmp_path / "run"
    run("train.py", "experiment=gumbel_az_cpu", "device=cuda", "training.total_timesteps=2048",
        "training.checkpoint_interval_timesteps=1024", "evaluation.interval_timesteps=0",
        "evaluation.periodic_opponents=[]", "logging.progress_bar=false", f"hydra.run.dir={run_dir}")
    assert metric_steps(run_dir)[-1] >= 2048
    assert (run_dir / "checkpoints" / "final.pt").exists()


def test_one_nccl_rank_under_torchrun(tmp_path: Path) -> None:
    """torchrun with device=cuda: the NCCL process group, its broadcasts and all-reduces, one rank."""
    run_dir = tmp_path / "run"
    run("-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone", str(REPO / "train.py"), *SHORT,
        "training.total_timesteps=4096", f"hydra.run.dir={run_dir}")
    assert metric_steps(run_dir)[-1] == 4096
    assert (run_dir / "checkpoints" / "final.pt").exists()
