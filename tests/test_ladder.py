"""The rating ladder (keisei/evaluation/ladder.py): the rungs rated once on one Elo scale
(``rate_ladder``, ``scripts/rate_ladder.py``), read back (``load_ladder``), and an agent rated on it
(``rate_agent``, ``evaluate.py evaluation=ladder``).

Real players (random, the heuristic player with and without random moves, fairy-stockfish for the
script), real rsshogi games and real subprocesses; the rungs' matches take well under a second
each. The ``evaluate.py`` tests need the rated ladder ``keisei/evaluation/ladder.json`` and are
skipped while it does not exist.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_clean_error

from keisei.config import ConfigError, EvaluationConfig, TrainConfig
from keisei.evaluation.elo import rating_against
from keisei.evaluation.ladder import (
    LADDER_FILE,
    Rung,
    fit_ladder,
    load_ladder,
    pairs,
    rate_agent,
    rate_ladder,
    trained_against,
)
from keisei.evaluation.opponents import build_opponent, opponent_preset
from keisei.play.players import HeuristicPlayer, RandomPlayer

REPO = Path(__file__).resolve().parents[1]
ENGINE = "/usr/games/fairy-stockfish"
CPU = torch.device("cpu")
#: Cheap rungs, weakest first: the random player, the heuristic player playing 75 % of its moves at
#: random, the heuristic player.
CHEAP = ["random", "heuristic_r75", "heuristic"]
#: The hand-written ladder of ``rate_agent``'s tests: the heuristic player's random-move rungs.
SIX = ["random", "heuristic_r90", "heuristic_r75", "heuristic_r50", "heuristic_r25", "heuristic"]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_MODE")}


def default_sigint() -> None:
    """In the child: SIGINT at its default (a background job starts with it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env(),
                          timeout=timeout)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def mtimes(root: Path) -> dict[str, int]:
    """Every file under ``root`` and its modification time (ns)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def game_scores(m: dict) -> list[float]:
    return [1.0] * m["wins"] + [0.5] * m["draws"] + [0.0] * m["losses"]


@pytest.fixture(scope="module")
def presets() -> dict[str, object]:
    """The opponent configs of the presets used here, composed once (Hydra)."""
    return {p: opponent_preset(p) for p in dict.fromkeys([*CHEAP, *SIX])}


# --- pairs ----------------------------------------------------------------------------------------


def test_pairs_are_neighbours_and_next_neighbours():
    got = pairs(5)
    assert len(got) == len(set(got)) == 4 + 3
    assert set(got) == {(i, i + 1) for i in range(4)} | {(i, i + 2) for i in range(3)}
    assert all(0 <= i < j < 5 for i, j in got)
    # Every rung plays at least two others (the ends: their neighbour and next neighbour).
    for r in range(5):
        assert sum(r in p for p in got) >= 2
    assert pairs(1) == [] and pairs(2) == [(0, 1)]
    assert set(pairs(3)) == {(0, 1), (0, 2), (1, 2)}
    assert all(len(pairs(n)) == 2 * n - 3 for n in range(2, 20))  # n - 1 neighbours, n - 2 next neighbours


# --- rate_ladder ----------------------------------------------------------------------------------


def cheap_ladder(presets, order=CHEAP, anchor="random", out: Path | None = None, games: int = 6):
    cfg = EvaluationConfig(games=games, max_plies=256)
    return rate_ladder({p: presets[p] for p in order}, cfg, out, anchor=anchor, seed=7, progress=False)


def test_rate_ladder_orders_the_rungs_and_writes_one_dir_per_pair(presets, tmp_path: Path):
    out = tmp_path / "ladder"
    ladder = cheap_ladder(presets, out=out)
    assert ladder["anchor"] == "random" and ladder["games_per_pair"] == 6
    rungs = {r["preset"]: r for r in ladder["rungs"]}
    assert [r["preset"] for r in ladder["rungs"]] == CHEAP
    assert [r["name"] for r in ladder["rungs"]] == ["random", "heuristic-r75", "heuristic"]
    assert rungs["random"]["elo"] == 0.0 and rungs["random"]["error"] == 0.0
    assert 0.0 < rungs["heuristic_r75"]["elo"] < rungs["heuristic"]["elo"]
    assert all(math.isfinite(r["elo"]) and r["error"] > 0 for r in ladder["rungs"][1:])
    # One match dir per pair of pairs(3), named <weaker preset>--<stronger preset>, each complete.
    dirs = {p.name for p in out.iterdir()}
    assert dirs == {"random--heuristic_r75", "random--heuristic", "heuristic_r75--heuristic"}
    names = {p: r["name"] for p, r in rungs.items()}
    rows = {(row["player"], row["opponent"]): row for row in ladder["pairs"]}
    assert len(rows) == 3
    for d in dirs:
        a, b = d.split("--")
        results = read_json(out / d / "results.json")
        assert (results["player"], results["opponent"]) == (names[a], names[b])
        assert results["games"] == 6 and not results.get("partial")
        assert len((out / d / "games" / "games.jsonl").read_text(encoding="utf-8").splitlines()) == 6
        assert all(results[k] == rows[names[a], names[b]][k] for k in ("games", "wins", "draws", "losses", "score"))
    # The weaker rung of each pair (its first player) scored at most half.
    for row in ladder["pairs"]:
        assert row["score"] <= 0.5
    json.dumps(ladder)  # storable as ladder.json


def test_rate_ladder_resumes_without_replaying(presets, tmp_path: Path):
    out = tmp_path / "ladder"
    first = cheap_ladder(presets, out=out)
    before = mtimes(out)
    time.sleep(0.01)
    again = cheap_ladder(presets, out=out)
    assert mtimes(out) == before  # nothing replayed, nothing rewritten
    assert again == first
    # The rungs in another order (e.g. a ladder reordered since): the same pairs, read in either order.
    reversed_ = cheap_ladder(presets, order=CHEAP[::-1], out=out)
    assert mtimes(out) == before
    assert {p.name for p in out.iterdir()} == {"random--heuristic_r75", "random--heuristic",
                                                "heuristic_r75--heuristic"}
    assert [r["preset"] for r in reversed_["rungs"]] == CHEAP[::-1]
    elo = {r["preset"]: r["elo"] for r in reversed_["rungs"]}
    assert elo["random"] == 0.0 and 0.0 < elo["heuristic_r75"] < elo["heuristic"]
    # Another anchor: no replay either, the table shifted.
    shifted = cheap_ladder(presets, anchor="heuristic_r75", out=out)
    assert mtimes(out) == before
    elo_first = {r["preset"]: r["elo"] for r in first["rungs"]}
    elo_shifted = {r["preset"]: r["elo"] for r in shifted["rungs"]}
    assert elo_shifted["heuristic_r75"] == 0.0
    for p in CHEAP:
        assert elo_shifted[p] == pytest.approx(elo_first[p] - elo_first["heuristic_r75"], abs=0.2)


def test_rate_ladder_reordered_gives_the_same_ratings(presets, tmp_path: Path):
    """The same games, the rungs listed in another order (resumed, nothing replayed): the same ratings.
    (Found: ``ratings`` gives the virtual draw of a perfect/null score to players in list order, so
    with random losing and the heuristic winning every game, heuristic_r75 is rated 439.5 in one
    order and 560.2 in the other, from the same games.)"""
    out = tmp_path / "ladder"
    first = cheap_ladder(presets, out=out)
    reordered = cheap_ladder(presets, order=CHEAP[::-1], out=out)
    assert {r["preset"]: r["elo"] for r in reordered["rungs"]} == \
        pytest.approx({r["preset"]: r["elo"] for r in first["rungs"]}, abs=0.2)
    assert {r["preset"]: r["error"] for r in reordered["rungs"]} == \
        pytest.approx({r["preset"]: r["error"] for r in first["rungs"]}, abs=0.2)


def test_rate_ladder_replays_only_a_partial_pair(presets, tmp_path: Path):
    out = tmp_path / "ladder"
    cheap_ladder(presets, out=out)
    partial = out / "random--heuristic" / "results.json"
    data = read_json(partial)
    data.update(partial=True, games_planned=6, games=3)
    partial.write_text(json.dumps(data), encoding="utf-8")
    before = mtimes(out)
    time.sleep(0.01)
    cheap_ladder(presets, out=out)
    after = mtimes(out)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed and all(p.startswith("random--heuristic/") for p in changed), changed
    replayed = read_json(partial)
    assert replayed["games"] == 6 and not replayed.get("partial")


def test_rate_ladder_rerun_with_more_games_does_not_report_games_it_did_not_play(presets, tmp_path: Path):
    """Resumed with more games a pair (e.g. ``--games 2`` then ``--games 6`` into the same ``--out``),
    the ladder must hold what ``games_per_pair`` says: either the pairs are played to the new count or
    the short ones are refused. (Found: the 2-game pairs are read back as complete and the ladder says
    ``games_per_pair: 6``.)"""
    out = tmp_path / "ladder"
    cheap_ladder(presets, out=out, games=2)
    ladder = cheap_ladder(presets, out=out, games=6)
    assert [row["games"] for row in ladder["pairs"]] == [ladder["games_per_pair"]] * 3, ladder["pairs"]


def test_a_resumed_rating_counts_the_minutes_of_every_pair(presets, tmp_path: Path):
    """The ladder's ``minutes`` are the wall time of all its pairs' matches, those played by an
    earlier call included. (Found: ``scripts/rate_ladder.py`` stored the last call's minutes only, so
    a resumed rating of 40 pairs said 0.5 minutes.)"""
    out = tmp_path / "ladder"
    cheap_ladder(presets, out=out)
    assert all(read_json(d / "results.json")["seconds"] > 0 for d in out.iterdir())
    shutil.rmtree(out / "random--heuristic")  # this pair is played again, the other two are read back
    # The cheap matches take milliseconds, below the minutes' rounding: give the two pairs of the
    # earlier call the times of real engine matches (90 s and 150 s), so the sum tells them apart.
    for name, secs in (("random--heuristic_r75", 90.0), ("heuristic_r75--heuristic", 150.0)):
        path = out / name / "results.json"
        path.write_text(json.dumps(read_json(path) | {"seconds": secs}), encoding="utf-8")
    ladder = cheap_ladder(presets, out=out)
    replayed = read_json(out / "random--heuristic" / "results.json")["seconds"]
    assert 0 < replayed < 60
    assert ladder["minutes"] == pytest.approx((90.0 + 150.0 + replayed) / 60, abs=1e-3)
    # A pair's results.json from before matches were timed: the minutes are unknown, not undercounted.
    older = out / "random--heuristic_r75" / "results.json"
    older.write_text(json.dumps({k: v for k, v in read_json(older).items() if k != "seconds"}), encoding="utf-8")
    assert cheap_ladder(presets, out=out)["minutes"] is None


@pytest.mark.slow
def test_rate_ladder_script_writes_where_told(tmp_path: Path):
    """scripts/rate_ladder.py on the ladder of conf/evaluation/ladder.yaml (fairy-stockfish rungs
    included), 2 games a pair, its ratings written to --ladder-file, not to keisei/evaluation/ladder.json."""
    if not os.access(ENGINE, os.X_OK):
        pytest.skip(f"{ENGINE} is not installed (apt-get install fairy-stockfish)")
    import yaml

    players = yaml.safe_load((REPO / "conf" / "evaluation" / "ladder.yaml").read_text(encoding="utf-8"))["players"]
    real = LADDER_FILE.stat().st_mtime_ns if LADDER_FILE.exists() else None
    out, ladder_file = tmp_path / "pairs", tmp_path / "ladder.json"
    proc = run_python("scripts/rate_ladder.py", "--games", "2", "--out", str(out), "--ladder-file", str(ladder_file),
                      timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    ladder = read_json(ladder_file)
    assert [r["preset"] for r in ladder["rungs"]] == players
    assert ladder["anchor"] == "random" and ladder["max_plies"] == 256 and ladder["games_per_pair"] == 2
    assert next(r for r in ladder["rungs"] if r["preset"] == "random")["elo"] == 0.0
    assert all(math.isfinite(r["elo"]) and math.isfinite(r["error"]) for r in ladder["rungs"])
    assert len({p.name for p in out.iterdir()}) == len(pairs(len(players))) == len(ladder["pairs"])
    for i, j in pairs(len(players)):
        assert read_json(out / f"{players[i]}--{players[j]}" / "results.json")["games"] == 2
    assert f"ratings: {ladder_file}" in proc.stdout
    assert sum(line.split()[0] in {r["name"] for r in ladder["rungs"]} for line in proc.stdout.splitlines()) == \
        len(players)
    assert not list(tmp_path.glob("*.tmp"))
    assert (LADDER_FILE.stat().st_mtime_ns if LADDER_FILE.exists() else None) == real  # not touched
    # Run again: every pair is read back, none replayed, the same ratings.
    before = mtimes(out)
    again = run_python("scripts/rate_ladder.py", "--games", "2", "--out", str(out), "--ladder-file",
                       str(ladder_file), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert mtimes(out) == before
    assert read_json(ladder_file)["rungs"] == ladder["rungs"]


@pytest.mark.slow
def test_rate_ladder_script_ladder_file_in_a_new_dir(tmp_path: Path):
    """``--ladder-file`` in a dir that does not exist yet: the ratings are written there (or the script
    says so in one line before it plays), not a traceback after every pair was played. (Found:
    FileNotFoundError on ``<dir>/ladder.tmp`` once all the pairs are played.)"""
    if not os.access(ENGINE, os.X_OK):
        pytest.skip(f"{ENGINE} is not installed (apt-get install fairy-stockfish)")
    ladder_file = tmp_path / "new" / "ladder.json"
    proc = run_python("scripts/rate_ladder.py", "--games", "1", "--out", str(tmp_path / "pairs"), "--ladder-file",
                      str(ladder_file), timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if proc.returncode == 0:
        assert read_json(ladder_file)["games_per_pair"] == 1
    else:
        assert len(proc.stderr.strip().splitlines()) == 1 and "ladder-file" in proc.stderr


def test_rate_ladder_script_refuses_an_anchor_off_the_ladder(tmp_path: Path):
    proc = run_python("scripts/rate_ladder.py", "--games", "2", "--anchor", "gpsusi", "--out", str(tmp_path / "p"),
                      "--ladder-file", str(tmp_path / "ladder.json"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "--anchor 'gpsusi'" in proc.stderr and "random" in proc.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "ladder.json").exists()


# --- load_ladder ----------------------------------------------------------------------------------


def synthetic_match(player: str, opponent: str, wins: int, draws: int, losses: int) -> dict:
    games = wins + draws + losses
    return {"player": player, "opponent": opponent, "games": games, "wins": wins, "draws": draws,
            "losses": losses, "score": (wins + draws / 2) / games}


def write_ladder(path: Path, presets, order=SIX, max_plies: int = 256) -> dict:
    """A ladder.json as scripts/rate_ladder.py writes it (``fit_ladder`` and ``max_plies``) from
    hand-written results: each rung scores 75 % against the one below it and 90 % against the one
    below that (odds that multiply: about 191 Elo a step)."""
    names = [presets[p].name for p in order]
    matches = []
    for i, j in pairs(len(order)):
        matches.append(synthetic_match(names[i], names[j], 5, 0, 15) if j == i + 1
                       else synthetic_match(names[i], names[j], 1, 0, 9))
    ladder = fit_ladder(list(order), names, matches, order[0], 20)
    ladder["max_plies"] = max_plies
    path.write_text(json.dumps(ladder, indent=2) + "\n", encoding="utf-8")
    return ladder


def test_hand_written_ladder_is_a_chain_of_191_elo_steps(presets, tmp_path: Path):
    ladder = write_ladder(tmp_path / "ladder.json", presets)
    elo = [r["elo"] for r in ladder["rungs"]]
    assert elo[0] == 0.0
    for low, high in itertools.pairwise(elo):
        assert high - low == pytest.approx(400 * math.log10(3), abs=1.0)


def test_load_ladder_reads_the_rungs_asked_for(presets, tmp_path: Path):
    path = tmp_path / "ladder.json"
    ladder = write_ladder(path, presets)
    rungs = load_ladder(["heuristic_r75", "random", "heuristic"], 256, path)
    stored = {r["preset"]: r for r in ladder["rungs"]}
    assert [r.preset for r in rungs] == ["heuristic_r75", "random", "heuristic"]  # in the order asked
    for r in rungs:
        assert isinstance(r, Rung)
        assert (r.name, r.elo, r.error) == (stored[r.preset]["name"], stored[r.preset]["elo"],
                                            stored[r.preset]["error"])


def one_line_config_error(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_load_ladder_refuses_an_unrated_preset_and_another_max_plies(presets, tmp_path: Path):
    path = tmp_path / "ladder.json"
    write_ladder(path, presets, order=CHEAP)
    message = one_line_config_error(lambda: load_ladder(["random", "heuristic_r25", "heuristic"], 256, path))
    assert message.startswith("evaluation.players") and "heuristic_r25" in message and str(path) in message
    assert "heuristic_r75" not in message and "random," not in message  # only the unrated one is named
    message = one_line_config_error(lambda: load_ladder(CHEAP, 100, path))
    assert message.startswith("evaluation.max_plies=100") and "256" in message
    message = one_line_config_error(lambda: load_ladder(CHEAP, 256, tmp_path / "missing.json"))
    assert "missing.json" in message and "rate_ladder.py" in message


# --- trained_against ------------------------------------------------------------------------------


def test_trained_against_is_the_heuristic_when_the_pool_had_it():
    cfg = TrainConfig()
    assert cfg.training.opponent_pool.heuristic_fraction == 0
    assert trained_against(cfg) == frozenset()
    cfg.training.opponent_pool.heuristic_fraction = 0.25
    assert trained_against(cfg) == frozenset({"heuristic"})


def test_trained_against_follows_the_run_it_started_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run started from a checkpoint (training.init_checkpoint) of a run that played the heuristic player
    trained against it too, through two starts; a start whose checkpoint is gone is named in a warning."""
    from keisei.config import to_container
    from keisei.nn.checkpoint import save_checkpoint

    first = TrainConfig()
    first.training.opponent_pool.heuristic_fraction = 0.25
    save_checkpoint({"config": to_container(first)}, tmp_path / "first.pt")
    second = TrainConfig()
    second.training.init_checkpoint = str(tmp_path / "first.pt")
    save_checkpoint({"config": to_container(second)}, tmp_path / "second.pt")
    third = TrainConfig()
    third.training.init_checkpoint = str(tmp_path / "second.pt")
    assert trained_against(third) == frozenset({"heuristic"})
    third.training.init_checkpoint = str(tmp_path / "gone.pt")
    assert trained_against(third) == frozenset()
    assert "gone.pt" in capsys.readouterr().err


