"""Periodic evaluation on the rating ladder (``train.py evaluation=ladder``): real tiny training runs
(mlp, 8 envs x 16 steps) whose periodic evaluations rate the network on the ladder's cheap rungs
(random, heuristic_r90, heuristic_r75: pure-Python players), inline and in the background worker.

The ratings come from ``keisei/evaluation/ladder.json`` (``scripts/rate_ladder.py``); the tests that
need it are skipped until it exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, assert_clean_error

from keisei.config import opponent_presets
from keisei.evaluation.elo import rating_against
from keisei.evaluation.ladder import LADDER_FILE

REPO = Path(__file__).resolve().parents[1]
RUNGS = ["random", "heuristic_r90", "heuristic_r75"]
#: The ladder on cheap rungs: 2 rungs of 3 played, 2 games each, with one more opponent as today.
LADDER = ["evaluation=ladder", "evaluation.games=2", "evaluation.ladder_rungs=2",
          "evaluation.periodic_opponents=[heuristic]"]
PLAYERS = f"evaluation.players=[{','.join(RUNGS)}]"
EVAL_KEYS = {"update", "eval/global_step", "eval/ladder_elo", "eval/ladder_elo_error", "eval/ladder_games",
             *(f"eval/heuristic/{k}" for k in ("win_rate", "score", "draw_rate", "elo", "elo_error", "games",
                                               "game_length"))}


def train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "train.py", *TINY, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def rated() -> dict[str, dict]:
    """The ladder file's rungs by preset."""
    return {r["preset"]: r for r in json.loads(LADDER_FILE.read_text(encoding="utf-8"))["rungs"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """The same tiny run (4 updates, a ladder rating at steps 256 and 512) evaluated inline and in the
    background."""
    out = {}
    for periodic in ("inline", "background"):
        run_dir = tmp_path_factory.mktemp("ladder") / periodic
        proc = train(run_dir, "training.total_timesteps=512", "evaluation.interval_timesteps=256",
                     f"evaluation.periodic={periodic}", *LADDER, PLAYERS)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out[periodic] = (run_dir, proc)
    return out


def evaluations(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if "eval/global_step" in line]


@pytest.mark.parametrize("periodic", ["inline", "background"])
def test_periodic_evaluation_rates_the_network_on_the_ladder(runs: dict, periodic: str) -> None:
    """Each evaluation rates the network on 2 rungs (the first mid-ladder), 2 games each, against the
    ratings of ladder.json, and plays evaluation.periodic_opponents as before; the match against
    ``opponent`` is not played; the metrics line carries eval/ladder_elo, ..., and the objective is
    the latest ladder Elo."""
    run_dir, proc = runs[periodic]
    ladder = rated()
    evals = evaluations(run_dir)
    assert sorted(e["eval/global_step"] for e in evals) == [256, 512]
    for line in evals:
        assert set(line) == EVAL_KEYS
        step_dir = run_dir / "eval" / f"step_{line['eval/global_step']:09d}"
        summary = json.loads((step_dir / "results.json").read_text(encoding="utf-8"))
        assert (line["eval/ladder_elo"], line["eval/ladder_elo_error"], line["eval/ladder_games"]) == pytest.approx(
            (summary["elo"], summary["elo_error"], 4))
        matches = summary["matches"]
        assert [m["games"] for m in matches] == [2, 2]
        assert {m["rung"] for m in matches} < set(RUNGS)
        for m in matches:
            assert m["opponent"] == ladder[m["rung"]]["name"] and m["rung_elo"] == ladder[m["rung"]]["elo"]
            assert m["held_out"]  # the tiny run trains by self-play only
            assert (m["wins"] + m["draws"] + m["losses"]) == 2
        scores = [(m["opponent"], s) for m in matches for s in [1.0] * m["wins"] + [0.5] * m["draws"]
                  + [0.0] * m["losses"]]
        fixed = {ladder[r]["name"]: ladder[r]["elo"] for r in RUNGS}
        assert line["eval/ladder_elo"] == pytest.approx(rating_against(fixed, scores)[0])
        first = re.sub(r"[^A-Za-z0-9_.+-]+", "_", ladder[RUNGS[1]]["name"])
        assert (step_dir / f"00-{first}" / "results.json").is_file()  # mid-ladder first
        assert not (step_dir / "games").exists()  # no match against `opponent`
        heuristic = json.loads((step_dir / "heuristic" / "results.json").read_text(encoding="utf-8"))
        assert line["eval/heuristic/win_rate"] == pytest.approx(heuristic["win_rate"])
        assert (step_dir / "agent.pt").is_file() == (periodic == "background")
    match = re.search(r"objective:\s+(\S+) \(latest evaluation ladder Elo\)", proc.stdout)
    assert match, proc.stdout
    last = max(evals, key=lambda e: e["eval/global_step"])
    assert float(match.group(1)) == pytest.approx(last["eval/ladder_elo"], abs=5e-5)


def test_inline_and_background_ladder_ratings_agree(runs: dict) -> None:
    """The worker rates the same snapshot on the same rungs with the same seeds: the same ratings."""
    inline, background = (sorted(({k: v for k, v in e.items() if k != "update"} for e in evaluations(runs[p][0])),
                                 key=lambda e: e["eval/global_step"]) for p in ("inline", "background"))
    assert len(inline) == 2
    assert inline == background


@pytest.mark.parametrize("evaluation", [
    ["opponent=random", "evaluation.interval_timesteps=256", "evaluation.games=2"],  # a win rate instead
    [*LADDER, "evaluation.interval_timesteps=256", "evaluation.players=[random,heuristic_r90]"],  # other rungs
])
def test_a_run_resumed_to_another_evaluation_does_not_report_the_old_one(
        tmp_path: Path, runs: dict, evaluation: list[str]) -> None:
    """A ladder run resumed under another periodic evaluation, with nothing left to train: its objective is
    not the ladder Elo presented as this config's figure (it is unknown until this config evaluates)."""
    source = runs["inline"][0] / "checkpoints" / "last.pt"
    proc = train(tmp_path / "run", "training.total_timesteps=512", f"resume={source}", *evaluation)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"objective:\s+(\S+) \((.*)\)", proc.stdout)
    assert match, proc.stdout
    assert match.group(1) == "nan" and "latest evaluation" not in match.group(2), match.group(0)


def test_a_run_resumed_to_the_same_evaluation_keeps_its_objective(tmp_path: Path, runs: dict) -> None:
    run_dir, _ = runs["inline"]
    last = max(evaluations(run_dir), key=lambda e: e["eval/global_step"])
    proc = train(tmp_path / "run", "training.total_timesteps=512", f"resume={run_dir / 'checkpoints' / 'last.pt'}",
                 "evaluation.interval_timesteps=256", *LADDER, PLAYERS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"objective:\s+(\S+) \(latest evaluation ladder Elo\)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) == pytest.approx(last["eval/ladder_elo"], abs=5e-5)


def test_plot_of_a_ladder_run(runs: dict) -> None:
    """keisei.plot draws the ladder Elo of a real run against env steps and training time."""
    import matplotlib.pyplot as plt

    from keisei.plot import metrics_figure

    run_dir = runs["inline"][0]
    evals = sorted(evaluations(run_dir), key=lambda e: e["eval/global_step"])
    fig = metrics_figure(run_dir)
    try:
        axes = {ax.get_title(): ax for ax in fig.axes}
        curve = axes["ladder Elo"].get_lines()[0]
        assert list(curve.get_xdata()) == [256, 512]
        assert list(curve.get_ydata()) == pytest.approx([e["eval/ladder_elo"] for e in evals])
        timed = axes["ladder Elo over training time"].get_lines()[0]
        assert list(timed.get_ydata()) == list(curve.get_ydata())
        assert 0 < timed.get_xdata()[0] < timed.get_xdata()[1]
        assert "periodic evaluation" in axes  # the heuristic's win rate
    finally:
        plt.close(fig)


@pytest.mark.parametrize(("overrides", "named"), [
    (["evaluation=round_robin"], ["evaluation.mode='round_robin'", "evaluate.py"]),
    (["evaluation=gauntlet"], ["evaluation.mode='gauntlet'", "evaluate.py"]),
    (["evaluation=ladder", "evaluation.players=[]"], ["evaluation.players=[]", "rungs"]),
], ids=["round_robin", "gauntlet", "ladder_without_rungs"])
def test_train_refuses_what_it_cannot_evaluate(tmp_path: Path, overrides: list[str], named: list[str]) -> None:
    run_dir = tmp_path / "run"
    assert_clean_error(train(run_dir, "evaluation.interval_timesteps=256", *overrides), *named, returncode=2)
    assert not run_dir.exists()


# Slow: the check is test_ladder.py::test_load_ladder_refuses_an_unrated_preset_and_another_max_plies', through
# evaluate.py test_ladder.py::test_evaluate_ladder_refuses_another_max_plies_or_an_unrated_player'; train.py
# refusing a bad ladder before a run dir is test_train_refuses_what_it_cannot_evaluate[ladder_without_rungs]'s.
@pytest.mark.slow
def test_train_refuses_an_unrated_rung_before_writing_a_run_dir(tmp_path: Path) -> None:
    """A preset that ladder.json does not rate, or games longer than the ladder's, fail in one line
    before training starts, in either periodic mode."""
    unrated = sorted(set(opponent_presets()) - set(rated()))
    assert unrated, "every preset is rated: pick another unrated rung for this test"
    for periodic, overrides, named in [
        ("inline", [f"evaluation.players=[random,{unrated[0]}]"], ["evaluation.players", unrated[0], "not rated"]),
        ("background", [f"evaluation.players=[random,{unrated[0]}]"], ["not rated"]),
        ("inline", [PLAYERS, "evaluation.max_plies=100"], ["evaluation.max_plies=100"]),
    ]:
        run_dir = tmp_path / periodic
        proc = train(run_dir, "evaluation.interval_timesteps=256", f"evaluation.periodic={periodic}",
                     *LADDER, *overrides)
        assert_clean_error(proc, *named, returncode=2)
        assert not run_dir.exists()
