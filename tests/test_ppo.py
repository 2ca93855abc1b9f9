"""PPO: two-player GAE (hand-computed cases), LR schedules and the clipped update."""

from __future__ import annotations

import copy
import itertools
import math
import random

import pytest
import torch
from torch.distributions import Categorical

from keisei.config import ModelConfig, ModelName, Norm, OpponentPoolConfig, PPOConfig, Schedule, TrainingConfig
from keisei.env.vec_env import VecEnv
from keisei.nn.model import build_model
from keisei.nn.policy import Policy, invert_cdf, kl_divergence, masked_logits, sample
from keisei.play.players import HeuristicPlayer
from keisei.shogi import NUM_ACTIONS, NUM_PLANES, Game, legal_mask
from keisei.train.opponent_pool import HEURISTIC, OpponentPool
from keisei.train.optim import build_optimizer, learning_rate
from keisei.train.ppo import Batch, ppo_update, refresh_batch_norm, two_player_gae
from keisei.train.rollout import collect

# ---------------------------------------------------------------------------------------------
# two_player_gae
# ---------------------------------------------------------------------------------------------


def _col(xs, dtype=torch.float64):
    """A (T,) list -> (T, 1) tensor; a (T, N) nested list -> (T, N) tensor."""
    t = torch.tensor(xs, dtype=dtype)
    return t[:, None] if t.dim() == 1 else t


def gae(rewards, ended, truncated, values, final_values, next_value, gamma, lam):
    """Call two_player_gae on plain lists (time-major; 1-D lists mean a single env)."""
    adv, ret = two_player_gae(_col(rewards), _col(ended, torch.bool), _col(truncated, torch.bool),
                              _col(values), _col(final_values),
                              torch.tensor(next_value, dtype=torch.float64).reshape(-1),
                              gamma, lam)
    return adv, ret


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    expected_t = _col(expected).to(actual.dtype)
    assert actual.shape == expected_t.shape
    assert torch.allclose(actual, expected_t, atol=atol, rtol=0), f"{actual.squeeze().tolist()} != {expected}"


def test_win_by_the_last_mover_terminal_for_both_players() -> None:
    # T=4, one env: moves t=0 (P0), t=1 (P1), t=2 (P0), t=3 (P1 mates: reward +1, ended).
    g, lam = 0.9, 0.8
    values = [0.1, 0.2, 0.3, 0.4]
    adv, ret = gae(rewards=[0, 0, 0, 1], ended=[False, False, False, True], truncated=[False] * 4,
                   values=values, final_values=[0, 0, 0, 0.77],  # not truncated: must be ignored
                   next_value=[0.5],  # the next game's start: must be ignored
                   gamma=g, lam=lam)
    a3 = 1 - 0.4  # winner's last move: terminal, target +1
    a2 = -1 - 0.3  # loser's last move: terminal, target -1 (no bootstrap)
    a1 = (g * 0.4 - 0.2) + g * lam * a3  # P1 continues to t=3: 0.16 + 0.72 * 0.6 = 0.592
    a0 = (g * 0.3 - 0.1) + g * lam * a2  # P0 continues to t=2: 0.17 + 0.72 * -1.3 = -0.766
    assert_close(adv, [a0, a1, a2, a3])
    assert math.isclose(a1, 0.592) and math.isclose(a0, -0.766)
    # returns = advantages + values; the terminal moves' returns are exactly the outcomes.
    assert_close(ret, [a0 + 0.1, a1 + 0.2, -1.0, 1.0])


def test_loss_by_the_mover_perpetual_check() -> None:
    # T=5: the move at t=4 (P0) loses (e.g. perpetual check by the mover): reward -1, ended.
    g, lam = 0.95, 0.5
    values = [0.2, -0.1, 0.3, 0.5, -0.4]
    adv, ret = gae(rewards=[0, 0, 0, 0, -1], ended=[False] * 4 + [True], truncated=[False] * 5,
                   values=values, final_values=[0.0] * 5, next_value=[0.7], gamma=g, lam=lam)
    gl = g * lam  # 0.475
    a4 = -1 - (-0.4)  # the mover lost: -0.6
    a3 = 1 - 0.5  # the opponent (P1) won with its last move: +1 target -> 0.5
    a2 = (g * -0.4 - 0.3) + gl * a4  # -0.68 + 0.475 * -0.6 = -0.965
    a1 = (g * 0.5 + 0.1) + gl * a3  # 0.575 + 0.475 * 0.5 = 0.8125
    a0 = (g * 0.3 - 0.2) + gl * a2  # 0.085 + 0.475 * -0.965 = -0.373375
    assert math.isclose(a0, -0.373375) and math.isclose(a1, 0.8125)
    assert_close(adv, [a0, a1, a2, a3, a4])
    assert_close(ret, [a + v for a, v in zip([a0, a1, a2, a3, a4], values)])
    assert ret[4, 0].item() == pytest.approx(-1.0) and ret[3, 0].item() == pytest.approx(1.0)


