"""Supervised training from hcpe files: the best move and a value target of each position.

``algorithm=supervised`` (``keisei.config.SupervisedConfig``) reads dlshogi's hcpe rows (position,
eval from the side to move's view, best move, game result; ``keisei.data.hcpe``) straight from the
files (``np.memmap``: the data may be larger than memory) and trains on them inside the training loop
(``keisei.train.algorithm.Supervised``: ``collect`` decodes the next batch, ``learn`` takes one
optimiser step):

- The split: the last ``validation_fraction`` of each file's rows is held out (``HcpeData``). A file
  written game by game keeps a game's positions together, so the split is nearly by game.
- The order: one env step is one training position; position ``p`` of the run is a row of epoch
  ``p // n_train``, and each epoch visits every train row once, in an order that depends on the seed
  and the epoch only (``Order``). So the order needs no state of its own: ``global_step`` is the
  cursor, and a resumed run reads the same positions as a run without a break. The checkpoint keeps
  the files' row counts: a file that grew since the start (label.py still writing it) is read up to
  them, so neither the split nor the order moves (``kept_rows``). Rank ``r`` of a
  distributed run takes its own slice of each global batch.
- The targets: the policy learns the best move (cross-entropy over the legal moves); the value
  learns ``result_weight * z + (1 - result_weight) * (2 * sigmoid(eval / score_scale) - 1)``, ``z``
  the game's result from the side to move's view (``value_target``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from keisei.config import ConfigError, SupervisedConfig, hcpe_files, hcpe_rows, held_out
from keisei.data.hcpe import HCPE, Sample, from_hcpe
from keisei.nn.policy import Policy, logprob_entropy
from keisei.shogi import Color, Encoder, Result, move_to_action
from keisei.train import distributed
from keisei.train.optim import optimizer_step
from keisei.train.rollout import RolloutStats

log = logging.getLogger(__name__)

#: Rows per shuffled chunk: an epoch visits the chunks of the train rows in a random order and each
#: chunk's rows in a random order, so that no permutation of the whole data set is ever held.
CHUNK = 65_536


@dataclass
class Positions:
    """A batch of decoded training positions, on the network's device."""

    obs: torch.Tensor  # uint8 (B, 125, 9, 9)
    legal_mask: torch.Tensor  # bool (B, 2187)
    labels: torch.Tensor  # int64 (B,): the best move's label
    targets: torch.Tensor  # float32 (B,): the value target, side to move's view


def value_target(score: np.ndarray, result: np.ndarray, result_weight: float, score_scale: float) -> np.ndarray:
    """The value targets (float32) of evals ``score`` (centipawns) and game results ``result`` (+1 won,
    0 draw, -1 lost), both from the side to move's view: ``result_weight * result + (1 - result_weight) *
    (2 * sigmoid(score / score_scale) - 1)``, where ``2 * sigmoid(x) - 1 = tanh(x / 2)``."""
    expected = np.tanh(np.asarray(score, dtype=np.float64) / (2 * score_scale))
    return (result_weight * np.asarray(result, dtype=np.float64) + (1 - result_weight) * expected).astype(np.float32)


def mover_result(result: Result, mover: Color) -> int:
    """A game's result from the view of the side ``mover``: 1 it won, 0 a draw, -1 it lost."""
    if result is Result.DRAW:
        return 0
    return 1 if result is Result.win_for(mover) else -1


class Order:
    """Which train row each position of the run is: position ``p`` is in epoch ``p // n``; an epoch
    visits the chunks of ``chunk`` rows in a random order and the rows of each chunk in a random order,
    both drawn from ``(seed, epoch)`` (and the chunk) alone. Memory: one chunk's permutation."""

    def __init__(self, n: int, seed: int, chunk: int = CHUNK) -> None:
        self.n, self.chunk = n, chunk
        self.seed = seed % 2**63  # SeedSequence takes non-negative entropy
        self.chunks = -(-n // chunk)
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def rows(self, start: int, count: int) -> np.ndarray:
        """The train rows (int64) of positions ``start`` to ``start + count - 1``."""
        epochs, index = np.divmod(np.arange(start, start + count, dtype=np.int64), self.n)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            where = epochs == epoch
            out[where] = self._epoch_rows(epoch, index[where])
        return out

    def _epoch_rows(self, epoch: int, index: np.ndarray) -> np.ndarray:
        """The rows at places ``index`` of epoch ``epoch``'s visit."""
        order = self._permutation((0, epoch), self.chunks)
        sizes = np.minimum(self.chunk, self.n - order * self.chunk)  # the last chunk may be short
        ends = np.cumsum(sizes)
        k = np.searchsorted(ends, index, side="right")  # the k-th chunk visited holds place i
        out = np.empty_like(index)
        for visit in np.unique(k).tolist():
            where = k == visit
            chunk = int(order[visit])
            inside = self._permutation((1, epoch, chunk), int(sizes[visit]))
            out[where] = chunk * self.chunk + inside[index[where] - (ends[visit] - sizes[visit])]
        return out

    def _permutation(self, key: tuple[int, ...], size: int) -> np.ndarray:
        """A permutation of ``range(size)`` drawn from ``(seed, *key)``; the latest few are kept."""
        if key not in self._cache:
            if len(self._cache) >= 8:
                self._cache.clear()
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, *key]))
            self._cache[key] = rng.permutation(size)
        return self._cache[key]


