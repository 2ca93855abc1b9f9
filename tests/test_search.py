"""Search at play time (keisei.play.search): real rsshogi rules, a real (untrained) ResNet, no mocks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import MATE_IN_ONE
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rsshogi.core import Move

from keisei.config import (
    ConfigError,
    EvaluationConfig,
    ModelConfig,
    OpponentConfig,
    SearchConfig,
    SearchRoot,
    validate_evaluation,
    validate_search,
)
from keisei.nn.model import build_model
from keisei.nn.policy import Policy
from keisei.play.match import play_match
from keisei.play.players import AgentPlayer, RandomPlayer
from keisei.play.search import Limits, Search, SearchResult, find_mate
from keisei.shogi import NUM_ACTIONS, Game, Termination, encode, move_to_action
from keisei.shogi.game import FORFEITS

# Black to move and mate in three plies, but in no fewer (checked below by the rules alone).
MATE_IN_THREE = ["8k/9/8G/8n/9/9/9/9/4K4 b B 1", "1k7/2L6/1sG6/9/9/9/9/9/4K4 b 2S 1"]
# Black to move; White threatens G*5h (guarded by its pawn on 5g), mate. 15 of Black's 23 moves allow it.
THREATENED = "4k4/9/9/9/R8/9/4p4/9/4K4 b g 1"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a loaded 2-core box, two threads per process make each forward pass
    many times slower (the results are the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(blocks=1, channels=16, value_hidden=32)).eval()


@pytest.fixture(scope="module")
def policy(net: torch.nn.Module) -> Policy:
    return Policy(net)


@pytest.fixture
def positions(random_positions: list[Game]) -> list[Game]:
    """Twelve running positions of random games (drops, promotions, checks; both colours to move)."""
    return [g for g in random_positions if not g.is_over][7::160][:12]


class Preferring(torch.nn.Module):
    """A network whose policy strongly prefers one move of one position: ``net``'s logits plus 20 on
    that move's label (a real network with a known first choice, whatever the random weights)."""

    def __init__(self, net: torch.nn.Module, game: Game, usi: str) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("offset", torch.zeros(NUM_ACTIONS))
        self.offset[move_to_action(usi, game.turn.value)] = 20.0

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = self.net(obs)
        return logits + self.offset, value


def search(policy: Policy, games: list[Game], **settings: object) -> list:
    return Search(policy, SearchConfig(**{"simulations": 64, **settings})).run(games)  # type: ignore[arg-type]


def raw_move(net: torch.nn.Module, game: Game) -> str:
    return AgentPlayer(net).choose([game])[0]


def mates_in(game: Game, plies: int) -> bool:
    """Whether the side to move of ``game`` mates in at most ``plies`` plies whatever the defence,
    decided by ``Game``'s adjudication alone (a plain minimax over every legal move)."""
    for move in game.legal_usi():
        after = game.copy()
        after.push(move)
        if after.termination is Termination.CHECKMATE:
            return True
        if plies >= 3 and not after.is_over and all(_reply_loses(after, reply, plies - 2)
                                                    for reply in after.legal_usi()):
            return True
    return False


def _reply_loses(game: Game, reply: str, plies: int) -> bool:
    after = game.copy()
    after.push(reply)
    return not after.is_over and mates_in(after, plies)


def forced_mate_after(game: Game, move: str, plies: int) -> bool:
    after = game.copy()
    after.push(move)
    if after.termination is Termination.CHECKMATE:
        return True
    return not after.is_over and all(_reply_loses(after, reply, plies - 2) for reply in after.legal_usi())


# --- mate search ------------------------------------------------------------------------------


def test_positions_are_what_they_claim() -> None:
    assert mates_in(Game(MATE_IN_ONE), 1)
    for sfen in MATE_IN_THREE:
        assert not mates_in(Game(sfen), 1) and mates_in(Game(sfen), 3)


