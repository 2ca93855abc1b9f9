"""Networks (shapes, value range, policy-head label layout) and the checkpoint format."""

from __future__ import annotations

import dataclasses
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from rsshogi.core import Board
from rsshogi.types import Color as RsColor
from rsshogi.types import Square
from torch import nn

from keisei.config import Device, ModelConfig, ModelName, Norm, TrainConfig, to_container
from keisei.nn.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    load_model,
    load_model_state,
    model_state,
    resolve_checkpoint,
    save_checkpoint,
)
from keisei.nn.model import SqueezeExcitation, StemConv, build_model
from keisei.play.players import PIECE_VALUES as PIECE_TYPE_VALUES
from keisei.shogi import ENCODING_VERSION, NUM_ACTIONS, NUM_PLANES, Game, encode, move_to_action, random_opening
from keisei.shogi.features import BOARD_PLANES, PIECE_VALUES, PLANE_NAMES

SMALL_RESNET = ModelConfig(name=ModelName.resnet, blocks=1, channels=8, value_hidden=16)
SMALL_RESNET_SE = ModelConfig(name=ModelName.resnet, blocks=1, channels=8, value_hidden=16, squeeze_excitation=True)
SMALL_MLP = ModelConfig(name=ModelName.mlp, mlp_hidden=16)
SMALL_RESNET_BN = ModelConfig(name=ModelName.resnet, blocks=1, channels=8, value_hidden=16, norm=Norm.batch)
CONFIGS = {"resnet": SMALL_RESNET, "resnet_se": SMALL_RESNET_SE, "resnet_batchnorm": SMALL_RESNET_BN, "mlp": SMALL_MLP}


def _obs(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (batch, NUM_PLANES, 9, 9), generator=gen, dtype=torch.uint8)


def _model(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg)


def _warm_batchnorm(model: nn.Module) -> None:
    """Move BatchNorm running statistics away from their initial values (one train-mode pass)."""
    model.train()
    with torch.no_grad():
        model(_obs(8, seed=99))
    model.eval()