# --- rate_agent -----------------------------------------------------------------------------------


def build_rung(presets):
    return lambda rung, seed: build_opponent(presets[rung.preset], CPU, seed)


def played_dirs(out: Path) -> list[Path]:
    """The match dirs ``<k>-<rung name>`` of a rating (not Hydra's ``.hydra``)."""
    return sorted(d for d in out.iterdir() if d.is_dir() and re.fullmatch(r"\d\d-.+", d.name))


def check_adaptive_choice(rungs: list[Rung], out: Path) -> list[Rung]:
    """The rungs played, in order (from the match dirs ``<k>-<rung name>``): the first mid-ladder, each
    next the unplayed rung rated nearest the rating from the matches before it."""
    by_name = {r.name: r for r in rungs}
    dirs = played_dirs(out)
    played = []
    for k, d in enumerate(dirs):
        prefix, name = d.name.split("-", 1)
        assert prefix == f"{k:02d}"
        played.append((by_name[name], read_json(d / "results.json")))
    assert played[0][0] == rungs[len(rungs) // 2]
    for k in range(1, len(played)):
        estimate, _ = rating_against({r.name: r.elo for r, _ in played[:k]},
                                     [(r.name, s) for r, m in played[:k] for s in game_scores(m)])
        unplayed = [r for r in rungs if r not in {r for r, _ in played[:k]}]
        distance = min(abs(r.elo - estimate) for r in unplayed)
        assert abs(played[k][0].elo - estimate) == pytest.approx(distance), (k, estimate, played[k][0])
    return [r for r, _ in played]


def check_summary(summary: dict, out: Path, agent: str, games: int, rungs_played: list[Rung]) -> None:
    assert read_json(out / "results.json") == json.loads(json.dumps(summary))
    assert (out / "results.md").read_text(encoding="utf-8") == summary["table"]
    assert summary["player"] == agent and not summary.get("partial")
    assert summary["games"] == games * len(rungs_played)
    assert summary["minutes"] == pytest.approx(sum(m["seconds"] for m in summary["matches"]) / 60, abs=1e-3)
    assert [m["rung"] for m in summary["matches"]] == [r.preset for r in sorted(rungs_played, key=lambda r: r.elo)]
    for m in summary["matches"]:
        assert m["games"] == games and m["player"] == agent
        match_dir = next(d for d in played_dirs(out) if d.name.split("-", 1)[1] == m["opponent"])
        assert m == read_json(match_dir / "results.json") | {k: m[k] for k in ("rung", "rung_elo", "held_out")}
    # The rating: the agent's games against the rungs' fixed ratings.
    elo, error = rating_against({m["opponent"]: m["rung_elo"] for m in summary["matches"]},
                                [(m["opponent"], s) for m in summary["matches"] for s in game_scores(m)])
    assert summary["elo"] == pytest.approx(elo) and summary["elo_error"] == pytest.approx(error)
    assert math.isfinite(elo) and error > 0
    first = summary["table"].splitlines()[0]
    assert first.startswith(f"{agent}: ladder Elo {summary['elo']:.0f} ± {summary['elo_error']:.0f}")


def test_rate_agent_moves_down_for_a_random_agent(presets, tmp_path: Path):
    path = tmp_path / "ladder.json"
    write_ladder(path, presets)
    rungs = load_ladder(SIX, 256, path)
    out = tmp_path / "rating"
    cfg = EvaluationConfig(games=4, max_plies=256, ladder_rungs=3)
    summary = rate_agent(RandomPlayer(seed=1, name="agent"), rungs, build_rung(presets), cfg, out, seed=11)
    played = check_adaptive_choice(rungs, out)
    assert len(played) == 3
    assert played[0].preset == "heuristic_r50"  # mid-ladder: SIX[6 // 2]
    assert all(r.elo < played[0].elo for r in played[1:])  # then down, toward the random rung
    heuristic = next(r for r in rungs if r.preset == "heuristic")
    assert summary["elo"] < heuristic.elo and summary["elo"] < played[0].elo
    check_summary(summary, out, "agent", 4, played)
    assert all(m["held_out"] for m in summary["matches"])  # trained against nothing
    for d in played_dirs(out):
        assert len((d / "games" / "games.jsonl").read_text(encoding="utf-8").splitlines()) == 4


def test_rate_agent_moves_up_for_the_heuristic_player(presets, tmp_path: Path):
    path = tmp_path / "ladder.json"
    write_ladder(path, presets)
    rungs = load_ladder(SIX, 256, path)
    out = tmp_path / "rating"
    cfg = EvaluationConfig(games=4, max_plies=256, ladder_rungs=2)
    summary = rate_agent(HeuristicPlayer(seed=2, name="greedy"), rungs, build_rung(presets), cfg, out, seed=12)
    played = check_adaptive_choice(rungs, out)
    assert played[0].preset == "heuristic_r50"
    assert played[1].elo > played[0].elo
    assert summary["elo"] > played[0].elo
    check_summary(summary, out, "greedy", 4, played)


def test_rate_agent_plays_only_held_out_rungs(presets, tmp_path: Path):
    """A run that trained against the heuristic player is rated on the other rungs only; a ladder of
    nothing but rungs it trained against is played all the same, each marked so in the table."""
    path = tmp_path / "ladder.json"
    write_ladder(path, presets)
    rungs = load_ladder(SIX, 256, path)
    cfg = TrainConfig()
    cfg.training.opponent_pool.heuristic_fraction = 0.5
    out = tmp_path / "rating"
    ev = EvaluationConfig(games=2, max_plies=256, ladder_rungs=len(SIX) + 2)  # more than there are: all of them
    summary = rate_agent(RandomPlayer(seed=3, name="agent"), rungs, build_rung(presets), ev, out, seed=13,
                         trained_against=trained_against(cfg))
    held_out = [r for r in rungs if r.preset != "heuristic"]
    assert len(played_dirs(out)) == len(held_out)
    check_adaptive_choice(held_out, out)
    check_summary(summary, out, "agent", 2, held_out)
    assert {m["rung"] for m in summary["matches"]} == {r.preset for r in held_out}
    assert all(m["held_out"] for m in summary["matches"])

    only = load_ladder(["heuristic"], 256, path)
    out = tmp_path / "only"
    summary = rate_agent(RandomPlayer(seed=3, name="agent"), only, build_rung(presets), ev, out, seed=13,
                         trained_against=trained_against(cfg))
    assert [(m["rung"], m["held_out"]) for m in summary["matches"]] == [("heuristic", False)]
    table = (out / "results.md").read_text(encoding="utf-8")
    assert table.count("no (trained against)") == 1
    assert next(line for line in table.splitlines() if "trained against" in line).startswith("| heuristic |")


def rating_script(ladder: Path, out: Path, games: int, caught: str, build_waits: bool = False) -> str:
    """A script that rates a random agent on six rungs of ``ladder`` (``games`` a rung) into ``out``, exits
    130 on ``caught`` (``MatchInterrupted`` or ``KeyboardInterrupt``); with ``build_waits`` it prints
    "building" and waits two minutes before it builds the second rung's opponent."""
    return f"""
import sys, time
from pathlib import Path
import torch
from keisei.config import EvaluationConfig
from keisei.evaluation.ladder import load_ladder, rate_agent
from keisei.evaluation.opponents import build_opponent, opponent_preset
from keisei.play.match import MatchInterrupted
from keisei.play.players import RandomPlayer
rungs = load_ladder({SIX!r}, 256, Path({str(ladder)!r}))
ops = {{r.preset: opponent_preset(r.preset) for r in rungs}}
built = []
def build(rung, seed):
    if built and {build_waits!r}:
        print("building", flush=True)
        time.sleep(120)
    built.append(rung)
    return build_opponent(ops[rung.preset], torch.device("cpu"), seed)
try:
    rate_agent(RandomPlayer(seed=4, name="agent"), rungs, build,
               EvaluationConfig(games={games}, max_plies=256, ladder_rungs=3, save_records=False),
               Path({str(out)!r}), seed=14)
except {caught}:
    sys.exit(130)
print("not interrupted", flush=True)
"""


def interrupt(script: str, ready: Callable[[subprocess.Popen], None]) -> tuple[str, str]:
    """Run ``script``, send it a real SIGINT once ``ready(proc)`` returns; its (stdout, stderr), exit 130."""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        ready(proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (stdout, stderr[-3000:])
    assert "Traceback" not in stderr and "not interrupted" not in stdout
    return stdout, stderr


def test_rate_agent_interrupted_keeps_a_partial_rating(presets, tmp_path: Path):
    """Ctrl-C (a real SIGINT) during the second rung's match: the first match and the second's finished
    games are rated (``"partial": true``), and the interruption is raised again."""
    path = tmp_path / "ladder.json"
    write_ladder(path, presets)
    out = tmp_path / "rating"

    def into_the_second_match(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 240
        while not list(out.glob("00-*/results.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first rung's match did not finish"
            time.sleep(0.05)
        time.sleep(0.8)  # into the second rung's match (1000 games: seconds)

    _, stderr = interrupt(rating_script(path, out, 1000, "MatchInterrupted"), into_the_second_match)
    summary = read_json(out / "results.json")
    assert summary["partial"] is True
    first = read_json(next(out.glob("00-*/results.json")))
    assert first["games"] == 1000 and not first.get("partial")
    assert 1000 <= summary["games"] < 2000
    assert summary["games"] == sum(m["games"] for m in summary["matches"])
    assert f"interrupted: a rating from {summary['games']} games kept" in stderr
    assert math.isfinite(summary["elo"]) and summary["elo_error"] > 0
    second = list(out.glob("01-*/results.json"))
    if summary["games"] > 1000:  # the second match had finished games: kept, marked partial
        assert len(second) == 1 and read_json(second[0])["partial"] is True
        assert len(summary["matches"]) == 2
    assert not list(out.glob("02-*"))
    assert (out / "results.md").read_text(encoding="utf-8") == summary["table"]


@pytest.mark.parametrize("rerun", [False, True])
def test_rate_agent_interrupted_between_matches_keeps_the_rating(presets, tmp_path: Path, rerun: bool):
    """Ctrl-C (a real SIGINT) while the second rung's opponent is being built (an engine starting), after
    the first match: that match is rated (``"partial": true``) and the interruption is raised again. In a
    rerun into the dir of a finished rating, the earlier run's second match is not counted as this one's."""
    path = tmp_path / "ladder.json"
    write_ladder(path, presets)
    out = tmp_path / "rating"
    if rerun:
        done = subprocess.run([sys.executable, "-c", rating_script(path, out, 20, "KeyboardInterrupt")], cwd=REPO,
                              env=env(), capture_output=True, text=True, timeout=240)
        assert "not interrupted" in done.stdout and list(out.glob("01-*/results.json")), done.stderr[-3000:]

    def building(proc: subprocess.Popen) -> None:
        assert proc.stdout.readline() == "building\n", proc.communicate()

    _, stderr = interrupt(rating_script(path, out, 20, "KeyboardInterrupt", build_waits=True), building)
    summary = read_json(out / "results.json")
    assert summary["partial"] is True and summary["games"] == 20 and len(summary["matches"]) == 1
    first = read_json(next(out.glob("00-*/results.json")))
    assert [summary["matches"][0][k] for k in ("wins", "draws", "losses")] == [first[k] for k in
                                                                                ("wins", "draws", "losses")]
    assert "interrupted: a rating from 20 games kept" in stderr
    assert math.isfinite(summary["elo"]) and not list(out.glob("01-*/results.json"))


# --- evaluate.py evaluation=ladder ----------------------------------------------------------------


def require_ladder_file() -> dict:
    """The committed ladder (a missing file fails the test: evaluate.py needs it)."""
    return read_json(LADDER_FILE)


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_python(str(REPO / script), *args, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One update of a tiny mlp agent (tests/test_evaluate.py's): it plays almost randomly."""
    require_ladder_file()
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    proc = run_script("train.py", *TINY, f"hydra.run.dir={run_dir}", "training.total_timesteps=128")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    return run_dir


LADDER_ARGS = ["evaluation=ladder", "evaluation.players=[random,heuristic_r90,heuristic_r75]", "evaluation.games=2",
               "evaluation.ladder_rungs=2", "logging.progress_bar=false"]


def test_evaluate_ladder_rates_a_checkpoint(tiny_run: Path, tmp_path: Path):
    ladder = require_ladder_file()
    out = tmp_path / "eval"
    proc = run_script("evaluate.py", f"checkpoint={tiny_run}", *LADDER_ARGS, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    results = read_json(out / "results.json")
    assert results["player"] == str(tiny_run)
    assert isinstance(results["elo"], float) and math.isfinite(results["elo"]) and results["elo_error"] > 0
    assert results["games"] == 4 and len(results["matches"]) == 2
    line = next(line for line in proc.stdout.splitlines() if "ladder Elo" in line)
    assert line == f"{tiny_run}: ladder Elo {results['elo']:.0f} ± {results['elo_error']:.0f} (95 %)"
    assert (out / "results.md").read_text(encoding="utf-8") == results["table"]
    assert str(out / "results.json") in proc.stdout
    # The rungs' ratings are the stored ladder's; the first rung played is the middle one.
    stored = {r["preset"]: r for r in ladder["rungs"]}
    rungs = [Rung(**{k: stored[p][k] for k in ("preset", "name", "elo", "error")})
             for p in ("random", "heuristic_r90", "heuristic_r75")]
    played = check_adaptive_choice(rungs, out)
    assert played[0].preset == "heuristic_r90"
    for m in results["matches"]:
        assert m["rung_elo"] == stored[m["rung"]]["elo"] and m["games"] == 2
        assert m["held_out"] is True  # the tiny run's pool had no heuristic player
    elo, error = rating_against({m["opponent"]: m["rung_elo"] for m in results["matches"]},
                                [(m["opponent"], s) for m in results["matches"] for s in game_scores(m)])
    assert results["elo"] == pytest.approx(elo) and results["elo_error"] == pytest.approx(error)
    for d in played_dirs(out):
        assert len((d / "games" / "games.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_evaluate_ladder_refuses_another_max_plies_or_an_unrated_player(tiny_run: Path, tmp_path: Path):
    require_ladder_file()
    proc = run_script("evaluate.py", f"checkpoint={tiny_run}", *LADDER_ARGS, "evaluation.max_plies=100",
                      f"hydra.run.dir={tmp_path / 'a'}")
    assert_clean_error(proc, "evaluation.max_plies=100", "256")
    assert not (tmp_path / "a" / "results.json").exists()
    proc = run_script("evaluate.py", f"checkpoint={tiny_run}", *LADDER_ARGS, "evaluation.players=[random,gpsusi]",
                      f"hydra.run.dir={tmp_path / 'b'}")
    assert_clean_error(proc, "evaluation.players", "gpsusi")