def test_find_mate_in_one_and_three() -> None:
    move, plies = find_mate(Game(MATE_IN_ONE).board.copy(), 3)
    assert (move.to_usi(), plies) == ("G*5b", 1)
    for sfen in MATE_IN_THREE:
        game = Game(sfen)
        board = game.board.copy()
        assert find_mate(board, 1) is None
        move, plies = find_mate(board, 3)
        assert plies == 3 and forced_mate_after(game, move.to_usi(), 3)
        assert board.to_sfen() == game.sfen()  # the board is left as it was
    assert find_mate(Game().board.copy(), 5) is None
    assert find_mate(Game(THREATENED).board.copy(), 3) is None


def test_search_plays_the_mate_in_three_the_raw_policy_misses(net: torch.nn.Module) -> None:
    for sfen in MATE_IN_THREE:
        game = Game(sfen)
        blind = Preferring(net, game, "5i4h").eval()  # a king move, far from any mate
        assert raw_move(blind, game) == "5i4h" and not forced_mate_after(game, "5i4h", 3)
        (result,) = search(Policy(blind), [game], simulations=8, mate_plies=3)
        assert result.mate == 3 and forced_mate_after(game, result.move, 3)


def test_mate_in_one_overrides_the_network(net: torch.nn.Module) -> None:
    game = Game(MATE_IN_ONE)
    blind = Preferring(net, game, "5i4h").eval()
    assert raw_move(blind, game) == "5i4h"
    (result,) = search(Policy(blind), [game], mate_plies=1)
    assert (result.move, result.mate, result.value) == ("G*5b", 1, 1.0)


@pytest.mark.parametrize("batch_size", [4, 16])
def test_tree_proves_a_mate_in_three_from_mates_in_one_at_its_leaves(net: torch.nn.Module, batch_size: int) -> None:
    # With the root mate search at one ply, the mate in three is proven inside the tree: every
    # reply to the check reaches a leaf with a mate in one, and the proof is propagated up. The
    # network prefers the first move of a mate in three (B*3c): whether a random network's priors
    # lead 400 simulations to some mating check depends on its weights (with batches of 4, seed 1
    # of this network does not, with or without the policy head's mate planes).
    game = Game(MATE_IN_THREE[0])
    policy = Policy(Preferring(net, game, "B*3c").eval())
    (result,) = search(policy, [game], simulations=400, batch_size=batch_size, mate_plies=1)
    assert result.mate == 3 and forced_mate_after(game, result.move, 3)
    assert result.nodes < 400  # it stops once the root is proven
    line = game.copy()
    for move in result.pv:
        line.push(move)
    assert len(result.pv) == 3 and line.termination is Termination.CHECKMATE  # the principal variation mates


def test_avoids_moves_that_allow_a_mate_in_one(net: torch.nn.Module) -> None:
    game = Game(THREATENED)

    def allows_mate(move: str) -> bool:
        after = game.copy()
        after.push(move)
        return after.board.solve_mate_in_one() is not None

    careless = Policy(Preferring(net, game, "9e9f").eval())
    assert allows_mate("9e9f") and raw_move(careless.model, game) == "9e9f"  # the network walks into it
    for simulations in (1, 64):
        (result,) = search(careless, [game], simulations=simulations, mate_plies=1)
        assert not allows_mate(result.move)
    (result,) = search(careless, [game], simulations=1, mate_plies=0)  # mate search off: the raw move
    assert result.move == "9e9f"


# --- rules inside the tree -------------------------------------------------------------------


def test_repetition_in_the_tree_is_a_draw(policy: Policy) -> None:
    game = Game("4k4/9/9/9/9/9/9/9/4K4 b - 1")  # kings only
    for move in ["5i5h", "5a5b", "5h5i", "5b5a"] * 2 + ["5i5h", "5a5b", "5h5i"]:
        game.push(move)
    repeat = game.copy()
    repeat.push("5b5a")
    assert repeat.termination is Termination.SENNICHITE  # the 4th occurrence
    (result,) = search(policy, [game], simulations=100)
    assert result.visits["5b5a"] > 0 and result.values["5b5a"] == 0.0  # every visit scored as a draw
    others = [v for move, v in result.values.items() if move != "5b5a"]
    assert others and all(v != 0.0 for v in others)  # the network's values are never exactly 0


