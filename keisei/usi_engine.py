"""A trained network as a USI engine: ``python -m keisei.usi_engine checkpoint=PATH`` (or ``keisei-usi``).

Speaks USI on stdin/stdout so that Shogi GUIs and match runners can play the model. It
plays the policy head's move (greedy, or sampled with ``Temperature``) and reports the
value head as a score: ``cp = round(600 * ln(p / (1 - p)))`` with ``p = (value + 1) / 2``
the expected score of the side to move. No search: it answers ``go`` at once, whatever
the clock says (``go infinite`` and ``go ponder`` wait for ``stop`` / ``ponderhit``, as
the protocol asks). It never exits on bad input: problems are reported as ``info string``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TextIO

import torch

from keisei import __version__
from keisei.checkpoint import load_model
from keisei.players import AgentPlayer
from keisei.shogi import Game, declaration_points

OPTIONS = {  # name: (USI option declaration, default)
    "Checkpoint": ("type string default {}", ""),
    "Device": ("type combo default auto var auto var cpu var cuda", "auto"),
    "Temperature": ("type string default 0", "0"),
    "ResignValue": ("type spin default -100 min -100 max 0", "-100"),  # resign below value/100; -100: never
    "USI_Ponder": ("type check default false", "false"),
}


def value_to_cp(value: float) -> int:
    """Centipawn-style score of a value in [-1, 1] (side to move's view)."""
    p = min(max((value + 1.0) / 2.0, 1e-6), 1 - 1e-6)
    return round(600.0 * math.log(p / (1.0 - p)))


class UsiEngine:
    def __init__(self, out: TextIO, options: dict[str, str] | None = None) -> None:
        self.out = out
        self.options = {name: default for name, (_, default) in OPTIONS.items()}
        self.options.update(options or {})
        self.player: AgentPlayer | None = None
        self.loaded: tuple[str, str] | None = None  # (checkpoint, device) of self.player
        self.game: Game | None = None
        self.pending: str | None = None  # bestmove held back during go infinite / go ponder
        self.commands: dict[str, Callable[[list[str]], bool]] = {
            "usi": self.cmd_usi, "isready": self.cmd_isready, "setoption": self.cmd_setoption,
            "usinewgame": lambda args: True, "position": self.cmd_position, "go": self.cmd_go,
            "stop": self.cmd_stop, "ponderhit": self.cmd_stop, "gameover": self.cmd_gameover,
            "quit": lambda args: False,
        }

    def send(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def handle(self, line: str) -> bool:
        """Process one command line; False once the engine should exit."""
        words = line.split()
        if not words:
            return True
        command = self.commands.get(words[0])
        if command is None:
            self.send(f"info string unknown command: {words[0]}")
            return True
        try:
            return command(words[1:])
        except Exception as exc:  # never die on a bad command: report it and go on
            self.send(f"info string error in {words[0]}: {type(exc).__name__}: {exc}")
            if words[0] == "go":
                self.send("bestmove resign")
            return True

    # --- commands -------------------------------------------------------------------
    def cmd_usi(self, args: list[str]) -> bool:
        self.send(f"id name Keisei {__version__}")
        self.send("id author Keisei developers")
        for name, (declaration, _) in OPTIONS.items():
            if name == "Checkpoint":
                declaration = declaration.format(self.options["Checkpoint"] or "<empty>")
            self.send(f"option name {name} {declaration}")
        self.send("usiok")
        return True

    def cmd_isready(self, args: list[str]) -> bool:
        try:
            self._load()
        except Exception as exc:
            self.send(f"info string cannot load checkpoint: {exc}")
        self.send("readyok")
        return True

    def cmd_setoption(self, args: list[str]) -> bool:
        if len(args) < 2 or args[0] != "name":
            self.send("info string usage: setoption name <name> [value <value>]")
            return True
        rest = " ".join(args[1:])
        name, _, value = rest.partition(" value ")
        name = name.strip()
        if name not in OPTIONS:
            self.send(f"info string unknown option: {name}")
            return True
        if name == "Temperature":
            float(value)  # refuse non-numbers now, not at the next go
        self.options[name] = value.strip()
        return True

    def cmd_position(self, args: list[str]) -> bool:
        try:
            # The GUI referees its game: replay without declarations or a ply limit ending it early;
            # whether the side to move may declare now is asked of the final position only.
            self.game = Game.from_usi_position(" ".join(args), max_plies=10**9, declaration=False)
        except ValueError as exc:
            self.game = None
            self.send(f"info string bad position: {exc}")
        return True

    def cmd_go(self, args: list[str]) -> bool:
        move = self._bestmove()
        if "infinite" in args or "ponder" in args:
            self.pending = move  # the protocol wants bestmove only after stop / ponderhit
        else:
            self.send(f"bestmove {move}")
        return True

    def cmd_stop(self, args: list[str]) -> bool:
        if self.pending is not None:
            self.send(f"bestmove {self.pending}")
            self.pending = None
        return True

    def cmd_gameover(self, args: list[str]) -> bool:
        self.pending = None
        return True

    # --- thinking ---------------------------------------------------------------------
    def _load(self) -> None:
        checkpoint, device = self.options["Checkpoint"], self.options["Device"]
        if not checkpoint:
            raise ValueError("no checkpoint (start with checkpoint=PATH or setoption name Checkpoint)")
        if self.loaded != (checkpoint, device):
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model, _ = load_model(checkpoint, device)
            self.player = AgentPlayer(model, device=device)
            self.loaded = (checkpoint, self.options["Device"])

    def _bestmove(self) -> str:
        game = self.game
        if game is None:
            self.send("info string no valid position: resigning")
            return "resign"
        if declaration_points(game.board) is not None:
            return "win"
        if not game.legal_moves():
            return "resign"
        self._load()
        assert self.player is not None
        self.player.temperature = float(self.options["Temperature"])
        (move,), (value,) = self.player.act([game])
        self.send(f"info depth 1 score cp {value_to_cp(value)} pv {move}")
        if value < int(self.options["ResignValue"]) / 100:
            return "resign"
        return move


def main(argv: list[str] | None = None) -> None:
    """``keisei-usi checkpoint=PATH [device=cpu] [temperature=0]``: serve USI on stdin/stdout."""
    options = {}
    names = {"checkpoint": "Checkpoint", "device": "Device", "temperature": "Temperature",
             "resign_value": "ResignValue"}
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in names:
            print(f"usage: python -m keisei.usi_engine checkpoint=PATH [{' '.join(k + '=...' for k in names)}]; "
                  f"got {arg!r}", file=sys.stderr)
            sys.exit(2)
        options[names[key]] = value
    engine = UsiEngine(sys.stdout, options)
    for line in sys.stdin:
        if not engine.handle(line.strip()):
            break


if __name__ == "__main__":
    main()
