"""Any USI engine as a match player: ``UsiPlayer`` runs the engine as a subprocess and speaks USI to it.

The other side of the protocol, a Keisei network serving USI, is ``keisei.play.usi_engine``.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keisei.play.players import Choice, Player
from keisei.shogi import Game, Termination

#: A score of ``MATE_SCORE - n`` says the side to move mates in n plies (negative: is mated in n).
MATE_SCORE = 30_000


class EngineError(RuntimeError):
    """A USI engine that cannot be started, does not complete the handshake, or fails an analysis."""


@dataclass(frozen=True)
class Line:
    """One line of an engine's analysis: its first ``move`` (USI) and ``score`` in centipawns from the
    side to move's view (a mate: ``MATE_SCORE`` minus its plies, negative when the side to move is mated)."""

    move: str
    score: int


def parse_score(tokens: Sequence[str]) -> int | None:
    """The score of an ``info`` line's tokens (``score cp 35``, ``score mate -3``, ``score mate +``), or None."""
    if "score" not in tokens:
        return None
    i = tokens.index("score")
    kind, value = [*tokens[i + 1 : i + 3], "", ""][:2]
    if kind == "cp":
        try:
            return int(value)
        except ValueError:
            return None
    if kind == "mate":
        sign = -1 if value.startswith("-") else 1
        plies = value.lstrip("+-")
        return sign * (MATE_SCORE - (int(plies) if plies.isdigit() else 0))
    return None


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
            self.close()  # broke the protocol: start afresh for the next move
            return Termination.CRASH
        if parts[1] == "resign":
            return Termination.RESIGN
        return parts[1]  # "win" or any other word is refused by the referee as an illegal move

    def analyse(self, game: Game, multipv: int = 1) -> list[Line]:
        """The engine's best ``multipv`` lines in ``game`` at its ``go`` setting, best first (the first is
        its ``bestmove``); set the engine's ``MultiPV`` option to ``multipv`` when building it. An engine
        that died or stayed silent is restarted for the next call and this one raises ``EngineError``;
        ``bestmove resign`` / ``win`` gives a line whose move is that word."""
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._start()
        try:
            self._send(f"position {game.to_usi_position()}")
            self._send(self.go)
            lines = list(self._until("bestmove", self.think_s + self.timeout_s))
        except (TimeoutError, EOFError, BrokenPipeError, OSError) as exc:
            self.close()
            raise EngineError(f"USI engine {self.name!r} failed on position {game.to_usi_position()!r}: "
                              f"{exc or type(exc).__name__}") from None
        return _lines(lines, multipv)


def _lines(output: list[str], multipv: int) -> list[Line]:
    """The lines of an analysis's output (``info`` lines then ``bestmove``): the latest score and first
    move of each ``multipv`` index, the best move's line first."""
    best = [*output[-1].split(), "", ""][1]
    found: dict[int, Line] = {}
    for text in output[:-1]:
        tokens = text.split()
        score = parse_score(tokens)
        if tokens[:1] != ["info"] or score is None or "pv" not in tokens or tokens.index("pv") + 1 >= len(tokens):
            continue
        index = int(tokens[tokens.index("multipv") + 1]) if "multipv" in tokens else 1
        found[index] = Line(tokens[tokens.index("pv") + 1], score)
    lines = [found[i] for i in sorted(found) if i <= multipv]
    top = next((line for line in lines if line.move == best), None)
    first = Line(best, top.score if top else lines[0].score if lines else 0)
    return [first, *[line for line in lines if line.move != best]][:multipv]