def test_perpetual_check_in_the_tree_loses(policy: Policy) -> None:
    game = Game("8k/9/6R2/9/9/9/9/9/4K4 b - 1")  # Black's rook checks the White king back and forth
    for move in ["3c1c", "1a2a", "1c2c", "2a1a"] + ["2c1c", "1a2a", "1c2c", "2a1a"] * 2:
        game.push(move)
    losing = game.copy()
    losing.push("2c1c")
    assert losing.termination is Termination.PERPETUAL_CHECK and losing.winner.value == "w"
    (result,) = search(policy, [game], simulations=300, c_puct=4.0)
    assert result.values["2c1c"] == -1.0  # proven lost by the rules
    assert result.move != "2c1c"


def declares_next(game: Game, move: str) -> bool:
    """Whether after ``move`` every reply leaves the mover a position where it declares and wins."""
    after = game.copy()
    after.push(move)
    if after.is_over:
        return False
    for reply in after.legal_usi():
        line = after.copy()
        line.push(reply)
        if line.termination is not Termination.DECLARATION or line.winner is not game.turn:
            return False
    return True


def test_declaration_in_the_tree_wins(policy: Policy) -> None:
    # Ten Black pieces worth 26 points stand in the camp, two pawns in hand: once the king steps in
    # (5c, 6c or 7c), Black declares on its next turn, whatever White (a lone king far away) does.
    game = Game("RRBBGG3/GG7/SS7/3K5/9/9/9/9/8k b 2P 1")
    assert {m for m in game.legal_usi() if declares_next(game, m)} == {"6d5c", "6d6c", "6d7c"}
    # 110 root moves: at 300 playouts whether the untrained network's values lead back to the
    # king's steps depends on its random weights (about 1 network in 6 missed it, with either
    # encoding); at 1,200 every one of 16 seeds proves it.
    (result,) = search(policy, [game], simulations=1200, mate_plies=0, c_puct=4.0)
    proven = {m for m, v in result.values.items() if v == 1.0}
    assert proven and proven <= {"6d5c", "6d6c", "6d7c"}  # proven by the rules, and only those
    assert result.move in proven and result.mate == 2


# --- moves -----------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["puct", "gumbel"])
def test_never_an_illegal_move(policy: Policy, positions: list[Game], root: str) -> None:
    results = search(policy, positions, simulations=24, batch_size=8, root=SearchRoot(root))
    for game, result in zip(positions, results):
        assert result.move in game.legal_usi()
        assert set(result.visits) == set(game.legal_usi())
        assert sum(result.visits.values()) == 23  # the root's own evaluation is the first playout
        line = game.copy()
        for move in result.pv:  # the principal variation is a legal line
            assert not line.is_over
            line.push(move)


def test_searching_agent_plays_legal_games(net: torch.nn.Module) -> None:
    agent = AgentPlayer(net, search=SearchConfig(simulations=16, batch_size=8), seed=1)
    games = play_match(agent, RandomPlayer(seed=2), games=2, max_plies=60, opening_plies=2)
    assert all(m.game.is_over and m.game.termination not in FORFEITS for m in games)


def test_same_seed_same_moves(policy: Policy, positions: list[Game]) -> None:
    noisy = {"temperature": 1.0, "temperature_moves": 1000, "dirichlet_fraction": 0.25, "simulations": 24}

    def moves(seed: int) -> list[str]:
        return [r.move for r in Search(policy, SearchConfig(**noisy), seed=seed).run(positions)]

    first = moves(1)
    assert moves(1) == first
    assert moves(2) != first  # the seed does matter: sampling and noise


def test_simulations_zero_is_the_raw_policy(net: torch.nn.Module, policy: Policy, positions: list[Game]) -> None:
    raw = AgentPlayer(net).choose(positions)
    player = AgentPlayer(net, search=SearchConfig(simulations=0))
    assert player.search is None and player.choose(positions) == raw
    # One simulation (the root's evaluation) with the mate search off also plays the policy's move.
    assert [r.move for r in search(policy, positions, simulations=1, mate_plies=0)] == raw


