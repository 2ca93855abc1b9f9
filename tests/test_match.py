"""Matches: colours, openings, refereeing, the figures of match_results and the records of save_records."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter

import pytest
import torch
from rsshogi.record import Record

from keisei.config import ModelConfig
from keisei.evaluation.elo import elo_from_score
from keisei.nn.model import build_model
from keisei.play.match import match_results, play_match, save_records
from keisei.play.players import AgentPlayer, HeuristicPlayer, Player, RandomPlayer
from keisei.shogi import STARTPOS, Color, Game, Termination


class Recording(Player):
    """Plays like ``inner`` and notes, for every position it is asked about, (game id, side to move, ply)."""

    def __init__(self, inner: Player) -> None:
        self.inner = inner
        self.name = inner.name
        self.seen: list[tuple[int, Color, int]] = []

    def choose(self, games):
        self.seen.extend((id(g), g.turn, g.ply) for g in games)
        return self.inner.choose(games)


class Resigner(Player):
    """Resigns every game at its first turn."""

    name = "resigner"

    def choose(self, games):
        return [Termination.RESIGN for _ in games]


def usi_moves(record: Record) -> list[str]:
    text = record.to_usi_position()
    return text.split(" moves ", 1)[1].split() if " moves " in text else []


# --- play_match ------------------------------------------------------------------------------------


def test_colours_alternate_and_each_player_moves_only_its_own_side():
    a = Recording(RandomPlayer(seed=1, name="a"))
    b = Recording(RandomPlayer(seed=2, name="b"))
    games = play_match(a, b, games=5, max_plies=40)
    assert [m.a_colour for m in games] == [Color.BLACK, Color.WHITE, Color.BLACK, Color.WHITE, Color.BLACK]
    by_id = {id(m.game): m for m in games}
    for player, is_a in ((a, True), (b, False)):
        for game_id, turn, _ in player.seen:
            m = by_id[game_id]
            assert turn is (m.a_colour if is_a else m.a_colour.opponent)
    # Every ply was chosen by exactly one call, and no game was asked about twice at the same ply.
    assert len(a.seen) + len(b.seen) == sum(m.game.ply for m in games)
    asked = Counter((game_id, ply) for game_id, _, ply in a.seen + b.seen)
    assert max(asked.values()) == 1
    # From the start position Black moves first: the first player moves first exactly in the even games.
    for k, m in enumerate(games):
        assert ((id(m.game), Color.BLACK, 0) in a.seen) == (k % 2 == 0)
        assert ((id(m.game), Color.BLACK, 0) in b.seen) == (k % 2 == 1)


# [0.0]: greedy moves; [1.0] also has the workers draw the sampled moves as here. Slow.
@pytest.mark.parametrize("temperature", [pytest.param(0.0, marks=pytest.mark.slow), 1.0])
def test_networks_on_env_workers_play_the_games_played_here(temperature: float) -> None:
    """Two networks (the default ResNet kind) stepped by 2 env worker processes play the same games
    as in this process: moves, results and how they ended, sampled moves included. Games end in
    different rounds (mates, the ply limit), so finished envs go on with filler games meanwhile (seed 1:
    networks whose games end in different rounds at both temperatures)."""
    torch.manual_seed(1)
    nets = [build_model(ModelConfig(blocks=1, channels=16, value_hidden=16)).eval() for _ in range(2)]

    def match(workers: int) -> list:
        a = AgentPlayer(nets[0], name="a", temperature=temperature, seed=1)
        b = AgentPlayer(nets[1], name="b", temperature=temperature, seed=2)
        return play_match(a, b, games=12, max_plies=160, opening_plies=2, seed=3, workers=workers)

    here, there = match(1), match(2)
    played = [(m.a_colour, m.game.moves, m.game.result, m.game.termination) for m in here]
    assert [(m.a_colour, m.game.moves, m.game.result, m.game.termination) for m in there] == played
    assert all(m.game.is_over for m in there)
    assert len({m.game.ply for m in here}) > 1  # not every game lasted the same number of rounds
    assert match_results(there, "a", "b") == match_results(here, "a", "b")


def test_pairs_of_games_share_their_opening():
    plies = 4
    a = Recording(RandomPlayer(seed=3))
    b = Recording(RandomPlayer(seed=4))
    games = play_match(a, b, games=6, max_plies=60, opening_plies=plies, seed=5)
    openings = [tuple(m.game.moves[:plies]) for m in games]
    assert all(len(opening) == plies for opening in openings)
    for k in range(0, 6, 2):
        assert openings[k] == openings[k + 1]
        assert games[k].a_colour is Color.BLACK and games[k + 1].a_colour is Color.WHITE
    assert len({openings[0], openings[2], openings[4]}) == 3
    # The players are first asked after the opening; the opening moves replay as legal.
    assert min(ply for _, _, ply in a.seen + b.seen) == plies
    for m in games:
        assert Game.from_usi_position(m.game.to_usi_position(), max_plies=60).moves == m.game.moves
        assert m.game.start_sfen == STARTPOS  # the opening is part of the game, not a new start


def test_match_is_reproducible_with_a_seed():
    def run(seed: int) -> list[list[str]]:
        games = play_match(RandomPlayer(seed=6), RandomPlayer(seed=7), games=4, max_plies=30, opening_plies=3,
                           seed=seed)
        return [m.game.moves for m in games]

    first = run(8)
    assert run(8) == first
    other = run(9)
    assert [moves[:3] for moves in other] != [moves[:3] for moves in first]


def test_match_needs_a_game():
    with pytest.raises(ValueError, match="games"):
        play_match(RandomPlayer(), RandomPlayer(), games=0)


def _opening_as_long_as_the_game() -> None:
    play_match(RandomPlayer(), RandomPlayer(), games=2, max_plies=4, opening_plies=4)


def test_opening_as_long_as_max_plies_does_not_hang():
    # Either draws by MAX_PLIES after the opening or a ValueError would do; it must not spin forever.
    process = multiprocessing.get_context("fork").Process(target=_opening_as_long_as_the_game, daemon=True)
    process.start()
    process.join(timeout=3)
    hung = process.is_alive()
    if hung:
        process.kill()
        process.join()
    assert not hung


def test_max_plies_games_are_draws():
    games = play_match(RandomPlayer(seed=10), RandomPlayer(seed=11), games=4, max_plies=3, opening_plies=1)
    for m in games:
        assert m.game.termination is Termination.MAX_PLIES
        assert m.game.ply == 3  # the opening counts towards max_plies
        assert m.game.winner is None
    results = match_results(games, "a", "b")
    assert (results["wins"], results["draws"], results["losses"]) == (0, 4, 0)
    assert results["score"] == 0.5
    assert results["elo"] == pytest.approx(0.0, abs=1e-9)
    assert results["terminations"] == {"max_plies": 4}
    assert results["game_length"] == {"mean": 3.0, "min": 3, "max": 3}


# --- match_results ---------------------------------------------------------------------------------


def test_results_of_a_player_that_always_resigns():
    games = play_match(Resigner(), RandomPlayer(seed=12), games=6, max_plies=40)
    results = match_results(games, "resigner", "random")
    assert results["player"] == "resigner" and results["opponent"] == "random"
    assert (results["games"], results["wins"], results["draws"], results["losses"]) == (6, 0, 0, 6)
    assert results["score"] == 0.0 and results["win_rate"] == 0.0
    assert results["terminations"] == {"resign": 6}
    # Resigning at once as Black (ply 0) and after the opponent's first move as White (ply 1).
    assert results["game_length"] == {"mean": 0.5, "min": 0, "max": 1}
    assert results["elo"] == pytest.approx(elo_from_score(0.5 / 7))  # 0 of 6, plus one virtual draw
    # The same games from the other side.
    flipped = match_results([type(m)(m.game, m.a_colour.opponent) for m in games], "random", "resigner")
    assert (flipped["wins"], flipped["losses"], flipped["score"]) == (6, 0, 1.0)


def test_results_are_counted_from_the_first_players_view():
    games = play_match(HeuristicPlayer(seed=13), RandomPlayer(seed=14), games=20, max_plies=256)
    results = match_results(games, "heuristic", "random")
    wins = sum(m.game.winner is m.a_colour for m in games)
    losses = sum(m.game.winner is m.a_colour.opponent for m in games)
    draws = sum(m.game.winner is None for m in games)
    assert (results["games"], results["wins"], results["draws"], results["losses"]) == (20, wins, draws, losses)
    assert results["score"] == pytest.approx((wins + draws / 2) / 20)
    assert results["win_rate"] == pytest.approx(wins / 20)
    assert results["win_rate_low"] <= results["win_rate"] <= results["win_rate_high"]
    assert results["terminations"] == dict(Counter(m.game.termination.name.lower() for m in games))
    assert sum(results["terminations"].values()) == 20
    lengths = [m.game.ply for m in games]
    assert results["game_length"] == {"mean": pytest.approx(sum(lengths) / 20), "min": min(lengths),
                                      "max": max(lengths)}
    assert wins >= 18  # the greedy heuristic mates and wins material against random moves
    assert results["elo"] > 300
    json.dumps(results)  # results.json material: plain JSON types only


# --- save_records --------------------------------------------------------------------------------


def test_save_records_write_parseable_kif_csa_and_an_index(tmp_path):
    games = play_match(HeuristicPlayer(seed=15), RandomPlayer(seed=16), games=4, max_plies=120, opening_plies=2)
    save_records(games, "Alice", "Bob", tmp_path)
    lines = (tmp_path / "games.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    for k, (m, line) in enumerate(zip(games, lines)):
        black, white = ("Alice", "Bob") if k % 2 == 0 else ("Bob", "Alice")
        kif = (tmp_path / f"{k:04d}.kif").read_text(encoding="utf-8")
        csa = (tmp_path / f"{k:04d}.csa").read_text(encoding="utf-8")
        assert f"先手\uff1a{black}" in kif.splitlines() and f"後手\uff1a{white}" in kif.splitlines()
        assert f"N+{black}" in csa.splitlines() and f"N-{white}" in csa.splitlines()
        for record in (Record.from_kif_str(kif), Record.from_csa_str(csa)):
            assert usi_moves(record) == m.game.moves
            assert (record.metadata.black_player, record.metadata.white_player) == (black, white)
            result = record.result
            if m.game.winner is Color.BLACK:
                assert result.is_black_win()
            elif m.game.winner is Color.WHITE:
                assert result.is_white_win()
            else:
                assert result.is_draw()
        entry = json.loads(line)
        assert entry["game"] == f"{k:04d}"
        assert (entry["black"], entry["white"]) == (black, white)
        assert entry["result"] == m.game.result.value
        assert entry["termination"] == m.game.termination.name.lower()
        assert entry["plies"] == m.game.ply == len(m.game.moves)
        assert entry["illegal_move"] is None
        replay = Game.from_usi_position(entry["usi"], max_plies=120)
        assert replay.moves == m.game.moves
        assert replay.termination is m.game.termination and replay.result is m.game.result


def test_save_records_appends_with_an_offset_and_records_forfeits(tmp_path):
    first = play_match(RandomPlayer(seed=17), RandomPlayer(seed=18), games=2, max_plies=10)
    save_records(first, "r1", "r2", tmp_path)
    second = play_match(Resigner(), RandomPlayer(seed=19), games=2, max_plies=10)
    save_records(second, "quitter", "r3", tmp_path, start=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "0000.csa", "0000.kif", "0001.csa", "0001.kif", "0002.csa", "0002.kif", "0003.csa", "0003.kif",
        "games.jsonl"]
    entries = [json.loads(line) for line in (tmp_path / "games.jsonl").read_text().splitlines()]
    assert [e["game"] for e in entries] == ["0000", "0001", "0002", "0003"]
    assert [(e["black"], e["white"]) for e in entries[2:]] == [("quitter", "r3"), ("r3", "quitter")]
    assert [e["termination"] for e in entries[2:]] == ["resign", "resign"]
    assert [e["result"] for e in entries[2:]] == ["white_win", "black_win"]
    assert [e["usi"] for e in entries[2:]] == ["startpos", f"startpos moves {second[1].game.moves[0]}"]
    for k, winner_is_black in ((2, False), (3, True)):
        kif = (tmp_path / f"{k:04d}.kif").read_text(encoding="utf-8")
        assert Record.from_kif_str(kif).result.is_black_win() is winner_is_black


class _CtrlCAtFirstMove(RandomPlayer):
    """A random player during whose first move Ctrl-C is pressed (Python raises ``KeyboardInterrupt`` where
    the code is, as it does here)."""

    def choose(self, games: list[Game]) -> list:
        raise KeyboardInterrupt


def test_a_rerun_interrupted_before_a_game_finished_reports_none_of_the_earlier_runs_games(tmp_path) -> None:
    """A gauntlet rerun into the dir of a finished one, stopped during the second match before any of its
    games finished: it keeps the first match (played again) and nothing of the earlier run's second match,
    whose results are gone from the dir."""
    from keisei.config import EvaluationConfig
    from keisei.evaluation.tournament import gauntlet
    from keisei.play.match import MatchInterrupted

    cfg = EvaluationConfig(games=4, max_plies=10, save_records=True)
    out = tmp_path / "gauntlet"
    agent = RandomPlayer(seed=0, name="agent")
    gauntlet(agent, [RandomPlayer(seed=1, name="r1"), RandomPlayer(seed=2, name="r2")], cfg, out, seed=0)
    assert json.loads((out / "01-r2" / "results.json").read_text())["games"] == 4
    with pytest.raises(MatchInterrupted):
        gauntlet(agent, [RandomPlayer(seed=1, name="r1"), _CtrlCAtFirstMove(seed=2, name="r2")], cfg, out, seed=0)
    summary = json.loads((out / "results.json").read_text())
    assert summary["partial"] is True and [(m["opponent"], m["games"]) for m in summary["matches"]] == [("r1", 4)]
    assert not (out / "01-r2" / "results.json").exists() and not (out / "01-r2" / "games" / "games.jsonl").exists()