# ---------------------------------------------------------------------------------------------
# build_model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_shapes_value_range_and_determinism(name: str) -> None:
    model = _model(CONFIGS[name]).eval()
    obs = _obs(5)
    with torch.no_grad():
        logits, values = model(obs)
        logits2, values2 = model(obs)
        one_logits, one_value = model(obs[2:3])
    assert logits.shape == (5, NUM_ACTIONS) == (5, 2187)
    assert values.shape == (5,)
    assert logits.dtype == values.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert torch.all(values >= -1) and torch.all(values <= 1)
    assert torch.equal(logits, logits2) and torch.equal(values, values2)
    # eval mode: a row's output does not depend on the rest of the batch
    assert torch.allclose(one_logits[0], logits[2], atol=1e-5)
    assert torch.allclose(one_value[0], values[2], atol=1e-6)
    # different inputs give different outputs (the network reads the planes)
    assert not torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_value_saturates_inside_the_unit_interval(name: str) -> None:
    model = _model(CONFIGS[name]).eval()
    value_linear = [m for m in model.value.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        for sign in (1.0, -1.0):
            value_linear.bias.fill_(sign * 1e3)
            _, values = model(_obs(4))
            # tanh(+-1000) is +-1 exactly in float32: in range, never beyond
            assert torch.all(values.abs() <= 1)
            assert torch.allclose(values, torch.full((4,), sign))


def test_squeeze_excitation_is_built_only_when_asked() -> None:
    plain = _model(SMALL_RESNET)
    se = _model(SMALL_RESNET_SE)
    assert not any(isinstance(m, SqueezeExcitation) for m in plain.modules())
    se_layers = [m for m in se.modules() if isinstance(m, SqueezeExcitation)]
    assert len(se_layers) == SMALL_RESNET_SE.blocks == 1
    # bottleneck = channels / se_reduction = 8 / 4 = 2
    first = se_layers[0].fc[0]
    assert (first.in_features, first.out_features) == (8, 2)
    assert sum(p.numel() for p in se.parameters()) > sum(p.numel() for p in plain.parameters())


def test_mlp_and_resnet_are_different_networks() -> None:
    mlp, resnet = _model(SMALL_MLP), _model(SMALL_RESNET)
    assert not any(isinstance(m, nn.Conv2d) for m in mlp.modules())
    assert any(isinstance(m, nn.Conv2d) for m in resnet.modules())
    # MLP input layer reads all 125 * 81 plane values
    assert mlp.body[1].in_features == NUM_PLANES * 81 == 10125


# ---------------------------------------------------------------------------------------------
# ResNet policy head layout: label = direction * 81 + square, square = file_index * 9 + rank_index
# ---------------------------------------------------------------------------------------------


def _policy_conv(model: nn.Module) -> nn.Conv2d:
    conv = model.policy.out
    assert isinstance(conv, nn.Conv2d)
    return conv


def test_policy_head_has_27_direction_planes() -> None:
    conv = _policy_conv(_model(SMALL_RESNET))
    assert conv.out_channels == 27 == NUM_ACTIONS // 81
    assert conv.kernel_size == (1, 1)


@pytest.mark.parametrize("direction", [0, 9, 20, 26])
def test_policy_bias_of_one_plane_lights_up_that_direction(direction: int) -> None:
    model = _model(SMALL_RESNET).eval()
    conv = _policy_conv(model)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.bias[direction] = 50.0
        logits, _ = model(_obs(3))
    # every square of plane d: labels d*81 .. d*81 + 80 get 50, all others 0
    expected = torch.zeros(NUM_ACTIONS)
    expected[direction * 81:(direction + 1) * 81] = 50.0
    for row in logits:
        assert torch.equal(row, expected)


@pytest.mark.parametrize(("direction", "file_index", "rank_index", "move"), [
    (0, 6, 5, "7g7f"),  # up to 7f: file 7 -> index 6, rank f -> index 5: label 0*81 + 59 = 59
    (20, 4, 4, "P*5e"),  # pawn drop on 5e: 20*81 + (4*9 + 4) = 1660
    (3, 0, 8, None),  # 3*81 + 8 = 251
    (26, 8, 0, None),  # 26*81 + 72 = 2178
])
def test_policy_plane_and_square_give_the_label(direction: int, file_index: int, rank_index: int,
                                                move: str | None) -> None:
    model = _model(SMALL_RESNET).eval()
    conv = _policy_conv(model)
    channels = conv.in_channels

    # Feed the last conv a feature map that is 1 in channel 0 at one (file_index, rank_index) cell.
    def one_hot_features(module, inputs, output):
        x = torch.zeros_like(output)
        x[:, 0, file_index, rank_index] = 1.0
        return x

    handle = model.policy.hidden.register_forward_hook(one_hot_features)
    try:
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[direction, 0, 0, 0] = 7.0
            logits, _ = model(_obs(2))
    finally:
        handle.remove()
    label = direction * 81 + file_index * 9 + rank_index
    assert channels == 8 + 3  # the tower's channels, then the mate planes
    for row in logits:
        assert int(row.argmax()) == label
        assert row[label] == 7.0
        assert int((row != 0).sum()) == 1
    if move is not None:
        assert move_to_action(move, "b") == label


def test_policy_head_reads_the_mate_planes_directly() -> None:
    """With every weight of the last convolution 0 but those from ``mate_in_one_to``, the logits are
    that weight on the labels that arrive on a mating square (all 27 ways), 0 elsewhere, whatever the
    tower computes; ``model.policy_mates=false`` leaves the mate planes to the tower."""
    game = Game("4k4/9/4P4/9/9/9/9/9/4K4 b G 1")  # G*5b mates
    obs = torch.from_numpy(encode([game])[0])
    model = _model(SMALL_RESNET).eval()
    conv = _policy_conv(model)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[:, SMALL_RESNET.channels, 0, 0] = 3.0  # input channel c: mate_in_one_to
        logits, _ = model(obs)
    mate_label = move_to_action("G*5b", "b")
    square = mate_label % 81
    assert square == 4 * 9 + 1  # 5b
    expected = torch.zeros(NUM_ACTIONS)
    expected[square::81] = 3.0
    assert torch.equal(logits[0], expected)
    plain = _model(dataclasses.replace(SMALL_RESNET, policy_mates=False))
    assert _policy_conv(plain).in_channels == SMALL_RESNET.channels


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _train_config(model_cfg: ModelConfig = SMALL_RESNET_SE) -> TrainConfig:
    return TrainConfig(model=model_cfg, device=Device.cpu, seed=3)


def _write_checkpoint(path: Path, model_cfg: ModelConfig = SMALL_RESNET_SE, **extra) -> nn.Module:
    model = _model(model_cfg, seed=1)
    _warm_batchnorm(model)
    save_checkpoint({"config": to_container(_train_config(model_cfg)), "model": model_state(model),
                     "global_step": 1234, **extra}, path)
    return model


def test_save_checkpoint_is_atomic_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoints" / "last.pt"  # parent dirs are created
    _write_checkpoint(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left
    data = load_checkpoint(path)
    assert data["format"] == FORMAT
    assert data["encoding_version"] == ENCODING_VERSION
    assert data["global_step"] == 1234
    # overwrite in place
    save_checkpoint({"config": data["config"], "model": data["model"], "global_step": 5678}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["global_step"] == 5678


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    _write_checkpoint(path)
    before = path.read_bytes()
    with pytest.raises((AttributeError, pickle.PicklingError)):  # a lambda cannot be pickled
        save_checkpoint({"unpicklable": lambda: 0}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path)["global_step"] == 1234


@pytest.mark.parametrize("name", list(CONFIGS))
def test_load_model_rebuilds_the_network_from_the_file_alone(tmp_path: Path, name: str) -> None:
    path = tmp_path / "model.pt"
    original = _write_checkpoint(path, CONFIGS[name]).eval()
    model, cfg = load_model(path)
    assert cfg.model == CONFIGS[name]
    assert cfg.seed == 3 and cfg.device is Device.cpu
    assert type(model) is type(original)
    # every parameter and buffer (BatchNorm running statistics included) comes back
    want_state, got_state = original.state_dict(), model.state_dict()
    assert set(got_state) == set(want_state)
    assert all(torch.equal(got_state[k], v) for k, v in want_state.items())
    if CONFIGS[name].norm is Norm.batch and name != "mlp":
        assert not torch.all(got_state["stem.1.running_mean"] == 0)  # not the initial statistics
    assert not model.training  # eval mode
    obs = _obs(4, seed=11)
    with torch.no_grad():
        want_logits, want_values = original(obs)
        got_logits, got_values = model(obs)
    assert torch.equal(got_logits, want_logits)
    assert torch.equal(got_values, want_values)
    # a freshly initialised network of the same config is not the same function
    with torch.no_grad():
        fresh_logits, _ = _model(CONFIGS[name], seed=2).eval()(obs)
    assert not torch.equal(fresh_logits, want_logits)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's import of torch.jit
def test_compiled_prefix_is_stripped_on_save_and_load() -> None:
    model = _model(SMALL_RESNET, seed=1)
    _warm_batchnorm(model)
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    state = model_state(compiled)
    assert set(state) == set(model.state_dict())  # no prefix
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    prefixed = {f"_orig_mod.{k}": v for k, v in state.items()}
    plain = _model(SMALL_RESNET, seed=2)
    load_model_state(plain, prefixed)  # compiled weights into a plain model
    target = _model(SMALL_RESNET, seed=3)
    load_model_state(torch.compile(target), state)  # plain weights into a compiled model
    obs = _obs(3, seed=4)
    with torch.no_grad():
        want = model.eval()(obs)
        for loaded in (plain, target):
            got = loaded.eval()(obs)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_load_model_state_rejects_a_mismatched_network() -> None:
    state = model_state(_model(SMALL_RESNET))
    with pytest.raises(RuntimeError):
        load_model_state(_model(SMALL_MLP), state)


def test_run_dir_resolves_to_its_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = run / "checkpoints" / "last.pt"
    original = _write_checkpoint(path).eval()
    assert resolve_checkpoint(run) == path
    assert resolve_checkpoint(str(path)) == path
    assert load_checkpoint(run)["global_step"] == 1234
    model, _ = load_model(run)
    obs = _obs(2)
    with torch.no_grad():
        assert torch.equal(model(obs)[0], original(obs)[0])


def _assert_checkpoint_error(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)  # the message names the file
    with pytest.raises(CheckpointError):
        load_model(path)
    return info.value


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    _assert_checkpoint_error(tmp_path / "nope.pt")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    _write_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _assert_checkpoint_error(path)


def test_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"foo": 1}, path)
    err = _assert_checkpoint_error(path)
    assert FORMAT in str(err)
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    _assert_checkpoint_error(other)


def test_random_bytes_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    _assert_checkpoint_error(path)


def test_other_encoding_version(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    _write_checkpoint(path, encoding_version="some-other-encoding")
    err = _assert_checkpoint_error(path)
    assert "some-other-encoding" in str(err)


def test_run_dir_without_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "update_10.pt").write_bytes(b"")  # not last.pt
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(run)
    assert str(run) in str(info.value)
    _assert_checkpoint_error(run)


# --- material potential (potential-based shaping in the value) -------------------------------------

_HAND_NAMES = {"P": "pawn", "L": "lance", "N": "knight", "S": "silver", "G": "gold", "B": "bishop", "R": "rook"}


def _material_balance(game: Game) -> int:
    """The side to move's material minus the opponent's, in pawns, counted from rsshogi's board."""
    board, total = game.board, 0
    for _, piece in board.iter_pieces():
        sign = 1 if piece.color == board.turn else -1
        total += sign * PIECE_TYPE_VALUES[piece.piece_type]  # the kings cancel out
    for colour, sign in ((board.turn, 1), (board.turn.flip(), -1)):
        for letter, count in board.hand_counts(colour).items():
            total += sign * count * PIECE_VALUES[_HAND_NAMES[letter]]
    return total


@pytest.mark.parametrize("bound", [0.5, 0.25])
def test_material_potential_stays_below_a_win(bound: float) -> None:
    """A lopsided position (the opponent's bare king against the whole army, most of it in hand): a
    linear potential of 0.03 a pawn would be over 3, beyond any head in [-1, 1] plus a win's target of
    1, so giving mate would look worse than the position. The potential saturates at
    model.material_potential_max instead, and is odd in the material balance."""
    lopsided = "4k4/9/9/9/9/9/9/9/4K4 b 2R2B4G4S4N4L18P 1"
    games = [Game(lopsided), Game(lopsided.replace(" b ", " w "))]  # the side to move is ahead, behind
    assert [_material_balance(g) for g in games] == [126, -126]
    cfg = ModelConfig(blocks=1, channels=8, material_potential=0.03, material_potential_max=bound)
    torch.manual_seed(0)
    shaped = build_model(cfg).eval()
    obs = torch.from_numpy(encode(games)[0])
    with torch.no_grad():
        potential = shaped.material(obs.float())
    assert potential[0] > 0.99 * bound and potential[0] <= bound
    assert torch.allclose(potential[1], -potential[0])
    with torch.no_grad():
        value = shaped(obs)[1]
    assert value.max() <= 2 * (1 + bound)  # the head's tanh, scaled by 1 + bound, plus the bound


@pytest.mark.parametrize("name", ["resnet", "mlp"])
@pytest.mark.parametrize("reach", [True, False])
def test_value_reaches_the_outcome_against_the_potentials(name: str, reach: bool) -> None:
    """Ahead in material (the potential near its bound, king zone potential too) the value can still
    reach a loss's -1, and behind a win's 1, with model.value_reach: the head spans 1 + the
    potentials' bound. Without it (runs from before it) the value stops short, by the potential."""
    lopsided = "4k4/9/9/9/9/9/9/9/4K4 b 2R2B4G4S4N4L18P 1"  # far ahead: the potential at its bound
    games = [Game(lopsided), Game(lopsided.replace(" b ", " w "))]
    cfg = ModelConfig(name=ModelName(name), blocks=1, channels=8, material_potential=0.03, king_potential=0.01,
                      value_reach=reach)
    model = build_model(cfg).eval()
    last = [m for m in model.value.modules() if isinstance(m, nn.Linear)][-1]
    obs = torch.from_numpy(encode(games)[0])
    reached = []
    with torch.no_grad():
        potential = model.material(obs.float()) + model.king_zone(obs.float())
        assert potential[0] > 0.45 and potential[1] < -0.45
        for sign in (-1, 1):
            last.weight.zero_()
            last.bias.fill_(sign * 1e3)  # the head at its extreme
            reached.append(model(obs)[1])
    lowest_when_ahead, highest_when_behind = reached[0][0].item(), reached[1][1].item()
    if reach:
        assert lowest_when_ahead <= -1 and highest_when_behind >= 1
    else:
        assert lowest_when_ahead > -0.6 and highest_when_behind < 0.6


@pytest.mark.parametrize("plane_norm", [False, True])
def test_value_head_sees_the_level_of_its_plane(plane_norm: bool) -> None:
    """The value head's one-plane convolution is not normalised (model.value_plane_norm false): two
    positions whose plane differs by a scale and an offset get different values. Normalised (runs from
    before), GroupNorm(1, 1) removes both, so they get the same value: what the change fixes."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(blocks=1, channels=8, value_plane_norm=plane_norm)).eval()
    conv = model.value[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0  # the plane is the tower's channel 0
        if conv.bias is not None:
            conv.bias.zero_()
        pattern = torch.rand(1, 8, 9, 9)
        values = model.value(torch.cat([pattern, 3 * pattern + 5])).squeeze(1)
    assert torch.isclose(values[0], values[1], atol=1e-5) == plane_norm


@pytest.mark.parametrize("plane_relu", [False, True])
def test_value_head_plane_cannot_die(plane_relu: bool) -> None:
    """A value plane pushed negative on every square (as Adam at lr 1e-3 did to the default ResNet within
    50 steps on engine-labelled positions): without a ReLU on it (model.value_plane_relu false) the value
    still tells positions apart and the loss still reaches the tower; with one (runs from before), every
    position gets one value and no gradient flows back: the head can never recover."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(blocks=1, channels=8, value_plane_relu=plane_relu))
    with torch.no_grad():
        model.value[0].bias.fill_(-5.0)
    obs = torch.from_numpy(encode([Game(), Game("4k4/9/9/9/9/9/9/9/4K4 b RBGSNLP 1")])[0])
    assert (model.value[0](model.tower(model.stem(obs))) < 0).all()  # every square of both planes
    values = model(obs)[1]
    (values**2).sum().backward()
    grad = model.value[0].weight.grad
    assert torch.isclose(values[0], values[1]) == plane_relu
    assert (grad.abs().sum() == 0) == plane_relu


@pytest.mark.parametrize("name", ["resnet", "mlp"])
def test_material_potential_adds_the_material_balance_to_the_value(name: str) -> None:
    """With model.material_potential=k the value is the head's plus a potential of the side to move's
    material balance M (board and hands, promoted pieces at their own value): bound * tanh(k * M / bound),
    about k * M for small balances; the weights are the same tensors."""
    rng = random.Random(0)
    games = []
    for _ in range(24):
        game = Game(max_plies=400)
        for _ in range(rng.randrange(0, 160)):
            if game.is_over:
                break
            game.push(rng.choice(game.legal_usi()))
        if not game.is_over:
            games.append(game)
    balances = torch.tensor([_material_balance(g) for g in games], dtype=torch.float32)
    assert balances.abs().max() > 5  # captures happened, in both directions
    assert (balances > 0).any() and (balances < 0).any()
    added = _value_added(name, [*games, Game()], material_potential=0.02)
    assert torch.allclose(added[:-1], 0.5 * torch.tanh(0.02 * balances / 0.5), atol=1e-5)
    assert abs(added[-1]) < 1e-6  # the start position is balanced


def _value_added(name: str, games: list[Game], **shaping: float) -> torch.Tensor:
    """What a shaping potential (``shaping``: ModelConfig fields) adds to the value of each game's
    position: the shaped network against the same weights without it, whose logits must agree and
    whose checkpoints have the same keys. The head is left unscaled (``value_reach`` off) in both."""
    torch.manual_seed(0)
    shaped = build_model(ModelConfig(name=ModelName(name), blocks=1, channels=8, value_reach=False, **shaping)).eval()
    plain = build_model(ModelConfig(name=ModelName(name), blocks=1, channels=8, value_reach=False)).eval()
    assert shaped.state_dict().keys() == plain.state_dict().keys()  # checkpoints unchanged
    plain.load_state_dict(shaped.state_dict())
    obs = torch.from_numpy(encode(games)[0])
    with torch.no_grad():
        (logits_s, value_s), (logits_p, value_p) = shaped(obs), plain(obs)
    assert torch.equal(logits_s, logits_p)
    return value_s - value_p


def _zone_attacks(board: Board, king_colour: RsColor) -> int:
    """Attacks on ``king_colour``'s king square and the squares around it by the other side, each
    square's count capped at 3, from rsshogi's own queries."""
    king = board.king_square(king_colour).value
    total = 0
    for sq in range(81):
        if abs(sq // 9 - king // 9) <= 1 and abs(sq % 9 - king % 9) <= 1:
            total += min(3, board.attackers_to_color_current(king_colour.opponent(), Square.from_index(sq)).count())
    return total


@pytest.mark.parametrize("name", ["resnet", "mlp"])
def test_king_potential_counts_the_attacks_on_both_kings_zones(name: str, random_positions: list[Game]) -> None:
    """With model.king_potential=k the value is the head's plus k times (own attacks on the opponent
    king's zone - the opponent's attacks on the own king's zone), counted with rsshogi; the weights are
    the same tensors and the logits unchanged."""
    games = [g for g in random_positions[::10] if not g.is_over]
    expected = torch.tensor([_zone_attacks(g.board, g.board.turn.opponent()) - _zone_attacks(g.board, g.board.turn)
                             for g in games], dtype=torch.float32)
    assert expected.max() >= 3 and expected.min() <= -3  # pressure on both sides among the positions
    assert torch.allclose(_value_added(name, games, king_potential=0.01), 0.01 * expected, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_networks_read_uint8_planes_as_their_floats(name: str) -> None:
    """The encoder's uint8 planes go into the network as they are (the ResNet converts only the
    board planes it convolves): the same logits and values as the same planes given as floats."""
    obs = torch.from_numpy(encode(_varied_games())[0])
    model = build_model(ModelConfig(**{**to_container(CONFIGS[name]), "material_potential": 0.03})).eval()
    with torch.no_grad():
        (logits_u8, value_u8), (logits_f, value_f) = model(obs), model(obs.float())
    assert torch.equal(logits_u8, logits_f)
    assert torch.equal(value_u8, value_f)
    assert value_u8.std() > 0


def _varied_games() -> list[Game]:
    """Positions where every constant plane takes both values: pieces in hand, checks, White to move,
    and a position repeated twice (the kings stepped out and back)."""
    rng = np.random.default_rng(1)
    games = [random_opening(Game(max_plies=400), int(rng.integers(0, 200)), rng) for _ in range(40)]
    repeated = Game()
    for move in ["5i5h", "5a5b", "5h5i", "5b5a"] * 2:
        repeated.push(move)
    return [*games, repeated]


@pytest.mark.parametrize("bias", [False, True])
def test_stem_conv_is_the_plain_convolution_on_real_positions(bias: bool) -> None:
    """StemConv computes the planes from BOARD_PLANES on as one number per position times the kernel's
    footprint on the board: on real observations (hands, check, side to move, repetition all set in
    some) it is nn.Conv2d with the same weights, outputs and gradients alike."""
    obs = torch.from_numpy(encode(_varied_games())[0]).float()
    constant = obs[:, BOARD_PLANES:]
    assert torch.equal(constant, constant[:, :, :1, :1].expand_as(constant))  # what StemConv relies on
    per_plane = constant[:, :, 0, 0]
    for name in ("own_hand_pawn_ge1", "opp_hand_pawn_ge1", "in_check", "white_to_move", "repeated_ge2"):
        column = per_plane[:, PLANE_NAMES.index(name) - BOARD_PLANES]
        assert column.min() == 0 and column.max() == 1, name  # each kind takes both values
    torch.manual_seed(0)
    stem = StemConv(NUM_PLANES, 16, 3, padding=1, bias=bias)
    plain = nn.Conv2d(NUM_PLANES, 16, 3, padding=1, bias=bias)
    plain.load_state_dict(stem.state_dict())
    out_stem, out_plain = stem(obs), plain(obs)
    assert torch.allclose(out_stem, out_plain, atol=1e-5)
    weights = torch.randn_like(out_plain)
    (out_stem * weights).sum().backward()
    (out_plain * weights).sum().backward()
    assert torch.allclose(stem.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        assert torch.allclose(stem.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)