def test_games_searched_together_equal_games_searched_alone(policy: Policy, positions: list[Game]) -> None:
    # Several trees in lockstep share each forward pass, but no tree sees another's leaves: the
    # visit counts are exactly those of searching each game alone, at any batch size.
    for batch_size in (1, 8):
        cfg = SearchConfig(simulations=40, batch_size=batch_size)
        together = Search(policy, cfg).run(positions[:5])
        alone = [Search(policy, cfg).run([g])[0] for g in positions[:5]]
        assert [r.visits for r in together] == [r.visits for r in alone]


def test_virtual_loss_batches_spread_the_same_playouts(policy: Policy, positions: list[Game]) -> None:
    # Within one tree, batch_size > 1 selects several leaves before their values are known
    # (virtual loss), so the counts differ from batch_size 1 -- but not the number of playouts,
    # and a proven result is the same.
    for game in positions[:3]:
        one = search(policy, [game], simulations=48, batch_size=1)[0]
        batched = search(policy, [game], simulations=48, batch_size=16)[0]
        assert sum(one.visits.values()) == sum(batched.visits.values()) == 47
        assert one.nodes == batched.nodes == 48


# --- reuse and limits ------------------------------------------------------------------------


def test_tree_reuse_keeps_the_subtree(policy: Policy) -> None:
    for reuse in (True, False):
        engine = Search(policy, SearchConfig(simulations=200, batch_size=8, reuse_tree=reuse))
        game = Game()
        first = engine.run([game])[0]
        game.push(first.pv[0])
        game.push(first.pv[1])
        second = engine.run([game])[0]
        kept = sum(second.visits.values()) - (second.nodes - 1)
        assert (kept > 0) == reuse
    fresh = Search(policy, SearchConfig(simulations=200, batch_size=8)).run([game])[0]
    assert second.move == fresh.move  # the second search (no reuse) is a fresh search


def test_tree_reuse_survives_a_call_for_another_game(policy: Policy) -> None:
    """A match asks a player for its moves in its Black games and its White games in turn: a game's subtree
    is still there when the game comes back after a call for the others."""
    engine = Search(policy, SearchConfig(simulations=200, batch_size=8))
    game, other = Game(), Game()
    other.push("2g2f")
    first = engine.run([game])[0]
    game.push(first.pv[0])
    engine.run([other])  # the player's move in the match's other game
    game.push(first.pv[1])
    second = engine.run([game])[0]
    assert sum(second.visits.values()) - (second.nodes - 1) > 0  # visits kept from the first search


def test_stop_and_deadline(policy: Policy) -> None:
    engine = Search(policy, SearchConfig(simulations=10**6))
    limits = Limits(simulations=None)
    limits.stop.set()
    (result,) = engine.run([Game()], limits)
    assert result.nodes == 1 and result.move in Game().legal_usi()  # the root is always evaluated
    limits = Limits(simulations=None)
    threading.Timer(0.3, limits.stop.set).start()
    (result,) = engine.run([Game()], limits)
    assert result.nodes > 1 and result.move in Game().legal_usi()
    start = time.monotonic()
    (result,) = engine.run([Game()], Limits(simulations=None, deadline=start + 0.3))
    assert result.nodes > 1 and time.monotonic() - start < 0.3 + 2.0  # a round past the deadline at most


def test_finished_games_are_refused(policy: Policy) -> None:
    game = Game(MATE_IN_ONE)
    game.push("G*5b")
    with pytest.raises(ValueError, match="finished game"):
        search(policy, [game])


def test_play_line_adjudicates_its_last_position_as_play_does() -> None:
    moves = ["5i5h", "5a5b", "5h5i", "5b5a"] * 3  # the 12th move repeats the start a 4th time
    for count in (1, 5, 11, 12):
        one_by_one, line = Game(), Game()
        for usi in moves[:count]:
            one_by_one.push(usi)
        line.play_line([Move.from_usi(usi) for usi in moves[:count]])
        assert (line.sfen(), line.termination, line.legal_usi(), line.ply) == (
            one_by_one.sfen(), one_by_one.termination, one_by_one.legal_usi(), one_by_one.ply)
    assert line.termination is Termination.SENNICHITE


