"""Keisei: train Shogi agents by PPO self-play."""

__version__ = "0.1.0"
