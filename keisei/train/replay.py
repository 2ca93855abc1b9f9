"""The replay buffer of ``algorithm=gumbel_az``: self-play positions with their search targets, packed.

A position is stored as (bytes, the sizes of ``keisei.shogi``'s arrays):

- the observation planes, which are all 0/1, packed 8 to a byte: 125 x 9 x 9 = 10,125 bits, 1,266 bytes;
- the legal mask, packed: 2,187 bits, 274 bytes;
- the policy target, sparse: one float16 per legal move (2 bytes each), in label order, so the mask
  says which label each belongs to (the legal-move count, int16, 2 bytes, says where a position's
  run of probabilities ends);
- the side to move (int8), the search's value of the move played (float32) and, once its game has
  ended, the game's result from the side to move's view (int8): 6 bytes.

That is 1,548 bytes plus 2 bytes per legal move: about 1.6 KB for a self-play position (32-40 legal
moves on average in the CPU preset's games), at most 2.7 KB (593 legal moves, the most any Shogi
position has). A ``buffer_size`` of 100,000 positions holds about 160 MB, and the checkpoint as much again.

Positions are kept in ``Block`` s (those of the games that ended in one update, or one game's
positions while it is played: ``Pending``); ``ReplayBuffer`` holds the latest ``capacity``
positions, first in first out, and draws uniform samples of them (``decode``: dense tensors).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import numpy as np
import torch

from keisei.shogi import NUM_ACTIONS, OBSERVATION_SHAPE

PLANE_BITS = int(np.prod(OBSERVATION_SHAPE))
#: Bytes of a position besides its policy target's 2 bytes per legal move (see the module docstring).
FIXED_BYTES = -(-PLANE_BITS // 8) + -(-NUM_ACTIONS // 8) + 2 + 1 + 4 + 1


@dataclass
class Block:
    """Positions, row by row (n rows), packed as the module docstring says."""

    obs: np.ndarray  # uint8 (n, 1266): packed planes
    mask: np.ndarray  # uint8 (n, 274): packed legal mask
    counts: np.ndarray  # int16 (n,): legal moves of each position
    probs: np.ndarray  # float16 (sum of counts,): the policy target of each legal label, rows one after another
    mover: np.ndarray  # int8 (n,): side to move (0 Black, 1 White)
    value: np.ndarray  # float32 (n,): the search's value of the move played, side to move's view
    z: np.ndarray  # int8 (n,): the game's result for the side to move (+1, 0, -1); 0 while it runs

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def offsets(self) -> np.ndarray:
        """int64 (n + 1,): row i's probabilities are ``probs[offsets[i]:offsets[i + 1]]``."""
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])

    def rows(self, start: int, stop: int) -> Block:
        """Rows ``start:stop``, copied (the rest of this block's memory is not kept alive)."""
        offsets = self.offsets
        return Block(self.obs[start:stop].copy(), self.mask[start:stop].copy(), self.counts[start:stop].copy(),
                     self.probs[offsets[start]:offsets[stop]].copy(), self.mover[start:stop].copy(),
                     self.value[start:stop].copy(), self.z[start:stop].copy())

    def nbytes(self) -> int:
        """Bytes of the arrays: ``FIXED_BYTES`` a position and 2 a legal move."""
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors for a checkpoint (loaded with ``weights_only``)."""
        return {f.name: torch.from_numpy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Block:
        return cls(**{f.name: state[f.name].cpu().numpy().copy() for f in fields(cls)})

    @classmethod
    def concat(cls, blocks: list[Block]) -> Block:
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in blocks]) for f in fields(cls)})


def pack(obs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planes uint8 (n, 125, 9, 9) of 0/1 and masks bool (n, 2187), packed 8 to a byte per row."""
    n = obs.shape[0]
    return np.packbits(obs.reshape(n, -1), axis=1), np.packbits(mask, axis=1)


