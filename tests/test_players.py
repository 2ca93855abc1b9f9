"""Players: the heuristic, random and network players."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MATE_IN_ONE

from keisei.config import CONF, ConfigError, ModelConfig, ModelName, OpponentKind, SearchConfig, register_configs
from keisei.evaluation.opponents import build_opponent, opponent_preset
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


# --- heuristic player with random moves (the ladder's rungs between random and heuristic) ----------


def test_heuristic_with_no_random_moves_is_the_heuristic_move_for_move(random_positions):
    positions = [g for g in random_positions if not g.is_over]
    for seed in (0, 21):
        plain = HeuristicPlayer(seed=seed).choose(positions)
        assert HeuristicPlayer(seed=seed, random_moves=0.0).choose(positions) == plain
    # Whole games too (its tie-breaks draw from the same generator as the heuristic's).
    a = play_match(HeuristicPlayer(seed=3, random_moves=0.0), RandomPlayer(seed=4), games=2, max_plies=200)
    b = play_match(HeuristicPlayer(seed=3), RandomPlayer(seed=4), games=2, max_plies=200)
    assert [m.game.moves for m in a] == [m.game.moves for m in b]
    # Where the heuristic has no preference (the start position: no mate, capture or promotion) it plays
    # a uniformly random move: the random player's, seed for seed, so random_moves=0 draws nothing
    # more from its generator (a draw per move would shift every tie-break of the heuristic as it was).
    start = [Game()] * 300
    for seed in (0, 22):
        assert HeuristicPlayer(seed=seed, random_moves=0.0).choose(start) == RandomPlayer(seed=seed).choose(start)


def count_choices(player, sfen: str, move: str, n: int) -> int:
    return player.choose([Game(sfen)] * n).count(move)


@pytest.mark.parametrize(("sfen", "best"), [(MATE_IN_ONE, "G*5b"),  # a mate in one
                                            ("4k4/9/9/4r2p1/4PG1P1/9/9/9/4K4 b - 1", "5e5d")])  # takes the rook
def test_heuristic_random_moves_dilute_its_preferences(sfen, best):
    """p = 1 prefers the mate (or the best capture) no more than a random player does; p = 0 always
    plays it; in between, it plays it with probability p / N + (1 - p) (N legal moves)."""
    n, legal = 6000, len(Game(sfen).legal_usi())
    assert count_choices(HeuristicPlayer(seed=1, random_moves=0.0), sfen, best, 200) == 200
    random_count = count_choices(RandomPlayer(seed=2), sfen, best, n)
    for p in (1.0, 0.5, 0.9):
        rate = p / legal + (1 - p)
        sd = math.sqrt(n * rate * (1 - rate))
        count = count_choices(HeuristicPlayer(seed=3, random_moves=p), sfen, best, n)
        assert abs(count - n * rate) < 5 * sd, (p, count, n * rate)
        if p == 1.0:  # as often as the random player (two binomial counts of n / N)
            assert abs(count - random_count) < 5 * math.sqrt(2) * sd, (count, random_count)
    # p = 1 plays legal moves only, and every one of the start position over enough draws.
    start = Game()
    choices = HeuristicPlayer(seed=4, random_moves=1.0).choose([start] * 1500)
    assert set(choices) == set(start.legal_usi())


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_heuristic_random_moves_out_of_range_is_refused(p):
    with pytest.raises(ValueError, match="random_moves"):
        HeuristicPlayer(seed=0, random_moves=p)


def compose_evaluate(*overrides: str):
    from hydra import compose, initialize_config_dir

    from keisei.config import validate_evaluate

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return validate_evaluate(compose(config_name="evaluate", overrides=["checkpoint=x", *overrides]))


@pytest.mark.parametrize("value", [1.5, -0.25])
def test_opponent_random_moves_out_of_range_is_a_config_error(value):
    with pytest.raises(ConfigError) as info:
        compose_evaluate("opponent=heuristic_r75", f"opponent.random_moves={value}")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"opponent.random_moves={value}") and "[0, 1]" in message
    assert compose_evaluate("opponent=heuristic", "opponent.random_moves=1").opponent.random_moves == 1.0


@pytest.mark.parametrize("preset", ["heuristic_r90", "heuristic_r75", "heuristic_r50", "heuristic_r25"])
def test_heuristic_random_moves_presets(preset):
    """conf/opponent/heuristic_rNN.yaml: the heuristic player playing NN % of its moves at random,
    under its own name; build_opponent passes the share on."""
    share = int(preset.removeprefix("heuristic_r")) / 100
    op = opponent_preset(preset)
    assert op.kind is OpponentKind.heuristic
    assert op.random_moves == pytest.approx(share)
    assert op.name == preset.replace("_", "-")
    player = build_opponent(op, torch.device("cpu"), seed=5)
    assert isinstance(player, HeuristicPlayer)
    assert player.name == op.name and player.random_moves == pytest.approx(share)
    # It plays the mate in one about as often as 1 - share says (share / N of the random moves find it too).
    count = count_choices(player, MATE_IN_ONE, "G*5b", 2000)
    rate = share / len(Game(MATE_IN_ONE).legal_usi()) + (1 - share)
    assert abs(count - 2000 * rate) < 5 * math.sqrt(2000 * rate * (1 - rate))
    assert opponent_preset("heuristic").random_moves == 0.0


def score_against_heuristic(p: float, games: int = 8) -> float:
    player = HeuristicPlayer(seed=31, name="x", random_moves=p)
    played = play_match(player, HeuristicPlayer(seed=32), games=games, max_plies=256, seed=33)
    assert all(m.game.termination not in FORFEITS for m in played)
    return sum(1.0 if m.game.winner is m.a_colour else 0.5 if m.game.winner is None else 0.0
               for m in played) / games


def test_more_random_moves_score_worse_against_the_heuristic():
    all_random, none_random = score_against_heuristic(1.0), score_against_heuristic(0.0)
    assert all_random <= 1 / 8  # a random player against the greedy capturer: lost games
    assert none_random >= 2 / 8  # itself: about even
    assert none_random - all_random >= 0.25


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