class HcpeData:
    """The rows of ``algorithm.train``'s files, each file mapped (``np.memmap``, read as needed): its first
    rows are in the train split, its last ``held_out`` rows in the held-out split. Train row ``i`` and
    held-out row ``j`` count through the files in order."""

    def __init__(self, paths: Sequence[Path], validation_fraction: float, rows: Sequence[int] | None = None) -> None:
        """``rows``: read only the first ``rows[f]`` rows of file ``f`` (a resumed run's files as they were
        when it started, ``kept_rows``); a file now shorter is a ``ConfigError``."""
        self.paths = list(paths)
        counts = kept_rows(self.paths, rows) if rows is not None else [hcpe_rows(path) for path in self.paths]
        self.rows = counts
        self.maps = [np.memmap(p, dtype=HCPE, mode="r")[:n] if n else np.zeros(0, HCPE)
                     for p, n in zip(self.paths, counts)]
        held = np.array([held_out(n, validation_fraction) for n in counts], dtype=np.int64)
        self.train_counts = np.array(counts, dtype=np.int64) - held
        self.held_counts = held
        self.n_train, self.n_held = int(self.train_counts.sum()), int(held.sum())

    def train_rows(self, index: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The hcpe rows of train rows ``index`` and where each is (``<file>: row <n>``)."""
        return self._gather(index, self.train_counts, np.zeros_like(self.train_counts))

    def held_out_rows(self, index: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The hcpe rows of held-out rows ``index`` and where each is."""
        return self._gather(index, self.held_counts, self.train_counts)

    def locate(self, index: np.ndarray, counts: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(file, row in the file) of rows ``index`` of a split whose file ``f`` holds ``counts[f]`` rows
        from its row ``first[f]`` on."""
        ends = np.cumsum(counts)
        files = np.searchsorted(ends, index, side="right")
        return files, first[files] + index - (ends[files] - counts[files])

    def _gather(self, index: np.ndarray, counts: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, list[str]]:
        files, rows = self.locate(np.asarray(index, dtype=np.int64), counts, first)
        out = np.empty(len(rows), dtype=HCPE)
        for f in np.unique(files).tolist():
            where = files == f
            out[where] = self.maps[f][rows[where]]
        return out, [f"{self.paths[f]}: row {r}" for f, r in zip(files.tolist(), rows.tolist())]


def decode(rows: np.ndarray, wheres: Sequence[str], encoder: Encoder, cfg: SupervisedConfig,
           device: torch.device) -> Positions:
    """The positions of hcpe ``rows``: planes and legal masks through the ``encoder`` (the one the env uses),
    the best move's label and the value target. A bad row is a ``ConfigError`` naming its file and row."""
    samples = [_sample(row, where) for row, where in zip(rows, wheres)]
    games = [sample.game() for sample in samples]
    obs, mask = encoder.encode(games)
    labels = np.array([move_to_action(s.move, g.turn.value) for s, g in zip(samples, games)], dtype=np.int64)
    assert mask[np.arange(len(labels)), labels].all(), "a legal move's label is missing from the legal mask"
    results = [mover_result(s.result, g.turn) for s, g in zip(samples, games)]
    targets = value_target(np.array([s.score for s in samples]), np.array(results), cfg.result_weight,
                           cfg.score_scale)
    return Positions(torch.from_numpy(obs.copy()).to(device), torch.from_numpy(mask.copy()).to(device),
                     torch.from_numpy(labels).to(device), torch.from_numpy(targets).to(device))


def _sample(row: np.void, where: str) -> Sample:
    try:
        return from_hcpe(row, where=where)
    except ValueError as exc:
        raise ConfigError(f"algorithm.train: {exc}") from None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside a distributed run)."""
    if distributed.active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def kept_rows(paths: Sequence[Path], rows: Sequence[int]) -> list[int]:
    """``rows``, the row counts of ``paths`` when a run started, checked against the files now: a file
    that grew since keeps its first rows in the run (its new rows are for a new run), one that lost rows
    (or a changed list of files) is a ``ConfigError``: the run's split and order would change."""
    if len(rows) != len(paths):
        raise ConfigError(f"algorithm.train: {len(paths)} hcpe files now, {len(rows)} when this run started: "
                          "resume with the files it started on, or start a new run")
    for path, started in zip(paths, rows):
        now = hcpe_rows(path)
        if now < started:
            raise ConfigError(f"algorithm.train: {path} holds {now} rows, {started} when this run started: "
                              "its split and order would change (restore the file, or start a new run)")
        if now > started:
            log.warning("%s holds %d rows, %d when this run started: the run goes on with its first %d "
                        "(a new run reads them all)", path, now, started, started)
    return list(rows)


class HcpeStream:
    """The batches of a run: the train rows in ``Order`` (rank ``r`` of ``w`` takes its slice of each
    global batch), decoded; and the held-out positions that validation evaluates."""

    def __init__(self, cfg: SupervisedConfig, seed: int, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.seed = seed
        self.data = HcpeData(hcpe_files(cfg.train), cfg.validation_fraction)
        self.order = Order(self.data.n_train, seed)
        self.rank, self.world = rank_and_world()
        self.encoder = Encoder(cfg.batch_size, index=False)

    def resume(self, rows: Sequence[int]) -> None:
        """Read the files as they were when the run started (their first ``rows``, ``kept_rows``): the same
        split and order as a run without a break."""
        self.data = HcpeData(self.data.paths, self.cfg.validation_fraction, rows)
        self.order = Order(self.data.n_train, self.seed)

    def batch(self, global_step: int) -> tuple[Positions, RolloutStats]:
        """This rank's batch of the update that starts at ``global_step`` (positions of all ranks so far)."""
        start = time.perf_counter()
        size = self.cfg.batch_size
        rows = self.order.rows(global_step + self.rank * size, size)
        positions = decode(*self.data.train_rows(rows), self.encoder, self.cfg, self.device)
        return positions, RolloutStats(timing={"data": time.perf_counter() - start})

    def held_out(self) -> Iterator[Positions]:
        """The held-out positions validation evaluates (the first ``validation_positions``), a batch at a
        time (decoded again at each validation: the memory of one batch)."""
        n, size = min(self.cfg.validation_positions, self.data.n_held), self.cfg.batch_size
        for i in range(0, n, size):
            yield decode(*self.data.held_out_rows(np.arange(i, min(i + size, n))), self.encoder, self.cfg,
                         self.device)


def supervised_loss(policy: Policy, batch: Positions, value_coef: float
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of the best moves over the legal moves plus ``value_coef`` times the MSE of the
    values (the network's whole value, shaping potentials included) to the targets; and its parts
    (detached): ``policy_loss``, ``value_loss``, ``entropy``, ``accuracy`` (the top move is the label),
    ``explained_variance`` (of the targets by the values)."""
    logits, values = policy.logits_and_value(batch.obs, batch.legal_mask)
    logprob, entropy = logprob_entropy(logits, batch.labels)
    policy_loss = -logprob.mean()
    value_loss = ((values - batch.targets) ** 2).mean()
    with torch.no_grad():
        accuracy = (logits.argmax(dim=1) == batch.labels).float().mean()
        explained = explained_variance(values, batch.targets)
    parts = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy.mean(),
             "accuracy": accuracy, "explained_variance": explained}
    return policy_loss + value_coef * value_loss, {k: v.detach() for k, v in parts.items()}


def explained_variance(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Var(targets - values) / Var(targets); NaN when the targets do not vary."""
    var = targets.var(correction=0)
    if var == 0:
        return torch.tensor(float("nan"))
    return 1 - (targets - values).var(correction=0) / var


def supervised_update(policy: Policy, optimizer: torch.optim.Optimizer, batch: Positions, cfg: SupervisedConfig,
                      max_grad_norm: float, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One optimiser step on ``batch`` (train mode: BatchNorm learns its statistics; gradients averaged
    over the ranks, clipped); the ``losses/...`` metrics of the batch, measured before the step."""
    policy.model.train()
    loss, parts = supervised_loss(policy, batch, cfg.value_coef)
    optimizer_step(policy.model, optimizer, loss, max_grad_norm, scaler)
    return {f"losses/{k}": float(v) for k, v in parts.items()}


@torch.no_grad()
def validation_metrics(policy: Policy, batches: Iterable[Positions]) -> dict[str, float]:
    """The network's ``val/...`` metrics on held-out positions (eval mode): ``policy_loss``
    (cross-entropy of the best moves), ``value_loss`` (MSE to the targets), ``accuracy`` (share of
    positions whose top move is the best move), ``value_error`` (mean |value - target|)."""
    policy.model.eval()
    sums = dict.fromkeys(("policy_loss", "value_loss", "accuracy", "value_error"), 0.0)
    n = 0
    for batch in batches:
        logits, values = policy.logits_and_value(batch.obs, batch.legal_mask)
        logprob, _ = logprob_entropy(logits, batch.labels)
        error = values - batch.targets
        sums["policy_loss"] -= float(logprob.sum())
        sums["value_loss"] += float((error**2).sum())
        sums["accuracy"] += float((logits.argmax(dim=1) == batch.labels).sum())
        sums["value_error"] += float(error.abs().sum())
        n += batch.labels.shape[0]
    return {f"val/{k}": v / max(n, 1) for k, v in sums.items()}
