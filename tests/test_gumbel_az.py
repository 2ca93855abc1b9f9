"""Gumbel AlphaZero self-play (``algorithm=gumbel_az``): the learn step on positions whose best move wins a
piece (and the same with wrong targets), the stored policy target against the search's, the replay buffer,
and real ``python train.py`` runs (metrics, checkpoints, exact resume with the buffer, two gloo ranks,
bad settings refused). Real rules and real searches; the MLP network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, clean_env

from keisei.config import GumbelAZConfig, ModelConfig, ModelName, Norm
from keisei.env import VecEnv
from keisei.nn.model import build_model
from keisei.nn.policy import Policy
from keisei.play.search import SearchResult
from keisei.shogi import NUM_ACTIONS, Color, Game, encode, move_to_action
from keisei.train.gumbel_az import Replay, SelfPlay, gumbel_az_update, policy_target, search_groups
from keisei.train.replay import FIXED_BYTES, Block, ReplayBuffer, pack, unpack

REPO = Path(__file__).resolve().parents[1]
#: A run of seconds: the MLP, 8 games x 4 moves an update (32 steps), games cut at 10 plies (draws), so
#: that games end at updates 3, 5, 8 (buffer from update 3 on) and some are in progress at every checkpoint.
RUN = ["algorithm=gumbel_az", "model=mlp", "env.num_envs=8", "env.max_plies=10", "algorithm.num_steps=4",
       "algorithm.minibatch_size=16", "algorithm.buffer_size=64", "algorithm.samples_per_position=1",
       "algorithm.root_value_weight=0.5", "training.lr_schedule=constant", "training.learning_rate=3e-3",
       "training.checkpoint_interval_timesteps=64", "logging.progress_bar=false"]
LOSS_KEYS = ["losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/policy_entropy_target",
             "losses/accuracy", "losses/explained_variance"]
CHART_KEYS = ["charts/buffer_size", "charts/minibatches", "charts/positions_added", "charts/pending_positions",
              "time/search_share", "time/inference_share", "time/env_share", "time/buffer_share", "time/update_share"]

#: Positions whose best move wins a piece that hangs (no mate, no check): (SFEN, the capture).
CAPTURES = [
    ("4k4/9/7g1/9/9/9/9/7R1/4K4 b - 1", "2h2c+"),  # rook takes an unprotected gold
    ("4k4/1r7/9/9/9/9/1S7/9/4K4 w - 1", "8b8g+"),  # White's rook takes a silver
    ("4k4/9/6s2/9/9/9/2B6/9/4K4 b - 1", "7g3c+"),  # bishop takes a silver
    ("4k4/9/8r/9/9/9/9/9/4K3L b - 1", "1i1c+"),  # lance takes a rook
    ("8k/9/9/9/b3R4/9/9/9/5K3 b - 1", "5e9e"),  # rook takes a bishop
    ("4k4/7b1/9/9/9/3G5/9/9/4K4 w - 1", "2b6f"),  # White's bishop takes a gold
]


def train(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *RUN, *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=300)
    if check:
        assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def checkpoint(run_dir: Path, name: str = "final.pt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def assert_equal_tensors(a: object, b: object, where: str = "") -> None:
    """Two nested states hold equal tensors (bit for bit) and equal plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_equal_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_equal_tensors(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


# --- the learn step ---------------------------------------------------------------------------

def position_block(games: list[Game], targets: list[np.ndarray], z: float) -> Block:
    """``games``' positions with dense policy targets (2187 each) and the result ``z`` for the side to move."""
    obs, mask = encode(games)
    packed_obs, packed_mask = pack(obs, mask)
    probs = np.concatenate([t[np.flatnonzero(m)] for t, m in zip(targets, mask)]).astype(np.float16)
    n = len(games)
    return Block(packed_obs, packed_mask, mask.sum(axis=1).astype(np.int16), probs,
                 np.array([g.turn is Color.WHITE for g in games], dtype=np.int8), np.zeros(n, np.float32),
                 np.full(n, z, dtype=np.int8))


def one_hot_or_mostly(game: Game, move: str, share: float) -> np.ndarray:
    """A policy target with ``share`` on ``move`` and the rest spread evenly over the other legal moves."""
    mask = encode([game])[1][0]
    target = np.where(mask, (1 - share) / max(mask.sum() - 1, 1), 0.0)
    target[move_to_action(move, game.turn.value)] = share
    return target


def learnt(targets: list[np.ndarray], z: float, updates: int = 300,
           model_cfg: ModelConfig | None = None) -> tuple[list[str], np.ndarray]:
    """A fresh network (the MLP unless ``model_cfg``) after ``updates`` learn steps on the capture positions
    (one minibatch of all of them each): its most likely move and its value in each position, in eval mode."""
    torch.manual_seed(0)
    games = [Game(sfen) for sfen, _ in CAPTURES]
    buffer = ReplayBuffer(64)
    buffer.add(position_block(games, targets, z))
    model = build_model(model_cfg or ModelConfig(name=ModelName.mlp))
    policy = Policy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = GumbelAZConfig(minibatch_size=len(games))
    replay = Replay(buffer, np.arange(len(games))[None])
    for _ in range(updates):
        out = gumbel_az_update(policy, optimizer, replay, cfg, max_grad_norm=0.5)
    kl = out["losses/policy_loss"] - out["losses/policy_entropy_target"]  # cross-entropy less the target's entropy
    assert kl < 0.05 and out["losses/value_loss"] < 0.05, out
    model.eval()
    obs, mask = encode(games)
    actions, _, values = policy.act(torch.from_numpy(obs), torch.from_numpy(mask), temperature=0)
    labels = [{move_to_action(u, g.turn.value): u for u in g.legal_usi()} for g in games]
    return [lab[int(a)] for lab, a in zip(labels, actions)], values.numpy()


def test_the_capture_positions_are_what_they_claim() -> None:
    for sfen, move in CAPTURES:
        game = Game(sfen)
        assert not game.is_in_check() and move in game.legal_usi(), sfen
        pieces = sum(c.isalpha() for c in game.sfen().split()[0])
        game.push(move)
        assert sum(c.isalpha() for c in game.sfen().split()[0]) == pieces - 1 and not game.is_over, sfen
        assert game.sfen().split()[2] != "-", "the captured piece is in hand"


# Slow: 3 x 300 learn steps; the learn step stays in the fast suite through the ResNet's [group] case below.
@pytest.mark.slow
def test_learn_step_makes_the_capture_the_top_move_and_wrong_targets_do_worse() -> None:
    """From random weights, 300 learn steps on the capture positions with an improved-policy-like target (0.7
    on the capture) and the result +1: the capture is the top move and the value positive everywhere.
    One-hot targets of a wrong move (a king move) instead: the capture is nowhere the top move; the
    result's sign wrong (-1): every value negative."""
    games = [Game(sfen) for sfen, _ in CAPTURES]
    captures = [move for _, move in CAPTURES]
    good = [one_hot_or_mostly(g, m, 0.7) for g, (_, m) in zip(games, CAPTURES)]
    moves, values = learnt(good, z=1)
    assert moves == captures
    assert (values > 0.5).all(), values
    wrong_moves = [next(u for u in sorted(g.legal_usi()) if u[0] != "+" and u != m and m[:2] != u[:2])
                   for g, m in zip(games, captures)]
    moves, _ = learnt([one_hot_or_mostly(g, w, 1.0) for g, w in zip(games, wrong_moves)], z=1)
    assert moves == wrong_moves and not any(a == b for a, b in zip(moves, captures))
    _, values = learnt(good, z=-1)
    assert (values < -0.5).all(), values


@pytest.mark.parametrize(("norm", "layer"), [
    (Norm.group, torch.nn.GroupNorm),
    # BatchNorm learning stays fast in test_supervised.py's ResNet [batch] case; slow here.
    pytest.param(Norm.batch, torch.nn.BatchNorm2d, marks=pytest.mark.slow),
])
def test_learn_step_teaches_the_resnet_with_its_normalisation_layers(norm: Norm, layer: type) -> None:
    """The default model (a ResNet; GroupNorm by default, or BatchNorm), smaller: after the learn steps (train
    mode) it plays the captures and values the positions as won in eval mode (BatchNorm: running statistics)."""
    games = [Game(sfen) for sfen, _ in CAPTURES]
    good = [one_hot_or_mostly(g, m, 0.7) for g, (_, m) in zip(games, CAPTURES)]
    resnet = ModelConfig(name=ModelName.resnet, blocks=1, channels=16, value_hidden=16, norm=norm)
    assert any(isinstance(m, layer) for m in build_model(resnet).modules())
    moves, values = learnt(good, z=1, model_cfg=resnet)
    assert moves == [move for _, move in CAPTURES]
    assert (values > 0.5).all(), values


# --- the stored targets -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def selfplay() -> tuple[SelfPlay, list[list[SearchResult]], list[int]]:
    """Self-play of 6 games (4 random opening plies; games 0 and 5 at the same position) for 3 moves: the
    search's result of each move of each game, and the number of games of each search call."""
    torch.manual_seed(0)
    env = VecEnv(6, max_plies=64, opening_plies=4, keep_finished=12)
    env.reset(seed=3)
    state = env.state_dict()
    state["games"][5] = state["games"][0]
    env.load_state_dict(state)
    cfg = GumbelAZConfig(num_steps=3, minibatch_size=4, mate_plies=1)
    sp = SelfPlay(cfg, env, Policy(build_model(ModelConfig(name=ModelName.mlp)).eval()),
                  torch.Generator().manual_seed(0), seed=0)
    results: list[list[SearchResult]] = [[] for _ in range(6)]
    calls: list[int] = []
    run = sp.search.run

    def recorded(games: list[Game]) -> list[SearchResult]:
        out = run(games)
        calls.append(len(games))
        for game, result in zip(games, out):
            results[next(i for i, g in enumerate(env.games) if g is game)].append(result)
        return out

    sp.search.run = recorded  # type: ignore[method-assign]
    sp.collect()
    return sp, results, calls


def test_stored_policy_target_is_the_search_policy_on_labels(selfplay: tuple[SelfPlay, list, list]) -> None:
    """Each position's stored target is ``SearchResult.policy`` over the labels (float16-rounded, 0 on every
    illegal label), sums to 1 once decoded, and the move played is the search's."""
    sp, results, calls = selfplay
    assert calls[:2] == [5, 1]  # the copy of game 0's position was searched in a call of its own
    assert results[0][0].policy != results[5][0].policy  # with its own noise: its own target
    rows = [row for game in sp.pending.games for row in game]
    assert len(rows) == 18 and len(sp.pending) == 18 and [len(r) for r in results] == [3] * 6
    buffer = ReplayBuffer(100)
    buffer.add(Block.concat(rows))
    decoded = buffer.decode(np.arange(18), 0.0, torch.device("cpu"))
    for env_index, game_rows in enumerate(sp.pending.games):
        for step, row in enumerate(game_rows):
            result = results[env_index][step]
            _, mask = unpack(row.obs, row.mask)
            turn = "b" if row.mover[0] == 0 else "w"
            dense = np.zeros(NUM_ACTIONS)
            for usi, p in result.policy.items():
                dense[move_to_action(usi, turn)] = p
            assert np.array_equal(np.flatnonzero(dense > 0), np.flatnonzero(mask[0]))  # every legal label, only
            assert np.array_equal(row.probs, dense[mask[0]].astype(np.float16))  # stored: float16 of the search's
            target = decoded.policy[env_index * 3 + step].numpy()
            assert target.sum() == pytest.approx(1.0, abs=1e-6) and not target[~mask[0]].any()
            assert np.allclose(target, dense, rtol=2e-3, atol=1e-7)
            assert row.value[0] == np.float32(result.value)
    # The moves played were the searches': game 1's record is its opening then the searched moves.
    assert sp.env.games[1].moves[-3:] == [r.move for r in results[1]]


def test_search_groups_keep_copies_of_a_position_apart() -> None:
    a, b = Game(), Game()
    b.push("7g7f")
    assert search_groups([a, a.copy(), b, a.copy(), b.copy()]) == [[0, 2], [1, 4], [3]]


def test_policy_target_refuses_moves_that_are_not_the_positions() -> None:
    game = Game()
    mask = encode([game])[1][0]
    result = SearchResult("7g7f", 0.0, None, ["7g7f"], {}, {}, 1, 1, 0.0, {"7g7f": 1.0})
    with pytest.raises(RuntimeError, match="not the legal moves"):
        policy_target(result, game.turn, mask)


# --- the replay buffer ------------------------------------------------------------------------

def test_buffer_keeps_the_latest_positions_and_decodes_them_in_the_order_drawn(random_positions: list[Game]) -> None:
    running = [g for g in random_positions if not g.is_over][:50]
    obs, mask = encode(running)
    packed = pack(obs, mask)
    assert all(np.array_equal(a, b) for a, b in zip(unpack(*packed), (obs, mask)))
    rng = np.random.default_rng(0)
    targets = [np.where(m, rng.random(NUM_ACTIONS), 0) for m in mask]
    targets = [t / t.sum() for t in targets]
    blocks = [position_block(running[i:i + 10], targets[i:i + 10], z=i // 10 - 2) for i in range(0, 50, 10)]
    buffer = ReplayBuffer(35)
    for block in blocks:
        buffer.add(block)
    assert len(buffer) == 35  # the first 15 positions are gone: position k of the buffer is running[15 + k]
    assert FIXED_BYTES == 1548 and buffer.nbytes() == 35 * FIXED_BYTES + 2 * int(mask[15:].sum())
    index = np.array([34, 0, 7, 7, 20, 5])
    out = buffer.decode(index, 0.25, torch.device("cpu"))
    kept = np.array(index) + 15
    assert torch.equal(out.obs, torch.from_numpy(obs[kept]))
    assert torch.equal(out.legal_mask, torch.from_numpy(mask[kept]))
    expected = np.stack([targets[k].astype(np.float16).astype(np.float64) for k in kept])
    assert np.allclose(out.policy.numpy(), expected / expected.sum(axis=1, keepdims=True), rtol=1e-6, atol=1e-9)
    assert out.value.tolist() == pytest.approx([0.75 * (k // 10 - 2) for k in kept])
    again = ReplayBuffer(35)
    again.load_state_dict(buffer.state_dict())
    assert_equal_tensors(again.state_dict(), buffer.state_dict())


# --- real runs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight updates of 32 moves in one go."""
    run_dir = tmp_path_factory.mktemp("gumbel") / "straight"
    train(run_dir, "training.total_timesteps=256")
    return run_dir


def test_run_writes_checkpoints_and_metrics(straight: Path) -> None:
    records = metrics(straight)
    assert [r["global_step"] for r in records] == list(range(32, 257, 32))
    for record in records:
        assert set(LOSS_KEYS + CHART_KEYS) <= record.keys()
    # Games end at 10 plies: after update 3 (12 moves per game) the buffer holds 80 positions, kept to 64.
    assert [r["charts/minibatches"] for r in records] == [0, 0, 2, 2, 2, 2, 2, 2]  # 32 samples an update
    assert [r["charts/buffer_size"] for r in records] == [0, 0, 64, 64, 64, 64, 64, 64]
    assert all(r["losses/policy_loss"] is None for r in records[:2])  # nothing learnt yet, and said so
    for record in records[2:]:
        assert all(np.isfinite(record[k]) for k in LOSS_KEYS if k != "losses/explained_variance")
        assert 0 <= record["losses/accuracy"] <= 1 and record["losses/policy_entropy_target"] > 0
    assert records[-1]["games/finished_total"] == 16 + 8 and records[-1]["games/draw"] == 1.0
    state = checkpoint(straight)
    assert (straight / "checkpoints" / "last.pt").is_file()
    own = state["algorithm"]
    assert {"buffer", "pending", "search_rng"} <= own.keys() and len(own["pending"]) == 8
    assert sum(len(b["counts"]) for b in own["buffer"]) == 64
    assert sum(len(p["counts"]) for p in own["pending"] if p is not None) == 8 * 2  # each env's 4th game, 2 plies


def test_resumed_run_equals_one_without_a_break(straight: Path, tmp_path: Path) -> None:
    """Stopped after 4 updates (games in progress, a full buffer) and resumed: the same metrics, weights,
    buffer and games in progress, bit for bit."""
    run_dir = tmp_path / "resumed"
    train(run_dir, "training.total_timesteps=128")
    half = checkpoint(run_dir, "last.pt")
    assert len(half["algorithm"]["buffer"]) and any(p is not None for p in half["algorithm"]["pending"])
    train(run_dir, "training.total_timesteps=256")
    keys = ["global_step", *LOSS_KEYS, "charts/buffer_size", "games/finished_total"]
    assert [[r[k] for k in keys] for r in metrics(run_dir)] == [[r[k] for k in keys] for r in metrics(straight)]
    a, b = checkpoint(straight), checkpoint(run_dir)
    for key in ("model", "optimizer", "algorithm", "env", "rng"):
        assert_equal_tensors(a[key], b[key], key)
    assert not torch.equal(a["model"]["policy.weight"], half["model"]["policy.weight"])  # the second half trained


def test_two_gloo_ranks_train_one_run(tmp_path: Path) -> None:
    """torchrun, 2 ranks (gloo): one run dir, 64 moves an update, each rank's own buffer in the checkpoint."""
    run_dir = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "train.py",
           f"hydra.run.dir={run_dir}", *RUN, "training.total_timesteps=192"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = metrics(run_dir)
    assert [r["global_step"] for r in records] == [64, 128, 192]
    assert records[-1]["charts/minibatches"] == 2 and records[-1]["games/finished"] == 16  # both ranks' games
    state = checkpoint(run_dir)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    buffers = [rank["algorithm"]["buffer"] for rank in state["ranks"]]
    assert all(sum(len(b["counts"]) for b in buffer) == 64 for buffer in buffers)
    assert not torch.equal(buffers[0][0]["probs"], buffers[1][0]["probs"])  # each rank its own games
    assert_equal_tensors(state["algorithm"], state["ranks"][0]["algorithm"])


@pytest.mark.parametrize(("override", "named"), [
    ("algorithm.simulations=0", "algorithm.simulations=0: must be >= 2"),
    ("algorithm.gumbel_actions=0", "algorithm.gumbel_actions=0: must be in [1, algorithm.simulations=16]"),
    ("algorithm.gumbel_actions=17", "algorithm.gumbel_actions=17: must be in [1, algorithm.simulations=16]"),
    ("algorithm.minibatch_size=65", "algorithm.minibatch_size=65: must be at most algorithm.buffer_size=64"),
    ("env.workers=2", "env.workers=2: must be 1 with algorithm=gumbel_az"),
    ("model.material_potential=0.03", "model.material_potential=0.03: must be 0 with algorithm=gumbel_az"),
])
def test_bad_settings_are_one_line_before_any_run_dir(tmp_path: Path, override: str, named: str) -> None:
    run_dir = tmp_path / "run"
    assert_clean_error(train(run_dir, override, check=False), named, returncode=2)
    assert not run_dir.exists()
