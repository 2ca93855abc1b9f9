"""Policy/value networks: observation planes in, 2187 policy logits and a value out.

The value is from the side to move's view: the head's output in [-1, 1] (with ``model.value_reach``,
scaled to +-(1 + the potentials' bound), ``value_scale``), plus, with
``model.material_potential`` k > 0, a potential of about k times the material balance in pawns read
off the input planes, saturating at +-``model.material_potential_max`` (``MaterialPotential``), and
with ``model.king_potential`` k > 0, k times the attacks on the opponent king's zone minus those on
the own king's (``KingZonePotential``).
The ResNet's policy head is a 1x1 convolution to 27 planes, one per label direction, so that output
plane ``d`` at square ``s`` is exactly label ``d * 81 + s`` (see docs/observations.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from keisei.config import ModelConfig, ModelName, Norm
from keisei.shogi import NUM_ACTIONS, NUM_PLANES
from keisei.shogi.features import BOARD_PLANES, MATE_PLANE, PLANE_NAMES, material_weights

NUM_DIRECTIONS = NUM_ACTIONS // 81  # 27
KING_ZONE_MAX_COUNT = 27  # a king's zone is 9 squares, each counted up to 3 attacks (KingZonePotential)


def split_planes(planes: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The observation as the network reads it: the board planes ``[0, BOARD_PLANES)`` as ``dtype``,
    channels-last (B, 65, 9, 9), and the value of each plane that is constant over the board (B, 60).

    From the encoded uint8 planes (or floats) in one strided conversion: converting all 125 planes
    to float first, then the board to channels-last, cost a fifth of the forward pass on the CPU.
    """
    return (planes[:, :BOARD_PLANES].to(dtype, memory_format=torch.channels_last),
            planes[:, BOARD_PLANES:, 0, 0].to(dtype))


class MaterialPotential(nn.Module):
    """A potential of the material balance of each position (side to move's view, in pawns):
    ``bound * tanh(coef * material / bound)``, about ``coef`` per pawn for small balances and never
    beyond ``+-bound``.

    Added to the value, it is potential-based reward shaping (Ng et al. 1999) with this potential
    Phi: the TD errors of GAE with the value ``head + Phi`` are exactly those of the shaped rewards
    ``gamma * Phi(s') - Phi(s)`` with the value ``head`` (Phi of a finished game is 0: a terminal
    move's target is the outcome alone), so the optimal policy is unchanged while a capture shows in
    the advantages at once. The bound keeps the potential below a win's 1: a linear potential grows
    past 1 with a large lead (0.03 a pawn: 3.8 for the whole army), where giving mate (target 1) would
    look worse than the position and every further capture better. The bound alone does not let
    ``head + Phi`` reach the outcome when Phi points the other way (ahead in material, lost: with a
    head in [-1, 1] and Phi = 0.5 the lowest value is -0.5); ``model.value_reach`` scales the head by
    1 + the potentials' bound so that it does (``value_scale``). Nothing is learnt here (``coef`` 0: none at all).
    """

    def __init__(self, coef: float, bound: float) -> None:
        super().__init__()
        self.coef = coef
        self.bound = bound
        self.register_buffer("weights", torch.from_numpy(material_weights()) * coef, persistent=False)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        if not self.coef:
            return self.weights.new_zeros(planes.shape[0])
        board, constant = split_planes(planes, self.weights.dtype)
        squares = planes.shape[2] * planes.shape[3]
        counts = torch.cat([board.sum(dim=(2, 3)), constant * squares], dim=1)  # each plane's sum
        return self.bound * torch.tanh(counts @ self.weights / self.bound)


