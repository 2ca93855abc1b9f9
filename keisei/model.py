"""Policy/value networks: observation planes in, 2187 policy logits and a value out.

The value is in [-1, 1] from the side to move's view. The ResNet's policy head is a
1x1 convolution to 27 planes, one per label direction, so that output plane ``d`` at
square ``s`` is exactly label ``d * 81 + s`` (see docs/observations.md).
"""

from __future__ import annotations

import torch
from torch import nn

from keisei.config import ModelConfig, ModelName
from keisei.shogi import NUM_ACTIONS, NUM_PLANES

NUM_DIRECTIONS = NUM_ACTIONS // 81  # 27


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, se_reduction: int | None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )
        self.se = SqueezeExcitation(channels, se_reduction) if se_reduction else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.se(self.body(x)))


class ResNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.stem = nn.Sequential(nn.Conv2d(NUM_PLANES, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True))
        se = cfg.se_reduction if cfg.squeeze_excitation else None
        self.tower = nn.Sequential(*(ResidualBlock(c, se) for _ in range(cfg.blocks)))
        self.policy = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                    nn.Conv2d(c, NUM_DIRECTIONS, 1))
        self.value = nn.Sequential(nn.Conv2d(c, 1, 1, bias=False), nn.BatchNorm2d(1), nn.ReLU(inplace=True),
                                   nn.Flatten(), nn.Linear(81, cfg.value_hidden), nn.ReLU(inplace=True),
                                   nn.Linear(cfg.value_hidden, 1), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tower(self.stem(obs.float()))
        return self.policy(x).flatten(1), self.value(x).squeeze(1)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.mlp_hidden
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(NUM_PLANES * 81, h), nn.ReLU(inplace=True),
                                  nn.Linear(h, h), nn.ReLU(inplace=True))
        self.policy = nn.Linear(h, NUM_ACTIONS)
        self.value = nn.Sequential(nn.Linear(h, 1), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(obs.float())
        return self.policy(x), self.value(x).squeeze(1)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network described by ``cfg``: ``forward(obs (B, 119, 9, 9)) -> (logits (B, 2187), value (B,))``."""
    return {ModelName.resnet: ResNet, ModelName.mlp: MLP}[cfg.name](cfg)

