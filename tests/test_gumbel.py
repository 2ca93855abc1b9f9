"""The Gumbel root's improved-policy target and sigma (keisei.play.search), checked against mctx's
formulas (qtransform_completed_by_mix_value, then softmax(logits + sigma)) recomputed here in plain
numpy; noise off: deterministic; the settings' validation. Real rules and a real (untrained) ResNet."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import MATE_IN_ONE
from omegaconf import OmegaConf

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
from keisei.play.players import AgentPlayer
from keisei.play.search import Node, Search, _GumbelRoot, improved_policy
from keisei.shogi import NUM_ACTIONS, Game, encode, move_to_action

# Black to move; White threatens G*5h. 15 of Black's 23 moves allow that mate in one (proven lost at the root).
THREATENED = "4k4/9/9/9/R8/9/4p4/9/4K4 b g 1"
GUMBEL = {"root": SearchRoot.gumbel}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(blocks=1, channels=16, value_hidden=32)).eval()


@pytest.fixture
def positions(random_positions: list[Game]) -> list[Game]:
    """Four running positions of random games (both colours to move)."""
    return [g for g in random_positions if not g.is_over][11::400][:4]


class Flat(torch.nn.Module):
    """``net`` with every logit 0: a uniform prior, so only the Gumbel noise separates the moves."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = self.net(obs)
        return torch.zeros_like(logits), value


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def mctx_target(logits: np.ndarray, visits: np.ndarray, q: np.ndarray, proven: np.ndarray, value: float,
                c_visit: float = 50.0, c_scale: float = 0.1) -> np.ndarray:
    """softmax(logits + sigma(completed q)) written out from mctx's formulas: ``q`` the mean values of
    the visited moves, ``proven`` +1 / -1 for the moves proven won / lost (0 otherwise, their q then
    replaced), unvisited moves completed by v_mix, min-max rescaled to [0, 1] over the moves."""
    pi = softmax(logits)
    seen = visits > 0
    total = visits.sum()
    completed = np.where(proven != 0, proven, q)
    v_mix = (value + total * (pi[seen] * completed[seen]).sum() / pi[seen].sum()) / (total + 1)
    completed = np.where(seen | (proven != 0), completed, v_mix)
    rescaled = (completed - completed.min()) / max(completed.max() - completed.min(), 1e-8)
    return softmax(logits + (c_visit + visits.max()) * c_scale * rescaled)


def hand_node(logits: list[float], value: float, visited: dict[int, tuple[int, float]], lost: list[int]) -> Node:
    """A root with these logits and network value, ``visited`` move -> (visits, mean value), and the
    moves of ``lost`` proven lost (as the root's mate-in-one exclusion marks them: unvisited)."""
    prior = softmax(np.array(logits))
    node = Node()
    node.expand([], np.arange(len(logits)), prior, value)
    for k, (n, mean) in visited.items():
        node.add(k, float(n), n * mean)
    for k in lost:
        node.status[k], node.plies[k] = -1, 2
    return node


# --- the policy target ----------------------------------------------------------------------