def test_draw_by_repetition_is_zero_for_both_players() -> None:
    # T=4: t=3 (P1) makes a fourfold repetition: terminated (not truncated), reward 0.
    g, lam = 0.9, 0.9
    values = [0.3, -0.2, 0.6, -0.5]
    adv, ret = gae(rewards=[0, 0, 0, 0], ended=[False, False, False, True], truncated=[False] * 4,
                   values=values, final_values=[0, 0, 0, 0.8],  # terminated: no bootstrap from it
                   next_value=[0.9], gamma=g, lam=lam)
    a3 = 0 - (-0.5)  # 0.5
    a2 = 0 - 0.6  # -0.6
    a1 = (g * -0.5 + 0.2) + g * lam * a3  # -0.25 + 0.81 * 0.5 = 0.155
    a0 = (g * 0.6 - 0.3) + g * lam * a2  # 0.24 + 0.81 * -0.6 = -0.246
    assert math.isclose(a1, 0.155) and math.isclose(a0, -0.246)
    assert_close(adv, [a0, a1, a2, a3])
    assert ret[2, 0].item() == pytest.approx(0.0, abs=1e-12)
    assert ret[3, 0].item() == pytest.approx(0.0, abs=1e-12)


def test_truncation_bootstraps_from_the_final_position_for_both_players() -> None:
    # T=4: the game hits max plies with the move at t=3 (P1): ended & truncated, reward 0.
    # In the final position P0 is to move and V(final) = 0.4 from P0's view.
    g, lam = 0.9, 0.7
    values = [0.1, 0.2, -0.3, 0.25]
    adv, ret = gae(rewards=[0, 0, 0, 0], ended=[False, False, False, True],
                   truncated=[False, False, False, True], values=values, final_values=[0, 0, 0, 0.4],
                   next_value=[-0.6], gamma=g, lam=lam)
    a3 = g * -0.4 - 0.25  # mover at t=3: opponent to move there -> target -0.36; A = -0.61
    a2 = g * 0.4 - (-0.3)  # P0 is to move there -> target 0.36; A = 0.66
    a1 = (g * 0.25 - 0.2) + g * lam * a3  # 0.025 + 0.63 * -0.61 = -0.3593
    a0 = (g * -0.3 - 0.1) + g * lam * a2  # -0.37 + 0.63 * 0.66 = 0.0458
    assert math.isclose(a3, -0.61) and math.isclose(a2, 0.66)
    assert math.isclose(a1, -0.3593) and math.isclose(a0, 0.0458)
    assert_close(adv, [a0, a1, a2, a3])
    assert ret[3, 0].item() == pytest.approx(-0.36)
    assert ret[2, 0].item() == pytest.approx(0.36)


def test_truncation_with_nonzero_final_value_differs_from_a_draw() -> None:
    # Same rollout, once terminated (draw) and once truncated: only the last two moves' targets differ.
    g, lam = 0.8, 0.6
    common = dict(rewards=[0, 0, 0], values=[0.0, 0.0, 0.0], final_values=[0, 0, 0.5], next_value=[0.0],
                  gamma=g, lam=lam)
    draw, _ = gae(ended=[False, False, True], truncated=[False, False, False], **common)
    trunc, _ = gae(ended=[False, False, True], truncated=[False, False, True], **common)
    # Draw: t=2 and t=1 are terminal with target 0; t=0 continues to t=2: 0 + 0.48 * 0 = 0.
    assert_close(draw, [0.0, 0.0, 0.0])
    # Truncated: t=2 -> 0.8 * -0.5 = -0.4; t=1 -> 0.8 * 0.5 = 0.4; t=0 -> 0 + 0.48 * -0.4 = -0.192.
    assert_close(trunc, [-0.192, 0.4, -0.4])


def test_game_continuing_past_the_rollout() -> None:
    # T=5, no game end: t=3 (=T-2) bootstraps from next_value (same player to move at T),
    # t=4 (=T-1) from gamma * -next_value.
    g, lam = 0.9, 0.8
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    adv, ret = gae(rewards=[0] * 5, ended=[False] * 5, truncated=[False] * 5, values=values,
                   final_values=[0.0] * 5, next_value=[0.6], gamma=g, lam=lam)
    gl = g * lam  # 0.72
    a4 = g * -0.6 - 0.5  # -0.54 - 0.5 = -1.04
    a3 = g * 0.6 - 0.4  # 0.54 - 0.4 = 0.14 (no later advantage in the rollout)
    a2 = (g * 0.5 - 0.3) + gl * a4  # 0.15 + 0.72 * -1.04 = -0.5988
    a1 = (g * 0.4 - 0.2) + gl * a3  # 0.16 + 0.72 * 0.14 = 0.2608
    a0 = (g * 0.3 - 0.1) + gl * a2  # 0.17 + 0.72 * -0.5988 = -0.261136
    assert math.isclose(a2, -0.5988) and math.isclose(a1, 0.2608) and math.isclose(a0, -0.261136)
    assert_close(adv, [a0, a1, a2, a3, a4])
    assert_close(ret, [a + v for a, v in zip([a0, a1, a2, a3, a4], values)])


