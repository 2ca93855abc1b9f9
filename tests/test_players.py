"""Players: the heuristic, random and network players."""

from __future__ import annotations

import pytest
import torch

from keisei.config import ModelConfig, ModelName, SearchConfig
from keisei.nn.model import build_model
from keisei.play.match import play_match
from keisei.play.players import AgentPlayer, HeuristicPlayer, RandomPlayer
from keisei.shogi import Game, Termination, encode, move_to_action
from keisei.shogi.game import FORFEITS

# --- heuristic player -----------------------------------------------------------------------------


def heuristic_choices(sfen: str, seeds=range(8)) -> set[str]:
    """The heuristic's choices in ``sfen`` over several seeds (its ties are broken at random)."""
    return {HeuristicPlayer(seed=seed).choose([Game(sfen)])[0] for seed in seeds}


def test_heuristic_mates_in_one():
    # White king 5a, Black pawn 5c, a gold in hand: G*5b (guarded by the pawn) covers 4a 6a 4b 6b.
    sfen = "4k4/9/4P4/9/9/9/9/9/4K4 b G 1"
    assert heuristic_choices(sfen) == {"G*5b"}  # 5c5b+ would be the promotion
    game = Game(sfen)
    game.push("G*5b")
    assert game.termination is Termination.CHECKMATE


def test_heuristic_prefers_mate_to_capturing_a_rook():
    # As above, plus a White rook on 1g that the Black lance on 1i can take.
    sfen = "4k4/9/4P4/9/9/9/8r/9/4K3L b G 1"
    assert "1i1g" in Game(sfen).legal_usi()
    assert heuristic_choices(sfen) == {"G*5b"}


def test_heuristic_captures_most_valuable_piece_with_least_valuable_capturer():
    # White rook 5d (takeable by the pawn 5e or the gold 4e) and pawn 2d (takeable by the pawn 2e).
    sfen = "4k4/9/9/4r2p1/4PG1P1/9/9/9/4K4 b - 1"
    legal = Game(sfen).legal_usi()
    assert {"5e5d", "4e5d", "2e2d"} <= set(legal)
    assert heuristic_choices(sfen) == {"5e5d"}


def test_heuristic_captures_for_white_too():
    # The same position rotated, White to move: pawn 5e takes the rook on 5f, not the gold 6e.
    sfen = "4k4/9/9/9/1p1gp4/1P2R4/9/9/4K4 w - 1"
    legal = Game(sfen).legal_usi()
    assert {"5e5f", "6e5f", "8e8f"} <= set(legal)
    assert heuristic_choices(sfen) == {"5e5f"}


def test_heuristic_prefers_a_promotion_when_nothing_can_be_taken():
    # A Black silver on 5d can enter the camp at 6c, 5c or 4c, promoted or not.
    sfen = "4k4/9/9/4S4/9/9/9/9/4K4 b - 1"
    choices = heuristic_choices(sfen, seeds=range(30))
    assert choices == {"5d6c+", "5d5c+", "5d4c+"}  # ties at random: all three show up over 30 seeds


def test_heuristic_plays_a_legal_move_otherwise():
    game = Game()
    legal = set(game.legal_usi())
    choices = heuristic_choices(game.sfen(), seeds=range(20))
    assert choices <= legal
    assert len(choices) > 1  # random among the quiet moves, not always the same


def test_heuristic_beats_random_in_a_match():
    games = play_match(HeuristicPlayer(seed=8), RandomPlayer(seed=9), games=4, max_plies=300)
    assert all(m.game.termination not in FORFEITS for m in games)
    assert sum(m.game.winner is m.a_colour for m in games) >= 3


# --- random player --------------------------------------------------------------------------------


def test_random_player_plays_only_legal_moves(random_positions):
    positions = [g for g in random_positions if not g.is_over][::4]
    choices = RandomPlayer(seed=10).choose(positions)
    assert len(choices) == len(positions)
    for game, move in zip(positions, choices):
        assert move in game.legal_usi()


def test_random_player_is_reproducible_with_a_seed(random_positions):
    positions = [g for g in random_positions if not g.is_over][:200]
    first = RandomPlayer(seed=11).choose(positions)
    assert RandomPlayer(seed=11).choose(positions) == first
    assert RandomPlayer(seed=12).choose(positions) != first


def test_random_player_draws_every_move_of_the_start_position():
    game = Game()
    legal = game.legal_usi()
    assert len(legal) == 30
    player = RandomPlayer(seed=13)
    draws = player.choose([game] * 3000)  # about 100 of each move if uniform
    counts = {move: draws.count(move) for move in legal}
    assert set(draws) == set(legal)
    assert max(counts.values()) < 200  # no move takes twice its share


# --- network player -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(name=ModelName.mlp, mlp_hidden=16))


@pytest.fixture
def positions(random_positions):
    return [g for g in random_positions if not g.is_over][::20]


def test_agent_greedy_is_argmax_of_legal_logits(tiny_model, positions):
    player = AgentPlayer(tiny_model, temperature=0.0)
    choices = player.choose(positions)
    assert player.choose(positions) == choices  # deterministic
    with torch.no_grad():
        obs = torch.from_numpy(encode(positions)[0])
        logits, _ = tiny_model(obs)
    for game, move, row in zip(positions, choices, logits):
        legal = game.legal_usi()
        best = max(legal, key=lambda usi: row[move_to_action(usi, game.turn.value)].item())
        assert move == best


def test_agent_sampling_is_legal_reproducible_and_seed_dependent(tiny_model, positions):
    first = AgentPlayer(tiny_model, temperature=1.0, seed=1).choose(positions)
    assert AgentPlayer(tiny_model, temperature=1.0, seed=1).choose(positions) == first
    assert AgentPlayer(tiny_model, temperature=1.0, seed=2).choose(positions) != first
    for game, move in zip(positions, first):
        assert move in game.legal_usi()


def test_agent_plays_legal_games(tiny_model):
    agent = AgentPlayer(tiny_model, temperature=1.0, seed=3)
    games = play_match(agent, RandomPlayer(seed=14), games=2, max_plies=80)
    for m in games:
        assert m.game.is_over
        assert m.game.termination not in FORFEITS
    assert AgentPlayer(tiny_model).choose([]) == []


def test_agent_search_none_or_zero_simulations_is_the_raw_policy(tiny_model, positions):
    raw = AgentPlayer(tiny_model).choose(positions)
    for search in (None, SearchConfig(simulations=0)):
        player = AgentPlayer(tiny_model, search=search)
        assert player.search is None and player.choose(positions) == raw


def test_agent_with_search_plays_a_proven_mate(tiny_model):
    # Black mates in three plies by a bishop drop on the long diagonal (tests/test_search.py checks
    # that by the rules alone, and that a policy blind to it is overridden).
    game = Game("8k/9/8G/8n/9/9/9/9/4K4 b B 1")
    searching = AgentPlayer(tiny_model, search=SearchConfig(simulations=8, mate_plies=3))
    (move,), (value,) = searching.act([game])
    assert value == 1.0
    game.push(move)
    for reply in game.legal_usi():  # every defence is mated at once
        line = game.copy()
        line.push(reply)
        line.push(line.board.solve_mate_in_one().to_usi())
        assert line.termination is Termination.CHECKMATE
    games = play_match(searching, RandomPlayer(seed=15), games=2, max_plies=40, opening_plies=2)
    assert all(m.game.termination not in FORFEITS for m in games)