def unpack(obs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ``pack`` packed: planes uint8 (n, 125, 9, 9) and masks bool (n, 2187)."""
    n = obs.shape[0]
    planes = np.unpackbits(obs, axis=1, count=PLANE_BITS).reshape(n, *OBSERVATION_SHAPE)
    return planes, np.unpackbits(mask, axis=1, count=NUM_ACTIONS).view(np.bool_)


class Pending:
    """The positions of each env's game in progress, waiting for its result."""

    def __init__(self, num_envs: int) -> None:
        self.games: list[list[Block]] = [[] for _ in range(num_envs)]

    def record(self, step: Block) -> None:
        """Row ``i`` of ``step`` is the position just searched in env ``i``."""
        for i, game in enumerate(self.games):
            game.append(step.rows(i, i + 1))

    def finish(self, i: int, winner: int | None) -> Block:
        """The positions of env ``i``'s game, which ``winner`` (0 Black, 1 White, None: a draw) won, with
        their results; the env starts a new game."""
        block = Block.concat(self.games[i])
        self.games[i] = []
        if winner is not None:
            block.z = np.where(block.mover == winner, 1, -1).astype(np.int8)
        return block

    def __len__(self) -> int:
        return sum(len(game) for game in self.games)

    def state_dict(self) -> list[dict[str, torch.Tensor] | None]:
        return [Block.concat(game).state_dict() if game else None for game in self.games]

    def load_state_dict(self, state: list[dict[str, torch.Tensor] | None]) -> None:
        if len(state) != len(self.games):
            raise ValueError(f"the checkpoint holds the games of {len(state)} envs, this run has {len(self.games)}")
        self.games = [[] for _ in state]
        for game, saved in zip(self.games, state):
            if saved is not None:
                block = Block.from_state(saved)
                game.extend(block.rows(k, k + 1) for k in range(len(block)))


@dataclass
class Targets:
    """A minibatch of decoded positions, on the network's device."""

    obs: torch.Tensor  # uint8 (B, 125, 9, 9)
    legal_mask: torch.Tensor  # bool (B, 2187)
    policy: torch.Tensor  # float32 (B, 2187): the search's improved policy, 0 on illegal labels, rows sum to 1
    value: torch.Tensor  # float32 (B,): (1 - w) * z + w * the search's value


class ReplayBuffer:
    """The latest ``capacity`` positions of finished games, oldest first, in blocks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: deque[Block] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, block: Block) -> None:
        """Append ``block``'s positions; the oldest go beyond ``capacity``."""
        if len(block):
            self.blocks.append(block)
            self.size += len(block)
        while self.size > self.capacity:
            oldest = self.blocks[0]
            drop = min(len(oldest), self.size - self.capacity)
            if drop == len(oldest):
                self.blocks.popleft()
            else:
                self.blocks[0] = oldest.rows(drop, len(oldest))
            self.size -= drop

    def nbytes(self) -> int:
        """Bytes of the positions held."""
        return sum(block.nbytes() for block in self.blocks)

    def sample(self, count: int, generator: torch.Generator) -> np.ndarray:
        """``count`` positions (their indices, oldest 0) drawn uniformly with replacement by ``generator``."""
        if count == 0:  # (randint refuses an empty buffer even for no samples)
            return np.zeros(0, dtype=np.int64)
        return torch.randint(self.size, (count,), generator=generator).numpy()

    def decode(self, index: np.ndarray, root_value_weight: float, device: torch.device) -> Targets:
        """The positions ``index`` (from ``sample``), in that order, unpacked into tensors on ``device``."""
        starts = np.cumsum([0] + [len(b) for b in self.blocks])
        which = np.searchsorted(starts, index, side="right") - 1
        parts, places = [], []
        for b in np.unique(which).tolist():
            where = np.flatnonzero(which == b)
            parts.append(_reorder(self.blocks[b], index[where] - starts[b]))
            places.append(where)
        block = _reorder(Block.concat(parts), np.argsort(np.concatenate(places)))
        obs, mask = unpack(block.obs, block.mask)
        policy = np.zeros(mask.shape, dtype=np.float32)
        policy[mask] = block.probs  # row by row, each in label order: the order the probabilities are stored in
        policy /= policy.sum(axis=1, keepdims=True)
        value = (1 - root_value_weight) * block.z.astype(np.float32) + root_value_weight * block.value
        return Targets(*(torch.from_numpy(a).to(device) for a in (obs, mask, policy, value.astype(np.float32))))

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        return [block.state_dict() for block in self.blocks]

    def load_state_dict(self, state: list[dict[str, torch.Tensor]]) -> None:
        self.blocks, self.size = deque(), 0
        for saved in state:
            self.add(Block.from_state(saved))


def _reorder(block: Block, index: np.ndarray) -> Block:
    """Rows ``index`` of ``block`` (any order, repeats allowed), gathered into a new block."""
    offsets = block.offsets
    counts = block.counts[index].astype(np.int64)
    ends = np.cumsum(counts)
    # The probabilities of row index[k] are probs[offsets[index[k]] + j] for j < counts[k].
    within = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - counts, counts)
    probs = block.probs[np.repeat(offsets[index], counts) + within]
    return Block(block.obs[index], block.mask[index], block.counts[index], probs, block.mover[index],
                 block.value[index], block.z[index])