def test_values_beyond_a_win_count_as_a_win() -> None:
    """With model.material_potential the network's value can pass 1 (a large material lead); in the tree
    it counts as a win, no more: every move's value and the root's stay in [-1, 1]."""
    torch.manual_seed(0)
    lopsided = build_model(ModelConfig(blocks=1, channels=16, value_hidden=32, material_potential=0.1)).eval()
    with torch.no_grad():
        lopsided.value[-2].bias.fill_(5.0)  # a head sure of the win, plus the material potential (up to 0.5)
    # Black to move with both rooks, both bishops and all four golds in hand against a bare king and pawns.
    game = Game("4k4/9/ppppppppp/9/9/9/PPPPPPPPP/9/4K4 b 2R2B4G 1")
    with torch.no_grad():
        assert lopsided(torch.from_numpy(encode([game])[0]))[1].item() > 1.4  # the network alone says more
    result = Search(Policy(lopsided), SearchConfig(simulations=64, mate_plies=0)).run([game])[0]
    assert -1.0 <= result.value <= 1.0
    assert all(-1.0 <= v <= 1.0 for v in result.values.values())


# --- Gumbel root (root=gumbel) ----------------------------------------------------------------


class Flat(torch.nn.Module):
    """``net`` with every logit 0: a uniform prior over the legal moves (its values unchanged)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = self.net(obs)
        return torch.zeros_like(logits), value


class Counting(torch.nn.Module):
    """``net`` counting its forward passes and the positions they evaluate."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = self.positions = 0

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        self.positions += obs.shape[0]
        return self.net(obs)


GUMBEL = {"root": SearchRoot.gumbel}  # without noise (g = 0): the default, as evaluate.py plays
NOISY = {**GUMBEL, "gumbel_noise": True}  # with Gumbel noise, as self-play searches


def test_gumbel_same_seed_same_move(net: torch.nn.Module, policy: Policy, positions: list[Game]) -> None:
    cfg = SearchConfig(simulations=24, batch_size=8, **NOISY)

    def searched(seed: int) -> list[tuple[str, dict[str, int]]]:
        return [(r.move, r.visits) for r in Search(policy, cfg, seed=seed).run(positions)]

    first = searched(1)
    assert searched(1) == first  # moves and visit counts: the noise comes from the seeded generator
    # A flat prior: which moves are candidates is the Gumbel noise's choice, so the seed decides the
    # move (temperature 0 all the same). Deterministic: the seeds are fixed.
    flat = Policy(Flat(net).eval())
    cfg = SearchConfig(simulations=16, **NOISY)
    moves = [Search(flat, cfg, seed=seed).run([Game()])[0].move for seed in range(6)]
    assert moves == [Search(flat, cfg, seed=seed).run([Game()])[0].move for seed in range(6)]
    assert len(set(moves)) > 1


def test_gumbel_root_still_plays_mates(net: torch.nn.Module, policy: Policy) -> None:
    game = Game(MATE_IN_ONE)
    blind = Policy(Preferring(net, game, "5i4h").eval())
    (result,) = search(blind, [game], mate_plies=1, **GUMBEL)
    assert (result.move, result.mate, result.value) == ("G*5b", 1, 1.0)
    for sfen in MATE_IN_THREE:  # the root mate search overrides the Gumbel root
        game = Game(sfen)
        blind = Policy(Preferring(net, game, "5i4h").eval())
        (result,) = search(blind, [game], simulations=8, mate_plies=3, **GUMBEL)
        assert result.mate == 3 and forced_mate_after(game, result.move, 3)
    # Inside the tree (root mate search off or at one ply): with every root move a candidate, the
    # first phase visits the mate (in one: a checkmate leaf; in three: mates in one at the leaves
    # below the check) and the proof ends the search.
    game = Game(MATE_IN_ONE)
    legal = len(game.legal_usi())
    (result,) = search(blind, [game], simulations=4000, mate_plies=0, gumbel_actions=legal, **GUMBEL)
    assert (result.move, result.mate) == ("G*5b", 1) and result.nodes < 4000
    game = Game(MATE_IN_THREE[0])
    legal = len(game.legal_usi())
    (result,) = search(policy, [game], simulations=4000, batch_size=16, mate_plies=1, gumbel_actions=legal,
                       **GUMBEL)
    assert result.mate == 3 and forced_mate_after(game, result.move, 3) and result.nodes < 4000