class KingZonePotential(nn.Module):
    """A potential of the attacks on the two kings' zones (side to move's view): ``coef`` times the
    number of own attacks on the opponent king's zone minus the opponent's attacks on the own king's
    zone. A king's zone is its square and the (up to) 8 around it; the attacks on a square are counted
    up to 3 (the ``*_attackers_ge1/2/3`` planes), so each side's count is in [0, 27].

    Added to the value like ``MaterialPotential``, it is potential-based shaping: bringing pieces to
    bear on the opponent king, and keeping them off one's own, shows in the advantages at once, while
    the optimal policy is unchanged. Nothing is learnt here (``coef`` 0: none at all)."""

    def __init__(self, coef: float) -> None:
        super().__init__()
        self.coef = coef
        index = PLANE_NAMES.index
        self.kings = (index("own_king"), index("opp_king"))
        self.attackers = (index("own_attackers_ge1"), index("opp_attackers_ge1"))

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        if not self.coef:
            return planes.new_zeros(planes.shape[0], dtype=torch.float32)
        own_king, opp_king = self.kings
        own, opp = self.attackers
        kings = planes[:, [own_king, opp_king]].float()
        zones = F.max_pool2d(kings, 3, stride=1, padding=1)  # each king's square and its neighbours
        own_attacks = planes[:, own:own + 3].float().sum(1)  # 0-3 per square
        opp_attacks = planes[:, opp:opp + 3].float().sum(1)
        pressure = (zones[:, 1] * own_attacks).sum((1, 2)) - (zones[:, 0] * opp_attacks).sum((1, 2))
        return self.coef * pressure


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class StemConv(nn.Conv2d):
    """The first convolution, computed in two parts: the same function, parameters and checkpoint keys
    as ``nn.Conv2d`` on real observations, at about half its cost.

    Input planes ``[BOARD_PLANES, NUM_PLANES)`` are constant over the board (one number per position:
    hands, check, side to move, repetition). A 3x3 convolution of a constant plane is that number
    times the sum of the kernel taps that land on the board, which depends on the square only
    (corners and edges see fewer taps). So those 60 planes cost one small matrix product per position
    (their footprints, computed once per call from the weights) instead of a convolution over 60
    channels: on the 2x32 ResNet the stem is the largest layer (125 input channels against 32).
    Its output is channels-last (NHWC), the layout in which oneDNN's CPU convolutions of the tower
    run fastest; the layers after it keep that layout. ``benchmarks/stem.py`` measures the gain
    (docs/training.md).
    """

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        """``planes``: the observations as encoded (uint8) or as floats."""
        board_planes, constant = split_planes(planes, self.weight.dtype)
        board = F.conv2d(board_planes, self.weight[:, :BOARD_PLANES], self.bias, padding=self.padding)
        k = self.in_channels - BOARD_PLANES
        taps = self.weight[:, BOARD_PLANES:].transpose(0, 1).reshape(k * self.out_channels, 1,
                                                                       *self.kernel_size)
        ones = self.weight.new_ones(1, k, *planes.shape[2:])
        footprints = F.conv2d(ones, taps, padding=self.padding, groups=k)  # (1, k * out, 9, 9)
        spread = constant @ footprints.view(k, -1)
        return board + spread.view_as(board)


def conv_norm(cin: int, cout: int, kernel: int, norm: Norm, conv_type: type[nn.Conv2d] = nn.Conv2d
              ) -> list[nn.Module]:
    """A convolution followed by its normalisation: GroupNorm (groups of 8 channels where they divide),
    BatchNorm, or none (then the convolution has a bias)."""
    conv = conv_type(cin, cout, kernel, padding=kernel // 2, bias=norm is Norm.none)
    if norm is Norm.batch:
        return [conv, nn.BatchNorm2d(cout)]
    if norm is Norm.group:
        return [conv, nn.GroupNorm(cout // 8 if cout % 8 == 0 else 1, cout)]
    return [conv]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, se_reduction: int | None, norm: Norm) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_norm(channels, channels, 3, norm), nn.ReLU(inplace=True),
                                  *conv_norm(channels, channels, 3, norm))
        self.se = SqueezeExcitation(channels, se_reduction) if se_reduction else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.se(self.body(x)))


