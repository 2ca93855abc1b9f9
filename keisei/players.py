"""Players for matches: random, heuristic, a trained network, and any USI engine.

A player answers ``choose(games)`` with, for each game (whose side to move it plays),
either a USI move string or a ``Termination`` forfeit (an engine that resigned, timed
out or crashed). The referee (``keisei.match``) checks every move against the rules.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rsshogi.types import PieceType
from torch import nn

from keisei.model import masked_logits
from keisei.shogi import NUM_ACTIONS, Game, Termination, _native, encode_observations
from keisei.shogi.actions import label_table

Choice = str | Termination


class Player(ABC):
    name: str

    @abstractmethod
    def choose(self, games: Sequence[Game]) -> list[Choice]:
        """A move (USI) or a forfeit for each game, where this player is to move."""

    def close(self) -> None:  # noqa: B027 (optional hook: most players hold nothing)
        """Release processes or devices (idempotent)."""


class RandomPlayer(Player):
    """Uniformly random legal moves."""

    def __init__(self, seed: int = 0, name: str = "random") -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)

    def choose(self, games: Sequence[Game]) -> list[Choice]:
        return [_random_move(game, self.rng) for game in games]


def _random_move(game: Game, rng: np.random.Generator) -> str:
    legal = game._legal
    return legal[int(rng.integers(len(legal)))].to_usi()


# Values for the heuristic player's captures (promoted minor pieces count as golds).
PIECE_VALUES = {PieceType.PAWN: 1, PieceType.LANCE: 3, PieceType.KNIGHT: 4, PieceType.SILVER: 5,
                PieceType.GOLD: 6, PieceType.BISHOP: 8, PieceType.ROOK: 10, PieceType.PRO_PAWN: 6,
                PieceType.PRO_LANCE: 6, PieceType.PRO_KNIGHT: 6, PieceType.PRO_SILVER: 6,
                PieceType.HORSE: 10, PieceType.DRAGON: 12, PieceType.KING: 100}


class HeuristicPlayer(Player):
    """A greedy one-ply player, in this order of preference:

    1. a move that mates at once (rsshogi's mate-in-one solver);
    2. the capture of the most valuable piece (``PIECE_VALUES``), made by the least valuable
       capturer;
    3. a promotion;
    4. a random legal move.
    Ties are broken at random.
    """

    def __init__(self, seed: int = 0, name: str = "heuristic") -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)

    def choose(self, games: Sequence[Game]) -> list[Choice]:
        return [self._choose(game) for game in games]

    def _choose(self, game: Game) -> str:
        board = game._board
        mate = board.solve_mate_in_one()
        if mate is not None:
            return mate.to_usi()
        best: list[str] = []
        best_key: tuple[int, int] | None = None
        promotions = []
        for move in game._legal:
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
    """A network (e.g. from a checkpoint): greedy at ``temperature`` 0, else sampling
    from the policy softened by ``temperature``; all its games in one batched forward pass."""

    def __init__(self, model: nn.Module, *, name: str = "agent", temperature: float = 0.0,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.name = name
        self.model = model
        self.temperature = temperature
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)  # sampling happens on the CPU

    def choose(self, games: Sequence[Game]) -> list[Choice]:
        return self.act(games)[0]

    @torch.no_grad()
    def act(self, games: Sequence[Game]) -> tuple[list[str], list[float]]:
        """The move for each game (which must have legal moves) and the value of its position."""
        if not games:
            return [], []
        n = len(games)
        obs = torch.from_numpy(encode_observations([g.sfen() for g in games])).to(self.device)
        masks = np.zeros((n, NUM_ACTIONS), dtype=np.bool_)
        index = np.zeros((n, NUM_ACTIONS), dtype=np.int16)
        turns = np.array([0 if g.turn == "b" else 1 for g in games], dtype=np.uint8)
        _native.fill_masks([g._legal for g in games], turns, label_table(), masks, index)
        self.model.eval()
        logits, values = self.model(obs)
        logits = masked_logits(logits, torch.from_numpy(masks).to(self.device))
        if self.temperature > 0:
            probs = torch.softmax(logits / self.temperature, dim=1)
            actions = torch.multinomial(probs.cpu(), 1, generator=self.generator).squeeze(1)
        else:
            actions = logits.argmax(dim=1)
        moves = [game._legal[index[i, a]].to_usi() for i, (game, a) in enumerate(zip(games, actions.tolist()))]
        return moves, values.float().tolist()


class EngineError(RuntimeError):
    """A USI engine that cannot be started or does not complete the handshake."""


class UsiPlayer(Player):
    """Any USI engine as a subprocess. One process plays the games one position at a time.

    The time per move is ``movetime_ms`` (``go movetime``), ``byoyomi_ms`` (``go btime 0
    wtime 0 byoyomi``) or a fixed ``depth``; an engine silent for ``timeout_s`` beyond
    that forfeits the game (``TIMEOUT``), one that dies or breaks the protocol forfeits it
    (``CRASH``) and is restarted for the next game, ``bestmove resign`` is a resignation.
    """

    def __init__(self, command: str, *, args: Sequence[str] = (), options: dict[str, Any] | None = None,
                 movetime_ms: int | None = None, byoyomi_ms: int | None = None, depth: int | None = None,
                 timeout_s: float = 5.0, name: str | None = None) -> None:
        self.command = command
        self.args = list(args)
        self.options = dict(options or {})
        self.timeout_s = timeout_s
        if depth is not None:
            self.go, self.think_s = f"go depth {depth}", 0.0
        elif byoyomi_ms is not None:
            self.go, self.think_s = f"go btime 0 wtime 0 byoyomi {byoyomi_ms}", byoyomi_ms / 1000
        else:
            ms = movetime_ms if movetime_ms is not None else 100
            self.go, self.think_s = f"go movetime {ms}", ms / 1000
        self.name = name or Path(command).name
        self.engine_name: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._start()

    # --- process management ---------------------------------------------------------
    def _start(self) -> None:
        try:
            self._proc = subprocess.Popen(
                [self.command, *self.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
        except OSError as exc:
            raise EngineError(f"USI engine {self.command!r} cannot be started: {exc.strerror or exc}") from None
        self._lines = queue.Queue()
        threading.Thread(target=self._read, args=(self._proc, self._lines), daemon=True).start()
        try:
            self._send("usi")
            for line in self._until("usiok", self.timeout_s + 5):
                if line.startswith("id name "):
                    self.engine_name = line[8:].strip()
            for key, value in self.options.items():
                value = str(value).lower() if isinstance(value, bool) else value
                self._send(f"setoption name {key} value {value}")
            self._send("isready")
            list(self._until("readyok", self.timeout_s + 30))
            self._send("usinewgame")
        except (TimeoutError, BrokenPipeError, EOFError) as exc:
            self.close()
            reason = exc or type(exc).__name__
            raise EngineError(f"USI engine {self.command!r} failed the handshake: {reason}") from None

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)  # end of output: the engine exited

    def _send(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def _until(self, token: str, timeout: float):
        """Yield lines up to and including the first that starts with ``token``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {token!r} within {timeout:.1f}s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError(f"no {token!r} within {timeout:.1f}s") from None
            if line is None:
                raise EOFError("the engine exited")
            yield line
            if line.split(" ", 1)[0] == token:
                return

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                proc.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    # --- playing ----------------------------------------------------------------------
    def choose(self, games: Sequence[Game]) -> list[Choice]:
        return [self._move(game) for game in games]

    def _move(self, game: Game) -> Choice:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            try:
                self._start()
            except EngineError:
                return Termination.CRASH
        try:
            self._send(f"position {game.to_usi_position()}")
            self._send(self.go)
            *_, last = self._until("bestmove", self.think_s + self.timeout_s)
        except TimeoutError:
            self.close()  # a silent engine may never answer again: start afresh for the next move
            return Termination.TIMEOUT
        except (EOFError, BrokenPipeError, OSError):
            self.close()
            return Termination.CRASH
        parts = last.split()
        if len(parts) < 2:
            return Termination.CRASH
        if parts[1] == "resign":
            return Termination.RESIGN
        return parts[1]  # "win" or any other word is refused by the referee as an illegal move