def test_gumbel_agent_plays_legal_games(net: torch.nn.Module) -> None:
    agent = AgentPlayer(net, search=SearchConfig(simulations=16, batch_size=8, **GUMBEL), seed=1)
    games = play_match(agent, RandomPlayer(seed=2), games=3, max_plies=60, opening_plies=2)
    assert all(m.game.is_over and m.game.termination not in FORFEITS for m in games)


def test_gumbel_network_evaluations_within_the_budget(net: torch.nn.Module, positions: list[Game]) -> None:
    counting = Counting(net).eval()
    policy = Policy(counting)
    for simulations in (1, 2, 7, 24, 64):
        for batch_size in (1, 8):
            counting.positions = 0
            engine = Search(policy, SearchConfig(simulations=simulations, batch_size=batch_size, **GUMBEL))
            (result,) = engine.run([Game()])
            assert counting.positions <= simulations  # the root's own evaluation included
            assert result.nodes == simulations  # and the plan spends the whole budget
            game = Game()
            game.push(result.move)
            game.push(game.legal_usi()[0])
            counting.positions = 0
            (result,) = engine.run([game])  # a reused subtree: the root is not evaluated again
            assert counting.positions <= simulations and result.nodes <= simulations
    counting.positions = counting.calls = 0
    results = Search(policy, SearchConfig(simulations=64, batch_size=16, **GUMBEL)).run(positions[:4])
    assert counting.positions <= 64 * 4 and all(r.nodes <= 64 for r in results)
    assert counting.calls * 4 <= counting.positions  # the leaves are still batched: over 4 a forward pass


def test_gumbel_visits_every_candidate(policy: Policy, positions: list[Game]) -> None:
    # From m * ceil(log2 m) playouts on, the first phase of the halving visits each of the m
    # candidates; the later phases only revisit them, so exactly m root moves are visited.
    for m, simulations in ((4, 8), (16, 64), (16, 200)):
        for batch_size in (1, 16):
            for game in positions[:3]:
                assert len(game.legal_usi()) > m
                (result,) = search(policy, [game], simulations=simulations, batch_size=batch_size,
                                   mate_plies=0, gumbel_actions=m, **GUMBEL)
                visited = [move for move, n in result.visits.items() if n > 0]
                assert len(visited) == m and result.move in visited
                assert sum(result.visits.values()) == simulations - 1


