"""A trained network as a USI engine: ``python -m keisei.usi_engine checkpoint=PATH`` (or ``keisei-usi``).

Speaks USI on stdin/stdout so that Shogi GUIs and match runners can play the model. It
searches with ``keisei.play.search`` (batched PUCT MCTS over the policy and value heads, with a
mate search) in a thread, so that ``stop``, ``ponderhit`` and ``isready`` are answered while it
thinks; ``Simulations 0`` plays the policy head's move at once instead (greedy, or sampled
with ``Temperature``). Time: ``go movetime`` / ``btime`` / ``wtime`` / ``byoyomi`` / ``binc`` /
``winc`` set a deadline that keeps ``MoveOverhead`` milliseconds in hand; ``go nodes N`` runs N
playouts; a plain ``go`` (or ``go depth N``) runs ``Simulations`` playouts; ``go infinite`` and
``go ponder`` search until ``stop`` (or ``ponderhit``, which starts the clock). Scores: ``mate N``
when proven, else ``cp = round(600 * ln(p / (1 - p)))`` with ``p = (value + 1) / 2``.

It never exits on bad input: a bad command, position or option value is reported as
``info string`` (a bad option value keeps the previous one). It refuses to start (one line on
stderr, exit status 1) when the checkpoint given on the command line cannot be loaded. Without
any loadable checkpoint ``isready`` says so in an ``info string`` before ``readyok``, and ``go``
answers ``bestmove resign``: an engine with no network has no move of its own to offer.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from keisei import __version__
from keisei.config import ConfigError, Device, SearchConfig
from keisei.nn.checkpoint import load_model
from keisei.play.players import AgentPlayer
from keisei.play.search import Limits, Search, SearchResult
from keisei.runtime import resolve_device
from keisei.shogi import Game, Termination, declaration_points


def _spin(low: int, high: int, odd_or_zero: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is outside [{low}, {high}]")
        if odd_or_zero and number and number % 2 == 0:
            raise ValueError(f"{number} is even: 0 (off) or an odd number of plies")
        return str(number)
    return parse


def _real(low: float, high: float, *, above_low: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
        if not math.isfinite(number) or number > high or number < low or (above_low and number == low):
            raise ValueError(f"{value} is outside {'(' if above_low else '['}{low:g}, {high:g}]")
        return value.strip()
    return parse


def _check(value: str) -> str:
    if value not in ("true", "false"):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _device(value: str) -> str:
    if value not in Device.__members__:
        raise ValueError(f"{value!r} is not one of {', '.join(Device.__members__)}")
    try:
        resolve_device(Device(value))
    except ConfigError:  # cuda where there is none
        raise ValueError("cuda is not available on this machine") from None
    return value


@dataclass(frozen=True)
class Option:
    kind: str  # the USI type: string, spin, check or combo
    default: str  # the value as stored
    parse: Callable[[str], str]  # the value as stored; ValueError (with the reason) for a bad one
    argument: str  # the command-line name
    help: str
    bounds: str = ""  # what the declaration adds after the default: " min 0 max 7", " var auto var cpu"

    def declare(self, value: str) -> str:
        """What ``usi`` declares after ``option name <name>``, with ``value`` as the default."""
        return f"type {self.kind} default {value or '<empty>'}{self.bounds}"


def _spin_option(default: int, low: int, high: int, argument: str, help: str, *, odd_or_zero: bool = False) -> Option:
    return Option("spin", str(default), _spin(low, high, odd_or_zero), argument, help, f" min {low} max {high}")


def _check_option(default: bool, argument: str, help: str) -> Option:
    return Option("check", str(default).lower(), _check, argument, help)


_SEARCH = SearchConfig()  # the defaults of the search options (Simulations has the engine's own, 200)

OPTIONS = {
    "Checkpoint": Option("string", "", str, "checkpoint",
                         "the network: a checkpoint file or a run dir (its checkpoints/last.pt)"),
    "Device": Option("combo", Device.auto.value, _device, "device", "auto, cpu or cuda",
                     "".join(f" var {d.value}" for d in Device)),
    "Temperature": Option("string", f"{_SEARCH.temperature:g}", _real(0, 100), "temperature",
                          "0: the best move; above 0: sampled (from the visits, or the policy at Simulations 0)"),
    "ResignValue": _spin_option(-100, -100, 0, "resign_value",
                                "resign when the move's value is below N/100 (-100: never)"),
    "USI_Ponder": _check_option(False, "ponder", "the GUI may send go ponder"),
    "Simulations": _spin_option(200, 0, 10_000_000, "simulations",
                                "playouts per move when go gives no clock and no nodes; 0: no search"),
    "BatchSize": _spin_option(_SEARCH.batch_size, 1, 1024, "batch_size", "leaves evaluated per forward pass"),
    "CPuct": Option("string", f"{_SEARCH.c_puct:g}", _real(0, 100, above_low=True), "c_puct",
                    "PUCT exploration constant, in (0, 100]"),
    "MateSearch": _spin_option(_SEARCH.mate_plies, 0, 7, "mate_search",
                               "mate search at the root in plies: 0 off, 1, 3, 5 or 7", odd_or_zero=True),
    "ReuseTree": _check_option(_SEARCH.reuse_tree, "reuse_tree", "keep the tree between moves"),
    "MoveOverhead": _spin_option(100, 0, 10_000, "move_overhead",
                                 "milliseconds of the clock kept back for the answer to reach the GUI"),
}
USAGE = f"""usage: python -m keisei.usi_engine checkpoint=PATH [NAME=VALUE ...]