class PolicyHead(nn.Module):
    """Per square, the logits of the 27 ways to arrive there, from the tower's features at that square;
    with ``mates``, also from the input's three mate planes at that square (``mate_in_one_to``,
    ``_from``, ``opp_mate_in_one_to``), fed to the last 1x1 convolution past the tower: a move onto a
    square where a mate lands is a few weights away from its logit, instead of a signal the tower has
    to carry through every layer (docs/training.md)."""

    def __init__(self, channels: int, norm: Norm, mates: bool) -> None:
        super().__init__()
        self.hidden = nn.Sequential(*conv_norm(channels, channels, 1, norm), nn.ReLU(inplace=True))
        self.mates = mates
        self.out = nn.Conv2d(channels + 3 * mates, NUM_DIRECTIONS, 1)

    def forward(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        if self.mates:
            mates = obs[:, MATE_PLANE:MATE_PLANE + 3].to(h.dtype, memory_format=torch.channels_last)
            h = torch.cat([h, mates], 1)
        return self.out(h).flatten(1)


class ResNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.channels
        norm = cfg.norm
        self.stem = nn.Sequential(*conv_norm(NUM_PLANES, c, 3, norm, StemConv), nn.ReLU(inplace=True))
        se = cfg.se_reduction if cfg.squeeze_excitation else None
        self.tower = nn.Sequential(*(ResidualBlock(c, se, norm) for _ in range(cfg.blocks)))
        self.policy = PolicyHead(c, norm, cfg.policy_mates)
        plane = conv_norm(c, 1, 1, norm) if cfg.value_plane_norm else [nn.Conv2d(c, 1, 1)]
        # Without a ReLU on the one plane (model.value_plane_relu=false) it cannot die: a ReLU'd plane
        # whose 81 squares all turn negative gives one value for every position, and no gradient back.
        plane_act = nn.ReLU(inplace=True) if cfg.value_plane_relu else nn.Identity()
        self.value = nn.Sequential(*plane, plane_act, nn.Flatten(),
                                   nn.Linear(81, cfg.value_hidden), nn.ReLU(inplace=True),
                                   nn.Linear(cfg.value_hidden, 1), nn.Tanh())
        self.material = MaterialPotential(cfg.material_potential, cfg.material_potential_max)
        self.king_zone = KingZonePotential(cfg.king_potential)
        self.value_scale = value_scale(cfg)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tower(self.stem(obs))  # the stem converts the uint8 planes it convolves
        head = self.value_scale * self.value(x).squeeze(1)
        return self.policy(x, obs), head + self.material(obs) + self.king_zone(obs)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.mlp_hidden
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(NUM_PLANES * 81, h), nn.ReLU(inplace=True),
                                  nn.Linear(h, h), nn.ReLU(inplace=True))
        self.policy = nn.Linear(h, NUM_ACTIONS)
        self.value = nn.Sequential(nn.Linear(h, 1), nn.Tanh())
        self.material = MaterialPotential(cfg.material_potential, cfg.material_potential_max)
        self.king_zone = KingZonePotential(cfg.king_potential)
        self.value_scale = value_scale(cfg)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        planes = obs.float()
        x = self.body(planes)
        head = self.value_scale * self.value(x).squeeze(1)
        return self.policy(x), head + self.material(planes) + self.king_zone(planes)


def potential_bound(cfg: ModelConfig) -> float:
    """The largest |material + king-zone potential| of any position: the material's saturation
    bound and 27 attacked zone squares' worth of the king-zone coefficient."""
    material = cfg.material_potential_max if cfg.material_potential else 0.0
    return material + KING_ZONE_MAX_COUNT * cfg.king_potential


def value_scale(cfg: ModelConfig) -> float:
    """The value head's range: with ``model.value_reach``, ``1 + potential_bound`` so that head plus
    potentials can reach a win's 1 and a loss's -1 from any position; else 1 (runs from before it)."""
    return 1.0 + potential_bound(cfg) if cfg.value_reach else 1.0


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network described by ``cfg``: ``forward(obs (B, 125, 9, 9)) -> (logits (B, 2187), value (B,))``."""
    return {ModelName.resnet: ResNet, ModelName.mlp: MLP}[cfg.name](cfg)