def test_gumbel_halving_schedule_and_choice(net: torch.nn.Module, policy: Policy, positions: list[Game]) -> None:
    # 63 playouts after the root's, 16 candidates, 4 phases of 16, 16, 16 and 15 playouts:
    # 16 x 1, 8 x 2, 4 x 4, then 8 and 7 for the last two.
    (result,) = search(policy, [Game()], simulations=64, mate_plies=0, **GUMBEL)
    assert sorted(result.visits.values(), reverse=True)[:17] == [15, 14, 7, 7] + [3] * 4 + [1] * 8 + [0]
    # White-box: the Gumbel noise is a fresh Search's first draw from its generator, one per root
    # move in the order of ``result.visits``. With a flat prior the logits are equal, so the
    # candidates are the top m of the noise, and the move is the one of the last two with the
    # higher g + sigma(q). The policy target is softmax(logits + sigma(q)): with equal logits, the
    # log of a move's probability is its sigma(q) plus a constant, so the halving must rank by
    # g + log(policy) (the target's formula itself: tests/test_gumbel.py).
    flat = Policy(Flat(net).eval())
    cfg = SearchConfig(simulations=65, batch_size=4, mate_plies=0, gumbel_actions=4, **NOISY)

    def best(result: SearchResult, g: dict[str, float], moves: set[str]) -> str:
        assert result.policy is not None
        return max(moves, key=lambda move: g[move] + np.log(result.policy[move]))

    decided = 0
    for seed, game in enumerate(positions[:6]):
        (result,) = Search(flat, cfg, seed=seed).run([game])
        moves = list(result.visits)
        g = dict(zip(moves, np.random.default_rng(seed).gumbel(size=len(moves))))
        visited = {move for move in moves if result.visits[move] > 0}
        assert visited == set(sorted(moves, key=g.__getitem__, reverse=True)[:4])
        # 64 playouts: 8 each in the first phase, then 16 more for each of the better two.
        assert sorted(result.visits[move] for move in visited) == [8, 8, 24, 24]
        last = {move for move in visited if result.visits[move] == 24}
        assert result.move == best(result, g, last)
        decided += result.move != max(last, key=g.__getitem__)  # the values, not the noise, decided
        # Stopped by the caller in the second phase (11 rounds of 4 descents: 32 + 12 playouts),
        # the move is the best by the same score of the two candidates still in the halving; in
        # the first phase (rounds 1-7), of the four.
        infos: list[SearchResult] = []
        limits = Limits(simulations=65)

        def on_info(info: SearchResult, infos: list[SearchResult] = infos, limits: Limits = limits) -> None:
            infos.append(info)
            if len(infos) == 11:
                limits.stop.set()

        (result,) = Search(flat, cfg, seed=seed).run([game], limits, on_info=on_info, info_interval_s=0.0)
        assert 1 + 32 < result.nodes < 65
        assert result.move == best(result, g, {move for move in visited if result.visits[move] > 8})
        for info in infos[:7]:
            assert info.move == best(info, g, visited)
    assert decided > 0


def test_gumbel_stops_with_its_plan_or_a_limit(policy: Policy) -> None:
    engine = Search(policy, SearchConfig(simulations=32, **GUMBEL))
    # No playout limit (a clock): the halving plans cfg.simulations and the search ends with it.
    (result,) = engine.run([Game()], Limits(simulations=None, deadline=time.monotonic() + 60))
    assert result.nodes == 32
    engine = Search(policy, SearchConfig(simulations=10**6, **GUMBEL))
    limits = Limits(simulations=None)
    limits.stop.set()
    (result,) = engine.run([Game()], limits)
    assert result.nodes == 1 and result.move in Game().legal_usi()
    limits = Limits(simulations=None)
    threading.Timer(0.3, limits.stop.set).start()
    (result,) = engine.run([Game()], limits)  # stopped in the first phase: a visited candidate
    visited = {move for move, n in result.visits.items() if n > 0}
    assert result.nodes > 1 and result.move in visited and len(visited) <= 16


def test_gumbel_settings_are_validated() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_search(SearchConfig(gumbel_actions=0), "evaluation.search")
    assert str(exc.value) == "evaluation.search.gumbel_actions=0: must be >= 1"
    bad = EvaluationConfig(search=SearchConfig(root=SearchRoot.gumbel, gumbel_c_visit=0.0))
    with pytest.raises(ConfigError, match=r"^evaluation\.search\.gumbel_c_visit=0\.0: must be finite and > 0$"):
        validate_evaluation(bad, OpponentConfig())
    bad = OpponentConfig(search=SearchConfig(gumbel_c_scale=-1.0))
    with pytest.raises(ConfigError, match=r"^opponent\.search\.gumbel_c_scale=-1\.0: must be finite and > 0$"):
        validate_evaluation(EvaluationConfig(), bad)
    validate_evaluation(EvaluationConfig(search=SearchConfig(root=SearchRoot.gumbel, gumbel_actions=1)),
                        OpponentConfig())
    # From the command line (evaluation.search.root=gumbel): a str enum, checked by OmegaConf.
    merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvaluationConfig),
                                                 {"search": {"root": "gumbel"}}))
    assert merged.search.root is SearchRoot.gumbel
    with pytest.raises(OmegaConfBaseException):
        OmegaConf.merge(OmegaConf.structured(EvaluationConfig), {"search": {"root": "gumble"}})