Serves a Keisei checkpoint as a USI engine on stdin/stdout (it exits 1 when the checkpoint
cannot be loaded). Arguments, each also a USI option (in brackets), with its default:
{chr(10).join(f"  {o.argument}=...  [{name}, {o.default or 'none'}] {o.help}" for name, o in OPTIONS.items())}
See docs/play.md and docs/search.md."""

_GO_NUMBERS = ("btime", "wtime", "byoyomi", "binc", "winc", "movetime", "nodes", "depth", "mate")
_INFO_INTERVAL_S = 1.0


def value_to_cp(value: float) -> int:
    """Centipawn-style score of a value in [-1, 1] (side to move's view)."""
    p = min(max((value + 1.0) / 2.0, 1e-6), 1 - 1e-6)
    return round(600.0 * math.log(p / (1.0 - p)))


def time_budget(go: dict[str, int], black: bool, overhead_s: float) -> float | None:
    """Seconds to think for a ``go`` command, or None when it sets no time.

    ``movetime``: all of it. Clocks: a 40th of the remaining time plus the byoyomi and the
    increment, never more than the remaining time plus the byoyomi (the increment is not counted
    on: it may come only after the move). ``overhead_s`` is kept back in both cases."""
    if "movetime" in go:
        return max(go["movetime"] / 1000 - overhead_s, 0.0)
    own, inc = go.get("btime" if black else "wtime"), go.get("binc" if black else "winc", 0)
    byoyomi = go.get("byoyomi", 0)
    if own is None and not byoyomi and not inc:
        return None
    own = max(own or 0, 0)
    target = own / 40 + byoyomi + inc
    return max(min(target, own + byoyomi) / 1000 - overhead_s, 0.0)


@dataclass
class _Thinking:
    """One ``go``: the position to search (a USI position), its limits; ``release`` is set when its
    bestmove may be sent, ``done`` once it was (or was dropped)."""

    position: str
    go: dict[str, int]
    limits: Limits
    ponder: bool
    release: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    quiet: bool = False  # send no bestmove (gameover, quit)


class UsiEngine:
    def __init__(self, out: TextIO, options: dict[str, str] | None = None) -> None:
        self.out = out
        self._lock = threading.Lock()
        self.options = {name: option.default for name, option in OPTIONS.items()}
        for name, value in (options or {}).items():
            self.options[name] = OPTIONS[name].parse(value)
        self.player: AgentPlayer | None = None  # the loaded network (its raw policy)
        self.loaded: tuple[str, str] | None = None  # (checkpoint, device) of self.player
        self.search: Search | None = None
        self.game: Game | None = None
        self.thinking: _Thinking | None = None
        # rsshogi boards belong to the thread that made them: every search runs in this one thread
        self._jobs: queue.Queue[_Thinking | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="search", daemon=True)
        self._worker.start()
        self.commands: dict[str, Callable[[list[str]], bool]] = {
            "usi": self.cmd_usi, "isready": self.cmd_isready, "setoption": self.cmd_setoption,
            "usinewgame": self.cmd_usinewgame, "position": self.cmd_position, "go": self.cmd_go,
            "stop": self.cmd_stop, "ponderhit": self.cmd_ponderhit, "gameover": self.cmd_gameover,
            "quit": self.cmd_quit,
        }

    def send(self, line: str) -> None:
        with self._lock:
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
            if words[0] == "go" and self.thinking is None:
                self.send("bestmove resign")
            return True

    # --- commands -------------------------------------------------------------------
    def cmd_usi(self, args: list[str]) -> bool:
        self.send(f"id name Keisei {__version__}")
        self.send("id author Keisei developers")
        for name, option in OPTIONS.items():
            value = self.options[name] if name == "Checkpoint" else option.default
            self.send(f"option name {name} {option.declare(value)}")
        self.send("usiok")
        return True

    def cmd_isready(self, args: list[str]) -> bool:
        if self.thinking is None or self.thinking.done.is_set():  # not while a search uses the network
            try:
                self.load()
            except Exception as exc:
                self._report_load_failure(exc)
        self.send("readyok")
        return True

    def cmd_setoption(self, args: list[str]) -> bool:
        if len(args) < 2 or args[0] != "name":
            self.send("info string usage: setoption name <name> [value <value>]")
            return True
        name, _, value = " ".join(args[1:]).partition(" value ")
        name, value = name.strip(), value.strip()
        if name not in OPTIONS:
            self.send(f"info string unknown option: {name}")
            return True
        try:
            parsed = OPTIONS[name].parse(value)
        except ValueError as exc:
            self.send(f"info string bad value for {name}: {exc}; keeping {self.options[name] or '<empty>'}")
            return True
        self._finish_thinking()
        self.options[name] = parsed
        return True

    def cmd_usinewgame(self, args: list[str]) -> bool:
        self._finish_thinking()
        if self.search is not None:
            self.search.reset()
        return True

    def cmd_position(self, args: list[str]) -> bool:
        self._finish_thinking()
        try:
            # The GUI referees its game: replay without declarations or a ply limit ending it early;
            # whether the side to move may declare now is asked of the final position only.
            self.game = Game.from_usi_position(" ".join(args), max_plies=10**9, declaration=False)
        except ValueError as exc:
            self.game = None
            self.send(f"info string bad position: {exc}")
        return True

    def cmd_go(self, args: list[str]) -> bool:
        start = time.monotonic()
        self._finish_thinking()
        go = self._parse_go(args)
        if "mate" in go:
            self.send("checkmate notimplemented")
            return True
        game, answer = self._root()
        if game is None:
            self.send(f"bestmove {answer}")
            return True
        ponder = "ponder" in args
        limits = Limits()
        if not ponder and "infinite" not in args:
            self._set_limits(limits, go, game, start)
        thinking = _Thinking(game.to_usi_position(), go, limits, ponder)
        if not ponder and "infinite" not in args:
            thinking.release.set()
        self.thinking = thinking
        self._jobs.put(thinking)
        return True

    def cmd_stop(self, args: list[str]) -> bool:
        self._finish_thinking()
        return True

    def cmd_ponderhit(self, args: list[str]) -> bool:
        thinking = self.thinking
        if thinking is not None and thinking.ponder and not thinking.release.is_set():
            assert self.game is not None
            self._set_limits(thinking.limits, thinking.go, self.game, time.monotonic())
            thinking.release.set()
        return True

    def cmd_gameover(self, args: list[str]) -> bool:
        self._finish_thinking(quiet=True)
        return True

    def cmd_quit(self, args: list[str]) -> bool:
        thinking = self.thinking  # a move that is due is still sent; one held for stop / ponderhit is not
        self._finish_thinking(quiet=thinking is not None and not thinking.release.is_set())
        self._jobs.put(None)
        self._worker.join()
        return False

    # --- thinking ---------------------------------------------------------------------
    def load(self) -> None:
        """Load the network of the options' checkpoint on their device (nothing when already loaded);
        a ``CheckpointError`` or ``ValueError`` says why not."""
        checkpoint, device = self.options["Checkpoint"], self.options["Device"]
        if not checkpoint:
            raise ValueError("no checkpoint (start with checkpoint=PATH or setoption name Checkpoint)")
        if self.loaded != (checkpoint, device):
            model, _ = load_model(checkpoint, resolve_device(Device(device)))
            self.player = AgentPlayer(model, device=next(model.parameters()).device)
            self.loaded = (checkpoint, device)
            self.search = None

    def _report_load_failure(self, exc: Exception) -> None:
        if self.loaded is None:
            self.send(f"info string no checkpoint loaded: {exc}; go will answer bestmove resign")
        else:
            self.send(f"info string cannot load checkpoint: {exc}; keeping {self.loaded[0]} on {self.loaded[1]}")
            self.options["Checkpoint"], self.options["Device"] = self.loaded

    def _parse_go(self, args: list[str]) -> dict[str, int]:
        go: dict[str, int] = {}
        for i, word in enumerate(args):
            if word in _GO_NUMBERS:
                try:
                    go[word] = int(args[i + 1])
                except (IndexError, ValueError):
                    self.send(f"info string go {word}: expected a number; ignored")
        return go

    def _root(self) -> tuple[Game | None, str]:
        """The game to search, or (None, the answer to send at once)."""
        game = self.game
        if game is None:
            self.send("info string no valid position: resigning")
            return None, "resign"
        if declaration_points(game.board) is not None:
            return None, "win"
        if game.is_over:
            if game.termination in (Termination.SENNICHITE, Termination.PERPETUAL_CHECK):
                result = "a draw" if game.winner is None else f"{game.winner.name.lower()} wins"
                why = "fourfold repetition" if game.termination is Termination.SENNICHITE else "perpetual check"
                self.send(f"info string the position is already over by {why} ({result}); "
                          "playing on from it without its history")
                game = Game(game.sfen(), max_plies=10**9, declaration=False)
            if game.is_over:  # checkmate or no legal move
                self.send("info string no legal move: resigning")
                return None, "resign"
        try:
            self.load()
        except Exception as exc:
            self._report_load_failure(exc)
            if self.player is None:
                return None, "resign"
        return game, ""

    def _set_limits(self, limits: Limits, go: dict[str, int], game: Game, start: float) -> None:
        overhead_s = int(self.options["MoveOverhead"]) / 1000
        budget = time_budget(go, game.turn.value == "b", overhead_s)
        limits.deadline = None if budget is None else start + budget
        if "nodes" in go:
            limits.simulations = max(go["nodes"], 1)
        elif budget is None:
            limits.simulations = int(self.options["Simulations"])
        else:
            limits.simulations = None

    def _search_config(self) -> SearchConfig:
        temperature = float(self.options["Temperature"])
        return SearchConfig(simulations=max(int(self.options["Simulations"]), 1),
                            batch_size=int(self.options["BatchSize"]), c_puct=float(self.options["CPuct"]),
                            temperature=temperature, temperature_moves=10**9 if temperature > 0 else 0,
                            dirichlet_fraction=0.0, mate_plies=int(self.options["MateSearch"]),
                            reuse_tree=self.options["ReuseTree"] == "true")

    def _work(self) -> None:
        """The search thread: run each ``go`` in turn until ``None``."""
        while (thinking := self._jobs.get()) is not None:
            try:
                self._think(thinking)
            finally:
                thinking.done.set()

    def _think(self, thinking: _Thinking) -> None:
        """Think, wait until the answer may go, send it."""
        try:
            game = Game.from_usi_position(thinking.position, max_plies=10**9, declaration=False)
            game.declaration = True  # inside the search, a side that may declare wins
            info, move, value = self._best(game, thinking.limits)
        except Exception as exc:
            info, move, value = f"info string error while thinking: {type(exc).__name__}: {exc}", "resign", 0.0
        thinking.release.wait()
        if thinking.quiet:
            return
        self.send(info)
        if move != "resign" and value < int(self.options["ResignValue"]) / 100:
            move = "resign"
        self.send(f"bestmove {move}")

    def _best(self, game: Game, limits: Limits) -> tuple[str, str, float]:
        """(the last info line, the move, its value)."""
        assert self.player is not None
        if int(self.options["Simulations"]) == 0:
            self.player.temperature = float(self.options["Temperature"])
            (move,), (value,) = self.player.act([game])
            return f"info depth 1 nodes 1 score cp {value_to_cp(value)} pv {move}", move, value
        cfg = self._search_config()
        if self.search is None or self.search.cfg != cfg:
            self.search = Search(self.player.policy, cfg, device=self.player.device)
        (result,) = self.search.run([game], limits, on_info=lambda r: self.send(self._info(r)),
                                    info_interval_s=_INFO_INTERVAL_S)
        return self._info(result), result.move, result.value

    @staticmethod
    def _info(result: SearchResult) -> str:
        score = f"mate {result.mate}" if result.mate is not None else f"cp {value_to_cp(result.value)}"
        return (f"info depth {result.depth} seldepth {max(result.seldepth, result.depth)} "
                f"time {round(result.elapsed_s * 1000)} nodes {result.nodes} nps {result.nps} score {score} "
                f"pv {' '.join(result.pv)}")

    def _finish_thinking(self, quiet: bool = False) -> None:
        """Stop the search in progress (if any) and wait for its answer (none when ``quiet``)."""
        thinking, self.thinking = self.thinking, None
        if thinking is None:
            return
        thinking.quiet = quiet
        thinking.limits.stop.set()
        thinking.release.set()
        thinking.done.wait()


def main(argv: list[str] | None = None) -> None:
    """``keisei-usi checkpoint=PATH [name=value ...]``: serve USI on stdin/stdout."""
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help", "help") for arg in args):
        print(USAGE)
        sys.exit(0)
    names = {option.argument: name for name, option in OPTIONS.items()}
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in names:
            print(f"usage: python -m keisei.usi_engine checkpoint=PATH [NAME=VALUE ...] (see --help); got {arg!r}",
                  file=sys.stderr)
            sys.exit(2)
        try:
            options[names[key]] = OPTIONS[names[key]].parse(value)
        except ValueError as exc:
            print(f"keisei.usi_engine: bad value for {key}: {exc}", file=sys.stderr)
            sys.exit(2)
    engine = UsiEngine(sys.stdout, options)
    if engine.options["Checkpoint"]:
        try:
            engine.load()
        except Exception as exc:
            print(f"keisei.usi_engine: cannot load checkpoint: {exc}", file=sys.stderr)
            sys.exit(1)
    while True:
        line = sys.stdin.readline()
        if not line:  # end of input: as quit
            engine.cmd_quit([])
            break
        if not engine.handle(line.strip()):
            break


if __name__ == "__main__":
    main()