def test_target_is_mctx_formula_on_a_hand_computed_root() -> None:
    # 5 moves: two visited (3 visits worth 0.4, 1 worth -0.2), one proven lost, two unvisited.
    logits = np.array([1.0, 0.5, -0.3, 0.2, -1.0])
    pi = np.exp(logits) / np.exp(logits).sum()
    v_mix = (0.1 + 4 * (pi[0] * 0.4 + pi[1] * -0.2) / (pi[0] + pi[1])) / 5
    q = np.array([0.4, -0.2, -1.0, v_mix, v_mix])  # the proven loss enters as -1
    sigma = (50 + 3) * 0.1 * (q + 1.0) / 1.4  # min -1 (the loss), max 0.4
    z = logits + sigma
    expected = np.exp(z) / np.exp(z).sum()
    node = hand_node(list(logits), 0.1, {0: (3, 0.4), 1: (1, -0.2)}, lost=[2])
    got = improved_policy(node, 50.0, 0.1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    # Not the prior, and not the old sharp scale on raw q (c_scale 1, no rescaling).
    assert np.abs(got - pi).max() > 0.05
    sharp = softmax(logits + (50 + 3) * 1.0 * q)
    assert np.abs(got - sharp).max() > 0.05
    # No visit at all: every completed q is the root value, sigma is 0 after the rescaling (the
    # denominator floor), the target is the prior.
    np.testing.assert_allclose(improved_policy(hand_node(list(logits), 0.3, {}, []), 50.0, 0.1), pi, atol=1e-12)


def test_search_result_policy_is_the_formula_on_legal_labels(net: torch.nn.Module) -> None:
    # A real search: 15 of 23 root moves proven lost by the mate-in-one exclusion, 4 candidates
    # visited 12, 11, 4 and 4 times (two phases of Sequential Halving over 31 playouts).
    game = Game(THREATENED)
    policy = Policy(net)
    cfg = SearchConfig(simulations=32, batch_size=4, mate_plies=1, gumbel_actions=4, gumbel_noise=True, **GUMBEL)
    (result,) = Search(policy, cfg, seed=3).run([game])
    assert result.policy is not None and set(result.policy) == set(game.legal_usi())
    moves = list(result.policy)
    visits = np.array([result.visits[m] for m in moves], dtype=np.float64)
    assert sorted(visits[visits > 0]) == [4, 4, 11, 12]
    proven = np.array([result.values[m] if result.values.get(m) in (-1.0, 1.0) else 0.0 for m in moves])
    assert (proven == -1).sum() >= 15
    q = np.array([result.values.get(m, 0.0) for m in moves])
    # The network on the root, as the search saw it: masked logits of the legal labels, the value.
    obs, mask = encode([game])
    with torch.no_grad():
        logits_all, value = policy.logits_and_value(torch.from_numpy(obs), torch.from_numpy(mask))
    labels = np.array([move_to_action(m, game.turn.value) for m in moves])
    logits = logits_all[0].double().numpy()[labels]
    expected = mctx_target(logits, visits, q, proven, float(value[0].clamp(-1, 1)))
    got = np.array([result.policy[m] for m in moves])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # As the 2187 action labels: exactly 0 on every illegal label, sums to 1.
    target = np.zeros(NUM_ACTIONS)
    target[labels] = got
    assert set(np.flatnonzero(mask[0])) == set(labels)
    assert (target[~mask[0]] == 0).all() and target.sum() == pytest.approx(1.0, abs=1e-9)


def test_policy_target_only_with_the_gumbel_root(net: torch.nn.Module) -> None:
    policy = Policy(net)
    (result,) = Search(policy, SearchConfig(simulations=8)).run([Game()])
    assert result.policy is None  # PUCT root
    game = Game(MATE_IN_ONE)  # the root mate search proves it: the target is the mate
    (result,) = Search(policy, SearchConfig(simulations=8, mate_plies=1, **GUMBEL)).run([game])
    assert result.move == "G*5b" and result.policy is not None
    assert set(result.policy) == set(game.legal_usi())
    assert result.policy["G*5b"] == 1.0 and sum(result.policy.values()) == 1.0


# --- Sequential Halving uses the same sigma -------------------------------------------------


def test_halving_scores_are_g_plus_logits_plus_sigma() -> None:
    # Move 0: high logit, mean value -0.1; move 1: low logit, mean value 0.3 (4 visits each);
    # move 2 unvisited, move 3 proven lost. mctx's scale keeps move 0; the old sharp one
    # (c_scale 1 on raw q) kept move 1.
    logits = np.array([2.0, 0.0, 0.5, -1.0])
    g = np.array([0.3, -0.2, 0.1, 0.0])
    node = hand_node(list(logits), 0.0, {0: (4, -0.1), 1: (4, 0.3)}, lost=[3])
    pi = np.exp(logits) / np.exp(logits).sum()
    v_mix = 8 * (pi[0] * -0.1 + pi[1] * 0.3) / (pi[0] + pi[1]) / 9
    q = np.array([-0.1, 0.3, v_mix, -1.0])
    sigma = (50 + 4) * 0.1 * (q + 1.0) / 1.3
    log_prior = np.log(pi)  # the logits up to a constant
    expected = (g + log_prior + sigma)[:2]
    halving = _GumbelRoot(node, g, SearchConfig(gumbel_actions=2, **GUMBEL), budget=0)
    np.testing.assert_allclose(halving.scores(np.array([0, 1])), expected, rtol=0, atol=1e-9)
    assert int(np.argmax(expected)) == 0
    assert int(np.argmax((g + log_prior + (50 + 4) * 1.0 * q)[:2])) == 1  # what the old scale chose


def test_halving_keeps_the_best_by_the_target_without_noise(net: torch.nn.Module, positions: list[Game]) -> None:
    # Without noise, g = 0: the move played is the survivor of the last phase with the highest
    # logits + sigma(q), i.e. the highest probability of the target among the last two.
    policy = Policy(net)
    cfg = SearchConfig(simulations=64, batch_size=4, mate_plies=0, gumbel_actions=8, **GUMBEL)
    for game in positions:
        (result,) = Search(policy, cfg).run([game])
        assert result.policy is not None
        top = sorted(result.visits.values(), reverse=True)
        last = [m for m, n in result.visits.items() if n >= top[1]]
        assert len(last) == 2
        assert result.move == max(last, key=result.policy.__getitem__)


def test_a_small_budget_visits_every_candidate_once(net: torch.nn.Module, positions: list[Game]) -> None:
    # 16 playouts (the root's evaluation and 15 descents), m = 16: as the paper's max(1, n / (m log2 m)),
    # the first phase gives 15 candidates a playout each (an even split over 4 phases gave 4 of them one,
    # and the other 12 were compared on their priors alone).
    policy = Policy(net)
    cfg = SearchConfig(simulations=16, batch_size=4, mate_plies=0, gumbel_actions=16, gumbel_noise=True, **GUMBEL)
    for game in positions:
        assert len(game.legal_usi()) > 16
        (result,) = Search(policy, cfg, seed=0).run([game])
        assert sorted(n for n in result.visits.values() if n) == [1] * 15, result.visits


# --- noise --------------------------------------------------------------------------------


def test_without_noise_the_seed_does_not_matter(net: torch.nn.Module, positions: list[Game]) -> None:
    for model in (net, Flat(net).eval()):
        policy = Policy(model)
        cfg = SearchConfig(simulations=24, batch_size=8, **GUMBEL)
        assert cfg.gumbel_noise is False  # the default: evaluation and play
        runs = [[(r.move, r.visits, r.policy) for r in Search(policy, cfg, seed=seed).run(positions)]
                for seed in range(3)]
        assert runs[1] == runs[0] and runs[2] == runs[0]
    # The player evaluate.py builds: the same move for the same position on every call, any seed.
    search = SearchConfig(simulations=16, **GUMBEL)
    for game in positions[:2]:
        moves = {AgentPlayer(net, search=search, seed=seed).choose([game])[0] for seed in range(3)}
        assert len(moves) == 1


def test_with_noise_the_seed_decides(net: torch.nn.Module) -> None:
    flat = Policy(Flat(net).eval())  # equal logits: the noise alone picks the candidates
    cfg = SearchConfig(simulations=16, gumbel_noise=True, **GUMBEL)
    results = [Search(flat, cfg, seed=seed).run([Game()])[0] for seed in range(6)]
    assert len({r.move for r in results}) > 1
    assert any(r.policy != results[0].policy for r in results[1:])
    again = [Search(flat, cfg, seed=seed).run([Game()])[0] for seed in range(6)]
    assert [(r.move, r.policy) for r in again] == [(r.move, r.policy) for r in results]  # seeded


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [
    ("gumbel_c_scale", 0.0), ("gumbel_c_scale", -0.1), ("gumbel_c_scale", math.inf), ("gumbel_c_scale", math.nan),
    ("gumbel_c_visit", 0.0), ("gumbel_c_visit", -50.0), ("gumbel_c_visit", math.inf), ("gumbel_actions", 0),
])
def test_bad_settings_are_refused_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_search(SearchConfig(**{key: value, **GUMBEL}), "evaluation.search")  # type: ignore[arg-type]
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"evaluation.search.{key}=")


def test_old_and_new_keys_load() -> None:
    default = SearchConfig()
    assert (default.gumbel_c_visit, default.gumbel_c_scale, default.gumbel_noise) == (50, 0.1, False)
    merged = OmegaConf.to_object(OmegaConf.merge(
        OmegaConf.structured(EvaluationConfig),
        {"search": {"root": "gumbel", "gumbel_c_visit": 50, "gumbel_c_scale": 1.0, "gumbel_noise": "true"}}))
    assert isinstance(merged, EvaluationConfig)
    assert (merged.search.gumbel_c_scale, merged.search.gumbel_noise) == (1.0, True)
    validate_evaluation(merged, OpponentConfig())