def test_lambda_zero_is_one_step_td_and_lambda_one_is_monte_carlo() -> None:
    values = [0.1, -0.2, 0.3, -0.4, 0.5, 0.6]
    rollout = dict(rewards=[0, 0, 0, 0, 0, 1], ended=[False] * 5 + [True], truncated=[False] * 6,
                   values=values, final_values=[0.0] * 6, next_value=[0.25])
    # lam = 0: A_t = delta_t only. t=5 wins (1 - 0.6), t=4 loses (-1 - 0.5), others gamma*V_{t+2} - V_t.
    g = 0.5
    adv, _ = gae(gamma=g, lam=0.0, **rollout)
    assert_close(adv, [g * 0.3 - 0.1, g * -0.4 + 0.2, g * 0.5 - 0.3, g * 0.6 + 0.4, -1.5, 0.4])
    # gamma = lam = 1: each move's return is its player's final outcome (telescoping sum):
    # P1 (t=1, 3, 5) won -> +1; P0 (t=0, 2, 4) lost -> -1.
    _, ret = gae(gamma=1.0, lam=1.0, **rollout)
    assert_close(ret, [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    # gamma = 0.5, lam = 1: the outcome discounted per own move: P0's moves are 2, 1, 0 own moves
    # before its last: -0.25, -0.5, -1; P1's: 0.25, 0.5, 1.
    _, ret = gae(gamma=0.5, lam=1.0, **rollout)
    assert_close(ret, [-0.25, 0.25, -0.5, 0.5, -1.0, 1.0])


def test_game_ending_at_the_first_step_and_at_the_second_last_step() -> None:
    # t=0 ends a game (win; its loser's last move was in the previous rollout); the new game
    # runs t=1..3 and P(t=2) wins at t=2; t=3 starts a third game.
    g, lam = 0.9, 0.5
    values = [0.2, 0.1, -0.3, 0.4]
    adv, _ = gae(rewards=[1, 0, 1, 0], ended=[True, False, True, False], truncated=[False] * 4,
                 values=values, final_values=[0.0] * 4, next_value=[0.3], gamma=g, lam=lam)
    a0 = 1 - 0.2  # terminal win
    a1 = -1 - 0.1  # loser's last move of the second game
    a2 = 1 - (-0.3)  # winner's last move
    a3 = g * -0.3 - 0.4  # last move of the rollout: -0.27 - 0.4 = -0.67
    assert_close(adv, [a0, a1, a2, a3])


def test_auto_reset_mid_rollout_does_not_leak_into_the_ended_game() -> None:
    # T=6, N=2. Env 0: P(t=2) mates at t=2 (reward +1), the env resets, a new game runs t=3..5.
    # Env 1: truncated with the move at t=4 (V(final) = -0.5 for the side to move there), new game at t=5.
    g, lam = 0.9, 0.8
    gl = g * lam  # 0.72
    rewards = [[0, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 0]]
    ended = [[False, False], [False, False], [True, False], [False, False], [False, True], [False, False]]
    truncated = [[False, False]] * 4 + [[False, True], [False, False]]
    values = [[0.1, 0.0], [-0.2, 0.1], [0.3, 0.2], [0.5, 0.3], [-0.4, 0.4], [0.6, -0.1]]
    final_values = [[0, 0], [0, 0], [0.77, 0], [0, 0], [0, -0.5], [0, 0]]
    next_value = [0.2, 0.9]
    adv, ret = gae(rewards, ended, truncated, values, final_values, next_value, g, lam)

    # Env 0.
    e5 = g * -0.2 - 0.6  # -0.78
    e4 = g * 0.2 + 0.4  # 0.58 (T-2: bootstrap next_value)
    e3 = (g * 0.6 - 0.5) + gl * e5  # new game: 0.04 + 0.72 * -0.78 = -0.5216
    e2 = 1 - 0.3  # win: 0.7
    e1 = -1 + 0.2  # loser's last move: -0.8 (not g * V_3 of the new game)
    e0 = (g * 0.3 - 0.1) + gl * e2  # 0.17 + 0.72 * 0.7 = 0.674
    assert math.isclose(e3, -0.5216) and math.isclose(e0, 0.674)
    # Env 1.
    f5 = g * -0.9 + 0.1  # -0.71
    f4 = g * 0.5 - 0.4  # truncated mover: g * -(-0.5) - 0.4 = 0.05
    f3 = g * -0.5 - 0.3  # the other player, to move in the final position: -0.45 - 0.3 = -0.75
    f2 = (g * 0.4 - 0.2) + gl * f4  # 0.16 + 0.72 * 0.05 = 0.196
    f1 = (g * 0.3 - 0.1) + gl * f3  # 0.17 + 0.72 * -0.75 = -0.37
    f0 = (g * 0.2 - 0.0) + gl * f2  # 0.18 + 0.72 * 0.196 = 0.32112
    assert math.isclose(f0, 0.32112) and math.isclose(f1, -0.37)
    expected = [[e0, f0], [e1, f1], [e2, f2], [e3, f3], [e4, f4], [e5, f5]]
    assert_close(adv, expected)
    assert_close(ret, [[a + v for a, v in zip(ra, rv)] for ra, rv in zip(expected, values)])

    # Changing anything of env 0's new game (values, rewards, next_value) leaves t=0..2 unchanged.
    values2 = [row[:] for row in values]
    values2[3][0], values2[4][0], values2[5][0] = -0.9, 0.9, -0.9
    rewards2 = [row[:] for row in rewards]
    rewards2[4][0] = -1.0
    ended2 = [row[:] for row in ended]
    ended2[4][0] = True
    adv2, _ = gae(rewards2, ended2, truncated, values2, final_values, [-0.8, 0.9], g, lam)
    assert torch.equal(adv2[:3, 0], adv[:3, 0])
    assert torch.equal(adv2[:, 1], adv[:, 1])  # envs are independent
    assert not torch.equal(adv2[3:, 0], adv[3:, 0])


def test_envs_are_independent_columns() -> None:
    gen = random.Random(7)
    steps, n = 6, 3
    rewards = [[0.0] * n for _ in range(steps)]
    ended = [[False] * n for _ in range(steps)]
    truncated = [[False] * n for _ in range(steps)]
    rewards[2][0], ended[2][0] = -1.0, True
    ended[3][1] = truncated[3][1] = True
    rewards[5][2], ended[5][2] = 1.0, True
    values = [[gen.uniform(-1, 1) for _ in range(n)] for _ in range(steps)]
    final_values = [[gen.uniform(-1, 1) for _ in range(n)] for _ in range(steps)]
    next_value = [gen.uniform(-1, 1) for _ in range(n)]
    adv, ret = gae(rewards, ended, truncated, values, final_values, next_value, 0.97, 0.9)
    for j in range(n):
        col = [[row[j]] for row in rewards], [[row[j]] for row in ended], [[row[j]] for row in truncated]
        adv_j, ret_j = gae(*col, [[row[j]] for row in values], [[row[j]] for row in final_values],
                           [next_value[j]], 0.97, 0.9)
        assert torch.allclose(adv[:, j:j + 1], adv_j, atol=1e-12)
        assert torch.allclose(ret[:, j:j + 1], ret_j, atol=1e-12)


def _reference_gae(rewards, ended, truncated, values, final_values, next_value, gamma, lam):
    """Independent oracle for one env, from the module docstring's rules: for each move find its
    own next move (or its terminal target), then sum the discounted TD errors forward along that chain."""
    steps = len(rewards)
    nxt: list[int | None] = []  # the mover's next own step (steps or steps + 1 = past the rollout)
    tgt: list[float] = []  # the one-step target of move t
    for t in range(steps):
        if ended[t]:
            nxt.append(None)
            tgt.append(rewards[t] + (gamma * -final_values[t] if truncated[t] else 0.0))
        elif t + 1 < steps and ended[t + 1]:
            nxt.append(None)
            tgt.append(-rewards[t + 1] + (gamma * final_values[t + 1] if truncated[t + 1] else 0.0))
        elif t + 1 == steps:  # reply unseen
            nxt.append(None)
            tgt.append(gamma * -next_value)
        else:
            nxt.append(t + 2 if t + 2 < steps else None)
            tgt.append(gamma * (values[t + 2] if t + 2 < steps else next_value))
    out = []
    for t in range(steps):
        total, weight, k = 0.0, 1.0, t
        while k is not None:
            total += weight * (tgt[k] - values[k])
            weight *= gamma * lam
            k = nxt[k]
        out.append(total)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_an_independent_per_player_reference(seed: int) -> None:
    gen = random.Random(seed)
    steps, n = 9, 4
    gamma, lam = gen.choice([(0.9, 0.8), (1.0, 0.95), (0.5, 0.0), (0.99, 1.0)])
    cols = []
    for _ in range(n):
        ended = [gen.random() < 0.25 for _ in range(steps)]
        truncated = [e and gen.random() < 0.4 for e in ended]
        rewards = [float(gen.choice([-1, 0, 1])) if e and not tr else 0.0 for e, tr in zip(ended, truncated)]
        values = [gen.uniform(-1, 1) for _ in range(steps)]
        final_values = [gen.uniform(-1, 1) for _ in range(steps)]
        cols.append((rewards, ended, truncated, values, final_values, gen.uniform(-1, 1)))

    def stack(i):
        return [[c[i][t] for c in cols] for t in range(steps)]

    adv, ret = gae(stack(0), stack(1), stack(2), stack(3), stack(4), [c[5] for c in cols], gamma, lam)
    for j, c in enumerate(cols):
        expected = _reference_gae(*c, gamma, lam)
        assert torch.allclose(adv[:, j], torch.tensor(expected, dtype=torch.float64), atol=1e-9)
        assert torch.allclose(ret[:, j], adv[:, j] + torch.tensor(c[3], dtype=torch.float64), atol=1e-12)


def test_float32_inputs_keep_dtype_and_shape() -> None:
    steps, n = 4, 2
    adv, ret = two_player_gae(torch.zeros(steps, n), torch.zeros(steps, n, dtype=torch.bool),
                              torch.zeros(steps, n, dtype=torch.bool), torch.full((steps, n), 0.5),
                              torch.zeros(steps, n), torch.full((n,), 0.5), 1.0, 1.0)
    assert adv.shape == ret.shape == (steps, n) and adv.dtype == torch.float32
    # gamma = lam = 1, all values 0.5: t=3 -> -0.5 - 0.5 = -1; t=2 -> 0.5 - 0.5 = 0;
    # t=1 -> (0.5 - 0.5) + A_3 = -1; t=0 -> 0 + A_2 = 0.
    assert torch.allclose(adv, torch.tensor([[0.0] * n, [-1.0] * n, [0.0] * n, [-1.0] * n]))


# ---------------------------------------------------------------------------------------------
# learning_rate
# ---------------------------------------------------------------------------------------------


def _cfg(schedule: Schedule, lr: float = 1e-3) -> TrainingConfig:
    cfg = TrainingConfig()
    cfg.lr_schedule = schedule
    cfg.learning_rate = lr
    return cfg


def test_constant_learning_rate() -> None:
    cfg = _cfg(Schedule.constant)
    for update in (0, 50, 99):
        assert learning_rate(cfg, update, 100) == pytest.approx(1e-3)


def test_linear_learning_rate() -> None:
    cfg = _cfg(Schedule.linear)
    assert learning_rate(cfg, 0, 100) == pytest.approx(1e-3)  # start: full rate
    assert learning_rate(cfg, 25, 100) == pytest.approx(0.75e-3)  # 1 - 25/100
    assert learning_rate(cfg, 50, 100) == pytest.approx(0.5e-3)  # half way: half
    assert learning_rate(cfg, 99, 100) == pytest.approx(0.01e-3)  # last update: 1/100 of it
    assert learning_rate(_cfg(Schedule.linear, lr=3e-4), 3, 4) == pytest.approx(0.75e-4)


def test_cosine_learning_rate() -> None:
    cfg = _cfg(Schedule.cosine)
    assert learning_rate(cfg, 0, 100) == pytest.approx(1e-3)  # 0.5 * (1 + cos 0) = 1
    assert learning_rate(cfg, 50, 100) == pytest.approx(0.5e-3)  # 0.5 * (1 + cos(pi/2)) = 0.5
    # 0.5 * (1 + cos(pi/4)) = 0.5 + sqrt(2)/4 ~= 0.853553
    assert learning_rate(cfg, 25, 100) == pytest.approx(1e-3 * (0.5 + math.sqrt(2) / 4))
    # 0.5 * (1 + cos(3pi/4)) = 0.5 - sqrt(2)/4 ~= 0.146447
    assert learning_rate(cfg, 75, 100) == pytest.approx(1e-3 * (0.5 - math.sqrt(2) / 4))
    # near the end: 0.5 * (1 - cos(pi/100)) ~= (pi/100)^2 / 4 ~= 2.467e-4 of the rate
    end = learning_rate(cfg, 99, 100)
    assert end == pytest.approx(1e-3 * (math.pi / 100) ** 2 / 4, rel=1e-3)
    rates = [learning_rate(cfg, u, 100) for u in range(100)]
    assert all(a > b for a, b in itertools.pairwise(rates))  # strictly decreasing
    assert all(r > 0 for r in rates)


# ---------------------------------------------------------------------------------------------
# ppo_update and masked_logits


def _update(model: torch.nn.Module, batch: Batch, cfg: PPOConfig, seed: int = 0) -> dict[str, float]:
    """``ppo_update`` with a fresh Adam (the default training settings) and a seeded generator."""
    optimizer = build_optimizer(model, TrainingConfig())
    return ppo_update(Policy(model), optimizer, batch, cfg, TrainingConfig().max_grad_norm,
                      torch.Generator().manual_seed(seed))
# ---------------------------------------------------------------------------------------------

METRIC_KEYS = {"losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
               "losses/clipfrac", "losses/explained_variance"}


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=ModelName.mlp, mlp_hidden=16))


