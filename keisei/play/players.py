"""Players for matches: random, heuristic and a trained network (USI engines: ``keisei.play.usi_client``).

A player answers ``choose(games)`` with, for each game (whose side to move it plays),
either a USI move string or a ``Termination`` forfeit (an engine that resigned, timed
out or crashed). The referee (``keisei.play.match``) checks every move against the rules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from rsshogi.types import PieceType
from torch import nn

from keisei.config import SearchConfig
from keisei.nn.policy import Policy
from keisei.play.search import Search
from keisei.shogi import Encoder, Game, Termination
from keisei.shogi.features import PIECE_VALUES as SHOGI_PIECE_VALUES

Choice = str | Termination


class Player(ABC):
    name: str

    @abstractmethod
    def choose(self, games: Sequence[Game]) -> list[Choice]:
        """A move (USI) or a forfeit for each game, where this player is to move."""

    def close(self) -> None:  # noqa: B027 (optional hook: most players hold nothing)
        """Release processes or devices (idempotent)."""

    def reseed(self, seed: int) -> None:  # noqa: B027 (optional hook: engines have no seed to set)
        """Restart the player's random choices from ``seed``, as if it had been built with it."""


class RandomPlayer(Player):
    """Uniformly random legal moves."""

    def __init__(self, seed: int = 0, name: str = "random") -> None:
        self.name = name
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, games: Sequence[Game]) -> list[Choice]:
        return [_random_move(game, self.rng) for game in games]


def _random_move(game: Game, rng: np.random.Generator) -> str:
    legal = game.legal_moves
    return legal[int(rng.integers(len(legal)))].to_usi()


# Values for the heuristic player's captures (keisei.shogi.PIECE_VALUES; a king outranks everything).
PIECE_VALUES = {getattr(PieceType, name.upper()): value for name, value in SHOGI_PIECE_VALUES.items()}
PIECE_VALUES[PieceType.KING] = 100


class HeuristicPlayer(Player):
    """A greedy one-ply player, in this order of preference:

    1. a move that mates at once (rsshogi's mate-in-one solver);
    2. the capture of the most valuable piece (``PIECE_VALUES``), made by the least valuable
       capturer;
    3. a promotion;
    4. a random legal move.
    Ties are broken at random. With ``random_moves`` p > 0 it plays a uniformly random legal move
    instead, with probability p at each move: the weaker players between random and itself that
    the rating ladder needs (``keisei.evaluation.ladder``).
    """

    def __init__(self, seed: int = 0, name: str = "heuristic", random_moves: float = 0.0) -> None:
        if not 0 <= random_moves <= 1:
            raise ValueError(f"random_moves must be in [0, 1], got {random_moves}")
        self.name = name
        self.random_moves = random_moves
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, games: Sequence[Game]) -> list[Choice]:
        return [self._choose(game) for game in games]

    def _choose(self, game: Game) -> str:
        if self.random_moves and self.rng.random() < self.random_moves:
            return _random_move(game, self.rng)
        board = game.board
        mate = board.solve_mate_in_one()
        if mate is not None:
            return mate.to_usi()
        best: list[str] = []
        best_key: tuple[int, int] | None = None
        promotions = []
        for move in game.legal_moves:
            if move.is_promotion():
                promotions.append(move.to_usi())
            if move.is_drop():
                continue
            target = board.piece_on(move.to_sq)
            if target.value == 0:
                continue
            key = (PIECE_VALUES[target.piece_type], -PIECE_VALUES[board.piece_on(move.from_sq).piece_type])
            if best_key is None or key > best_key:
                best, best_key = [move.to_usi()], key
            elif key == best_key:
                best.append(move.to_usi())
        pool = best or promotions
        if pool:
            return pool[int(self.rng.integers(len(pool)))]
        return _random_move(game, self.rng)


class AgentPlayer(Player):
    """A network (e.g. from a checkpoint).

    Without ``search`` (or with ``search.simulations`` 0) it plays the policy's move: greedy at
    ``temperature`` 0, else sampled from the policy softened by ``temperature``; all its games in
    one batched forward pass. With ``search.simulations`` > 0 it plays the move of a
    ``keisei.play.search.Search`` (its games searched together, their leaves batched; ``temperature``
    is then unused: ``search.temperature`` applies to the visit counts).
    """

    def __init__(self, model: nn.Module, *, name: str = "agent", temperature: float = 0.0,
                 device: torch.device | str = "cpu", seed: int = 0, search: SearchConfig | None = None) -> None:
        self.name = name
        self.policy = Policy(model)
        self.temperature = temperature
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)  # sampling happens on the CPU
        self.encoder = Encoder(1)
        self.search = (Search(self.policy, search, device=self.device, seed=seed)
                       if search is not None and search.simulations > 0 else None)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        if self.search is not None:
            self.search.reseed(seed)

    @property
    def model(self) -> nn.Module:
        return self.policy.model

    def choose(self, games: Sequence[Game]) -> list[Choice]:
        return self.act(games)[0]

    @torch.no_grad()
    def act(self, games: Sequence[Game]) -> tuple[list[str], list[float]]:
        """The move for each game (which must have legal moves) and the value of its position
        (with search: the searched value of the move)."""
        if not games:
            return [], []
        if self.search is not None:
            results = self.search.run(games)
            return [r.move for r in results], [r.value for r in results]
        if len(games) > self.encoder.capacity:
            self.encoder = Encoder(len(games))
        obs, mask = self.encoder.encode(games)
        actions, values = self.act_encoded(obs, mask)
        moves = [self.encoder.move(i, a).to_usi() for i, a in enumerate(actions.tolist())]
        return moves, values.tolist()

    @torch.no_grad()
    def act_encoded(self, obs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The policy's action labels (int64) and values (float32) for encoded positions (uint8 planes,
        bool legal masks): what ``act`` plays without search, for games stepped elsewhere (e.g. by env
        worker processes, ``keisei.play.match``)."""
        self.policy.model.eval()
        actions, _, values = self.policy.act(torch.from_numpy(obs).to(self.device),
                                             torch.from_numpy(mask).to(self.device),
                                             temperature=self.temperature, generator=self.generator)
        return actions.cpu().numpy(), values.cpu().numpy()