def _batch(model: torch.nn.Module, size: int, legal_counts: list[int], seed: int = 0) -> Batch:
    """A random batch: 0/1 planes, ``legal_counts[i % len]`` legal labels in row i, actions among them,
    logprobs and values from ``model`` itself."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 2, (size, NUM_PLANES, 9, 9), generator=gen, dtype=torch.uint8)
    mask = torch.zeros(size, NUM_ACTIONS, dtype=torch.bool)
    actions = torch.empty(size, dtype=torch.int64)
    for i in range(size):
        labels = torch.randperm(NUM_ACTIONS, generator=gen)[:legal_counts[i % len(legal_counts)]]
        mask[i, labels] = True
        actions[i] = labels[torch.randint(0, len(labels), (1,), generator=gen)]
    with torch.no_grad():
        logits, values = model(obs)
        logprobs = Categorical(logits=masked_logits(logits, mask)).log_prob(actions)
    advantages = torch.randn(size, generator=gen, dtype=torch.float32)
    return Batch(obs=obs, legal_mask=mask, actions=actions, logprobs=logprobs, values=values,
                 advantages=advantages, returns=advantages + values)


def test_ppo_update_returns_finite_metrics_and_changes_parameters() -> None:
    model = _tiny_model()
    batch = _batch(model, size=32, legal_counts=[1, 3, 5])
    cfg = PPOConfig(minibatch_size=8, update_epochs=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = _update(model, batch, cfg, seed=0)
    assert set(metrics) == METRIC_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and "policy.weight" in changed and "value.0.weight" in changed
    # Entropy of a policy over at most 5 legal labels is in [0, log 5]; had illegal labels any mass
    # it would be near log 2187 ~= 7.7.
    assert 0.0 <= metrics["losses/entropy"] <= math.log(5)
    assert metrics["losses/approx_kl"] >= -1e-7  # (r - 1) - log r >= 0
    assert 0.0 <= metrics["losses/clipfrac"] <= 1.0
    assert metrics["losses/value_loss"] >= 0.0


def test_ppo_update_first_minibatch_losses_by_hand() -> None:
    # One epoch, one minibatch of the whole batch: before the step the policy and value are the ones
    # that produced the batch, so ratio = 1 everywhere.
    model = _tiny_model()
    batch = _batch(model, size=16, legal_counts=[2, 4, 7], seed=3)
    with torch.no_grad():
        logits, _ = model(batch.obs)
    cfg = PPOConfig(minibatch_size=16, update_epochs=1, norm_adv=False, clip_vloss=False)
    metrics = _update(model, batch, cfg, seed=1)
    adv = batch.advantages.double()
    # policy loss = mean(max(-A * 1, -A * clip(1))) = -mean(A)
    assert metrics["losses/policy_loss"] == pytest.approx(-adv.mean().item(), abs=1e-6)
    # value loss = 0.5 * mean((V - R)^2) = 0.5 * mean(A^2), since R = A + V
    assert metrics["losses/value_loss"] == pytest.approx(0.5 * (adv ** 2).mean().item(), rel=1e-5)
    assert metrics["losses/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["losses/clipfrac"] == 0.0
    # entropy over the legal labels only, computed without masked_logits
    ents = []
    for i in range(16):
        logp = torch.log_softmax(logits[i][batch.legal_mask[i]].double(), dim=0)
        ents.append(-(logp.exp() * logp).sum().item())
    assert metrics["losses/entropy"] == pytest.approx(sum(ents) / len(ents), rel=1e-5)
    # explained variance = 1 - Var(R - V) / Var(R) = 1 - Var(A) / Var(A + V)
    ev = 1 - batch.advantages.double().var().item() / batch.returns.double().var().item()
    assert metrics["losses/explained_variance"] == pytest.approx(ev, rel=1e-5, abs=1e-6)  # ev near 0: float32 error


def test_ppo_update_normalised_advantages_give_zero_first_policy_loss() -> None:
    model = _tiny_model()
    batch = _batch(model, size=12, legal_counts=[3], seed=5)
    cfg = PPOConfig(minibatch_size=12, update_epochs=1, norm_adv=True)
    metrics = _update(model, batch, cfg, seed=0)
    # ratio = 1 and the normalised advantages have mean 0: policy loss = -mean(A_norm) = 0
    assert metrics["losses/policy_loss"] == pytest.approx(0.0, abs=1e-6)


def test_ppo_update_with_a_single_legal_action_per_row() -> None:
    model = _tiny_model()
    batch = _batch(model, size=16, legal_counts=[1], seed=2)
    assert torch.all(batch.logprobs == 0)  # the only legal move has probability 1
    cfg = PPOConfig(minibatch_size=4, update_epochs=3)
    metrics = _update(model, batch, cfg, seed=0)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # one legal label: entropy 0, log-prob 0 -> ratio 1, KL 0, nothing clipped
    assert metrics["losses/entropy"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["losses/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["losses/clipfrac"] == 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_kl_divergence_is_over_the_legal_moves_only() -> None:
    """KL(ref || pi) against torch's on the legal labels alone; illegal labels, however large their raw
    logits in either network, add nothing, and get no gradient."""
    gen = torch.Generator().manual_seed(0)
    ref, new = (torch.randn(3, NUM_ACTIONS, generator=gen) * 3 for _ in range(2))
    new[:, 7] = ref[:, 11] = 1e4  # huge illegal logits
    mask = torch.zeros(3, NUM_ACTIONS, dtype=torch.bool)
    mask[0, 5] = True  # one legal move: both put all their mass there
    mask[1, [5, 100, 2186]] = True
    mask[2, torch.randperm(NUM_ACTIONS, generator=gen)[:40]] = True
    mask[:, [7, 11]] = False
    x = new.clone().requires_grad_(True)
    kl = kl_divergence(masked_logits(ref, mask), masked_logits(x, mask))
    for row in range(3):
        legal = mask[row]
        expected = torch.distributions.kl_divergence(Categorical(logits=ref[row, legal].double()),
                                                     Categorical(logits=new[row, legal].double()))
        assert kl[row].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
    assert kl[0] == 0.0 and kl[1] > 0 and kl[2] > 0
    assert torch.all(kl_divergence(masked_logits(ref, mask), masked_logits(ref, mask)) == 0)
    kl.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[~mask] == 0)


def _frozen(model: torch.nn.Module) -> Policy:
    return Policy(copy.deepcopy(model).eval().requires_grad_(False))


def test_init_kl_is_logged_and_off_at_coefficient_zero() -> None:
    """With the network the run started from: ``losses/init_kl`` is logged, 0 before the first step;
    at ``init_kl_coef`` 0 the update is exactly the one without it, at > 0 it ends nearer the start."""
    batch = _batch(_tiny_model(), size=32, legal_counts=[3, 8, 30], seed=4)
    cfg = PPOConfig(minibatch_size=32, update_epochs=1)
    plain, init = _tiny_model(), _tiny_model()
    start = _frozen(init)
    assert "losses/init_kl" not in _update(plain, batch, cfg)
    optimizer = build_optimizer(init, TrainingConfig())
    metrics = ppo_update(Policy(init), optimizer, batch, cfg, TrainingConfig().max_grad_norm,
                         torch.Generator().manual_seed(0), init_policy=start)
    assert metrics["losses/init_kl"] == 0.0  # one minibatch, measured before its step
    assert_same_parameters(plain, init)
    drift = {}
    for coef in (0.0, 100.0):
        model, cfg = _tiny_model(), PPOConfig(minibatch_size=8, update_epochs=4, init_kl_coef=coef)
        optimizer = build_optimizer(model, TrainingConfig(learning_rate=1e-2))
        drift[coef] = ppo_update(Policy(model), optimizer, batch, cfg, TrainingConfig().max_grad_norm,
                                 torch.Generator().manual_seed(0), init_policy=start)["losses/init_kl"]
    assert 0 < drift[100.0] < drift[0.0] / 2


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_masked_logits_give_illegal_actions_zero_probability() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, NUM_ACTIONS) * 20
    logits[:, 5] = -50.0  # a very unlikely legal action must stay legal
    logits[:, 7] = 1e4  # a huge illegal logit must still get nothing
    mask = torch.zeros(3, NUM_ACTIONS, dtype=torch.bool)
    mask[0, 5] = True  # only one legal action
    mask[1, [5, 100, 2186]] = True
    mask[2, 0] = mask[2, 7] = True  # here 7 is legal
    dist = Categorical(logits=masked_logits(logits, mask))
    probs = dist.probs
    assert torch.all(probs[~mask] == 0)
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert probs[0, 5] == 1.0
    assert probs[2, 7] == pytest.approx(1.0)  # e^(1e4) dominates e^(logit 0)
    ent = dist.entropy()
    assert torch.isfinite(ent).all() and not torch.isnan(ent).any()
    assert ent[0] == 0.0
    assert dist.log_prob(torch.tensor([5, 5, 7]))[0] == 0.0
    # row 1 = softmax over its three legal logits
    legal = logits[1, [5, 100, 2186]]
    assert torch.allclose(probs[1, [5, 100, 2186]], torch.softmax(legal, 0), atol=1e-6)
    # low-precision logits come back as float32 with the same masking
    half = masked_logits(logits.bfloat16(), mask)
    assert half.dtype == torch.float32
    assert torch.all(Categorical(logits=half).probs[~mask] == 0)
    # gradients through the masked logits are finite and zero for illegal labels
    x = logits.clone().requires_grad_(True)
    Categorical(logits=masked_logits(x, mask)).entropy().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[~mask] == 0)


def test_sample_draws_legal_moves_with_the_policy_probabilities() -> None:
    """``sample`` against the exact probabilities: real legal-move masks, a frequency test per move."""
    rng = random.Random(0)
    game = Game()
    masks = []
    for _ in range(4):
        masks.append(torch.from_numpy(legal_mask(game)))
        game.push(rng.choice(game.legal_usi()))
    mask = torch.stack(masks)
    mask[3] = False
    mask[3, [0, NUM_ACTIONS - 1]] = True  # the first and the last label, nothing between
    torch.manual_seed(0)
    probs = torch.softmax(masked_logits(torch.randn(4, NUM_ACTIONS) * 2, mask), dim=1)
    draws = 40_000
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros_like(probs)
    for _ in range(draws // 1000):
        picks = sample(probs.repeat(1000, 1), generator).view(1000, 4)
        counts += torch.nn.functional.one_hot(picks, NUM_ACTIONS).sum(0).float()
    assert counts.sum() == draws * 4
    assert torch.all(counts[~mask] == 0)
    expected = probs * draws
    sigma = (expected * (1 - probs)).sqrt()
    assert torch.all((counts - expected).abs() <= 5 * sigma + 1)
    assert torch.equal(sample(probs, torch.Generator().manual_seed(1)), sample(probs, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("monotonic", [True, False])
def test_a_cumulative_sum_off_by_an_ulp_never_draws_an_illegal_label(monotonic: bool) -> None:
    """A parallel cumulative sum (CUDA) may step up by an ulp at a label of probability 0 (and down
    again after it: not monotonic); a uniform number that lands in that ulp must still draw a legal
    label."""
    probs = torch.tensor([[0.25, 0.25, 0.0, 0.0, 0.5]])
    exact = probs.cumsum(dim=1)
    cdf = exact.clone()
    cdf[0, 2] = torch.nextafter(exact[0, 1], torch.tensor(1.0))
    if not monotonic:
        cdf[0, 3] = exact[0, 1]
    u = exact[0, 1].view(1, 1)  # in the ulp: the search lands on label 2
    assert torch.searchsorted(cdf, u, right=True).item() == 2
    assert probs[0, invert_cdf(probs, cdf, u)] > 0
    assert invert_cdf(probs, exact, torch.tensor([[0.1]])).item() == 0  # the exact sums draw as before


# ---------------------------------------------------------------------------------------------
# the rollout and the update compute the same function
# ---------------------------------------------------------------------------------------------

MODEL_CONFIGS = {
    "resnet-default": ModelConfig(blocks=1, channels=16, value_hidden=16),
    "resnet-batch": ModelConfig(blocks=1, channels=16, value_hidden=16, norm=Norm.batch),
    "resnet-batch-se": ModelConfig(blocks=1, channels=16, value_hidden=16, norm=Norm.batch,
                                   squeeze_excitation=True),
    "resnet-group": ModelConfig(blocks=1, channels=16, value_hidden=16, norm=Norm.group),
    "resnet-none": ModelConfig(blocks=1, channels=16, value_hidden=16, norm=Norm.none),
    "mlp": ModelConfig(name=ModelName.mlp, mlp_hidden=16),
}


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_first_minibatch_of_an_update_has_ratio_one(name: str) -> None:
    """Before any optimizer step the update's log-probabilities equal the rollout's: ratio 1, approx_kl 0,
    clipfrac 0 (BatchNorm in train mode during the update but eval mode in the rollout broke this)."""
    torch.manual_seed(0)
    model = build_model(MODEL_CONFIGS[name])
    # Non-trivial normalisation statistics, as after some training (running stats away from 0 / 1).
    refresh_batch_norm(model, torch.randint(0, 2, (256, NUM_PLANES, 9, 9), dtype=torch.uint8))
    policy = Policy(model)
    env = VecEnv(16, max_plies=64, opening_plies=4)
    env.reset(seed=0)
    cfg = PPOConfig(num_steps=16, minibatch_size=4096, update_epochs=1)
    pool = OpponentPool(OpponentPoolConfig(), None, torch.Generator().manual_seed(0))
    batch, _ = collect(policy, env, pool, cfg.num_steps, cfg.gamma, cfg.gae_lambda)
    model.eval()
    with torch.no_grad():
        logprob, _, value = policy.logprob_entropy_value(batch.obs, batch.legal_mask, batch.actions)
    assert (logprob - batch.logprobs).abs().max() < 1e-5
    assert (value - batch.values).abs().max() < 1e-5
    optimizer = build_optimizer(model, TrainingConfig())
    for group in optimizer.param_groups:
        group["lr"] = 0.0  # the update's first (and only) minibatch, with no step taken
    metrics = ppo_update(policy, optimizer, batch, cfg, 0.5, torch.Generator().manual_seed(0))
    assert metrics["losses/approx_kl"] < 1e-9
    assert metrics["losses/clipfrac"] == 0.0


def test_games_against_the_heuristic_player_are_its_moves_and_train_only_the_learner() -> None:
    """heuristic_fraction 1: every game is against keisei.play.players.HeuristicPlayer; its plies are exactly what
    a HeuristicPlayer of the same seed chooses in those positions, and the batch holds only the learner's."""
    torch.manual_seed(0)
    model = _tiny_model()
    env = VecEnv(2, max_plies=64, opening_plies=2)
    env.reset(seed=3)
    pool = OpponentPool(OpponentPoolConfig(heuristic_fraction=1.0), None, torch.Generator().manual_seed(0), seed=7)
    batch, stats = collect(Policy(model), env, pool, 20, 1.0, 0.95)
    assert (pool.opponent == HEURISTIC).all() and not stats.games
    reference = HeuristicPlayer(seed=7)
    learner_plies = 0
    for ply in range(2, 22):  # after the opening; both games, in the order the rollout asked for moves
        for i, game in enumerate(env.games):
            position = Game.replay(game.start_sfen, game.moves[:ply], max_plies=64)
            if position.turn.value == "bw"[pool.learner_colour[i]]:
                learner_plies += 1
            else:
                assert reference.choose([position]) == [game.moves[ply]], (i, ply)
    assert batch.actions.shape[0] == learner_plies


def test_a_snapshot_dropped_before_its_game_plays_it_stays_that_games_opponent() -> None:
    """A game assigned a snapshot that the next snapshot pushes out of the pool before the opponent has
    moved still plays that snapshot's weights (not a fresh network), and the pool's checkpoint keeps them."""
    torch.manual_seed(0)
    learner = Policy(build_model(ModelConfig()))  # the default ResNet
    pool = OpponentPool(OpponentPoolConfig(size=1, snapshot_interval=1, fraction=1.0),
                        lambda: Policy(build_model(ModelConfig())), torch.Generator().manual_seed(0))
    pool.add(learner, 1)  # snapshot 0
    pool.assign([0], 1)  # a new game against it
    assert pool.opponent.tolist() == [0]
    first = copy.deepcopy(learner.model.state_dict())
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(1.0)  # the learner moves on
    pool.add(learner, 2)  # snapshot 1: snapshot 0 leaves the pool
    assert sorted(pool.snapshots) == [1]
    played = pool.policy(0).model.state_dict()
    assert all(torch.equal(played[k], first[k]) for k in first)
    state = pool.state_dict()
    assert all(torch.equal(state["snapshots"][0][k], first[k]) for k in first)


@pytest.mark.parametrize("bootstrap", [True, False])
def test_a_game_cut_at_max_plies_bootstraps_or_is_a_draw(bootstrap: bool) -> None:
    """bootstrap_truncated=False: a game cut at max plies ends as a draw, so with gamma = lambda = 1 every
    move of a game that was cut inside the rollout returns exactly 0; with bootstrapping it returns the
    value of the final position (not 0)."""
    torch.manual_seed(0)
    model = _tiny_model()
    env = VecEnv(4, max_plies=6)  # no mate in 6 plies: every game is cut
    env.reset(seed=0)
    pool = OpponentPool(OpponentPoolConfig(), None, torch.Generator().manual_seed(0))
    batch, _ = collect(Policy(model), env, pool, 12, 1.0, 1.0, bootstrap)
    returns = batch.returns.reshape(12, 4)[:6]  # the first game of every env: plies 0-5, all inside the rollout
    if bootstrap:
        assert returns.abs().min() > 0
    else:
        assert torch.equal(returns, torch.zeros_like(returns))


def test_minibatches_of_a_ragged_batch_are_nearly_equal() -> None:
    """1000 learner moves with minibatch_size 256: four minibatches of 250, not 3 x 256 + 232."""
    model = _tiny_model()
    batch = _batch(model, size=1000, legal_counts=[3])
    sizes = []
    handle = model.policy.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    cfg = PPOConfig(minibatch_size=256, update_epochs=1)
    _update(model, batch, cfg, seed=0)
    handle.remove()
    assert sizes == [250, 250, 250, 250]
