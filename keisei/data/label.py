"""What ``label.py`` runs: positions labelled by a USI engine (the teacher), appended to an hcpe file.

Positions come from games (``source=selfplay``: the teacher plays itself from random openings, as
YaneuraOu's gensfen; ``source=checkpoint``: a network plays itself and the teacher labels every
position) or from game records (``source=records``). Each position gets the teacher's best move and
score; a game's positions are written when it ends, with its result (a game cut by Ctrl-C or the
ply limit is a draw; one whose score reaches ``resign_score`` is won by the side ahead).

The output is ``<output>`` (hcpe rows, dlshogi's format), ``<output>.side`` (per row: the move number
and, with ``multipv`` > 1, the teacher's best moves and scores; dtype in ``side_dtype``) and
``<output>.json`` (what labelled it). One teacher process per worker process; a rerun appends until
the file holds ``positions`` distinct positions, skipping positions it already holds; an engine that
dies is restarted and its position retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rsshogi.core import Move
from tqdm import tqdm

from keisei.config import ConfigError, LabelConfig, LabelSource, OpponentKind, to_container
from keisei.data.hcpe import HCPE, Sample, to_hcpe
from keisei.data.records import ReadReport, read_records
from keisei.play.usi_client import EngineError, Line, UsiPlayer
from keisei.shogi import Game, Result, parse_sfen, random_opening

log = logging.getLogger(__name__)

#: Tries of one position before a teacher that keeps failing stops the labelling.
ENGINE_TRIES = 3


def side_dtype(multipv: int) -> np.dtype:
    """The dtype of ``<output>.side`` rows: the move number, and with ``multipv`` > 1 the teacher's best
    moves (Apery's 16-bit encoding, as hcpe's ``bestMove16``; 0 where it had fewer lines) and scores."""
    fields: list[tuple[Any, ...]] = [("ply", "<u2")]
    if multipv > 1:
        fields += [("multipv_move16", "<u2", (multipv,)), ("multipv_eval", "<i2", (multipv,))]
    return np.dtype(fields)


@dataclass(frozen=True)
class Labelled:
    """One labelled position: ``sfen`` (with its move number) and the teacher's lines, best first."""

    sfen: str
    lines: tuple[Line, ...]


@dataclass
class LabelReport:
    """What a labelling call did."""

    written: int = 0  # new rows
    total: int = 0  # rows in the file now
    duplicates: int = 0  # positions labelled but not written: the file held them already
    games: int = 0  # games finished (selfplay, checkpoint)
    records: ReadReport | None = None

    def __str__(self) -> str:
        text = f"{self.written:,} positions labelled and written ({self.total:,} in the file), " \
               f"{self.duplicates:,} duplicates skipped"
        if self.games:
            text += f", {self.games:,} games"
        if self.records is not None:
            text += f"; records: {self.records}"
        return text


def validate_label(cfg: DictConfig | LabelConfig) -> LabelConfig:
    """label.py's checks, each a one-line ``ConfigError`` naming the key (a key no setting has, too);
    returns the typed ``LabelConfig``."""
    from keisei.config import _as_count, _check, _reject_unknown_keys

    if isinstance(cfg, DictConfig):
        _reject_unknown_keys(cfg)
        cfg = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    assert isinstance(cfg, LabelConfig)

    cfg.positions = _as_count("positions", cfg.positions)
    _check(cfg.positions >= 1, "positions", cfg.positions, "must be >= 1")
    t = cfg.teacher
    _check(t.kind is OpponentKind.usi, "teacher.kind", t.kind.value, "the teacher must be a USI engine (kind=usi)")
    _check(bool(t.command), "teacher.command", t.command, "the teacher's executable is required")
    for key in ("movetime_ms", "byoyomi_ms", "depth"):
        value = getattr(t, key)
        _check(value is None or value >= 1, f"teacher.{key}", value, "must be >= 1 or null")
    _check(1 <= cfg.multipv <= 64, "multipv", cfg.multipv, "must be in [1, 64]")
    _check(cfg.opening_plies >= 0, "opening_plies", cfg.opening_plies, "must be >= 0")
    _check(0 <= cfg.random_move_rate <= 1, "random_move_rate", cfg.random_move_rate, "must be in [0, 1]")
    _check(cfg.resign_score > 0, "resign_score", cfg.resign_score, "must be > 0 (centipawns)")
    _check(cfg.max_plies > cfg.opening_plies, "max_plies", cfg.max_plies, "must be above opening_plies")
    _check(cfg.workers >= 0, "workers", cfg.workers, "must be >= 0 (0: one per core)")
    _check(cfg.temperature >= 0, "temperature", cfg.temperature, "must be >= 0")
    if cfg.source is LabelSource.records:
        _check(bool(cfg.records), "records", cfg.records, "source=records needs records=[FILE_OR_DIR, ...]")
        for path in cfg.records:
            _check(Path(path).exists(), "records", cfg.records, f"{path} does not exist")
    if cfg.source is LabelSource.checkpoint:
        _check(bool(cfg.checkpoint), "checkpoint", cfg.checkpoint, "source=checkpoint needs checkpoint=PATH")
    return cfg


# --- the output files --------------------------------------------------------------------------
#: Keys of a teacher's config that do not change what a USI engine answers (a network player's search and
#: temperature): left out of the output's description, so that a new default of theirs does not refuse a rerun.
NOT_TEACHER_SETTINGS = ("checkpoint", "temperature", "search")


def teacher_settings(cfg: LabelConfig) -> dict[str, Any]:
    """The teacher's settings that the labels depend on: what ``<output>.json`` records and a rerun must match."""
    return {k: v for k, v in to_container(cfg.teacher).items() if k not in NOT_TEACHER_SETTINGS}


class Output:
    """The hcpe file, its side file and its description; opened for appending after a check that
    they were written by the same teacher settings, and cut back to whole rows present in both."""

    def __init__(self, cfg: LabelConfig) -> None:
        self.path = Path(cfg.output)
        self.side_path = self.path.with_name(self.path.name + ".side")
        self.meta_path = self.path.with_name(self.path.name + ".json")
        self.side_dtype = side_dtype(cfg.multipv)
        meta = {"teacher": teacher_settings(cfg), "multipv": cfg.multipv, "side_dtype": self.side_dtype.descr}
        if self.meta_path.is_file():
            saved = json.loads(self.meta_path.read_text(encoding="utf-8"))
            saved["side_dtype"] = np.dtype([tuple(f) for f in saved["side_dtype"]]).descr
            saved["teacher"] = {k: saved.get("teacher", {}).get(k) for k in meta["teacher"]}
            if {k: saved.get(k) for k in meta} != meta:
                raise ConfigError(f"output={self.path}: labelled by another teacher or multipv ({self.meta_path}); "
                                  "label into another output file")
        elif self.path.exists() and self.path.stat().st_size:
            raise ConfigError(f"output={self.path}: the file exists and was not written by label.py "
                              f"(no {self.meta_path.name}); label into another output file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        self.rows = self._whole_rows()
        self.seen = {bytes(r) for r in np.fromfile(self.path, dtype=HCPE)["hcp"]} if self.rows else set()

    def _whole_rows(self) -> int:
        """The rows present in both files; a row cut by a kill is dropped from both."""
        sizes = [(p.stat().st_size if p.exists() else 0) // d.itemsize
                 for p, d in ((self.path, HCPE), (self.side_path, self.side_dtype))]
        rows = min(sizes)
        for p, d in ((self.path, HCPE), (self.side_path, self.side_dtype)):
            with open(p, "ab") as f:
                if f.tell() != rows * d.itemsize:
                    log.warning("%s: cut back to %d whole rows (an earlier run was killed mid-write)", p, rows)
                    f.truncate(rows * d.itemsize)
        return rows

    def append(self, positions: list[Labelled], result: Result) -> tuple[int, int]:
        """Write the positions not in the file yet (once each); ``(written, duplicates)``."""
        new: list[Labelled] = []
        for p in positions:
            key = parse_sfen(p.sfen).to_hcp()
            if key not in self.seen:
                self.seen.add(key)
                new.append(p)
        if new:
            rows = to_hcpe(Sample(p.sfen, p.lines[0].move, _int16(p.lines[0].score), result) for p in new)
            side = np.zeros(len(new), dtype=self.side_dtype)
            side["ply"] = [int(p.sfen.rsplit(" ", 1)[1]) for p in new]
            if "multipv_move16" in self.side_dtype.names:
                for i, p in enumerate(new):
                    for j, line in enumerate(p.lines):
                        side[i]["multipv_move16"][j] = Move.from_usi(line.move).to_apery().value
                        side[i]["multipv_eval"][j] = _int16(line.score)
            with open(self.path, "ab") as f:
                f.write(rows.tobytes())
            with open(self.side_path, "ab") as f:
                f.write(side.tobytes())
            self.rows += len(new)
        return len(new), len(positions) - len(new)


def _int16(score: int) -> int:
    return max(-32767, min(32767, score))


# --- the workers ------------------------------------------------------------------------------
def _teacher(cfg: LabelConfig) -> UsiPlayer:
    t = cfg.teacher
    options = {**t.options, **({"MultiPV": cfg.multipv} if cfg.multipv > 1 else {})}
    return UsiPlayer(str(t.command), args=t.args, options=options, movetime_ms=t.movetime_ms,
                     byoyomi_ms=t.byoyomi_ms, depth=t.depth, timeout_s=t.timeout_s, name=t.name)


def _analyse(teacher: UsiPlayer, game: Game, multipv: int) -> tuple[Line, ...] | None:
    """The teacher's legal lines in ``game`` (retried on a failing engine), or None when it resigns."""
    for attempt in range(1, ENGINE_TRIES + 1):
        try:
            lines = teacher.analyse(game, multipv)
            break
        except EngineError:
            if attempt == ENGINE_TRIES:
                raise
            log.warning("teacher failed on %s; restarted, retrying", game.to_usi_position())
    legal = set(game.legal_usi())
    if lines[0].move not in legal:
        if lines[0].move in ("resign", "win"):
            return None
        raise EngineError(f"teacher {teacher.name!r} answered {lines[0].move!r}, not a legal move, in "
                          f"position {game.to_usi_position()}")
    return tuple(line for line in lines if line.move in legal)


def _with_ply(game: Game) -> str:
    """The game's SFEN with its move number counted from the start of the game."""
    sfen = game.sfen()
    start = int(game.start_sfen.rsplit(" ", 1)[1])
    return f"{sfen.rsplit(' ', 1)[0]} {start + game.ply}"


def _play_game(cfg: LabelConfig, teacher: UsiPlayer, mover: Any, rng: np.random.Generator,
               stop: Any) -> tuple[list[Labelled], Result | None]:
    """One game from a random opening, every position labelled; its positions and result (None when a stop
    ended it first)."""
    game = random_opening(Game(max_plies=cfg.max_plies), int(rng.integers(cfg.opening_plies + 1)), rng)
    positions: list[Labelled] = []
    parent = os.getppid()
    while not game.is_over and not stop.is_set() and os.getppid() == parent:
        lines = _analyse(teacher, game, cfg.multipv)
        if lines is None:  # the teacher resigned
            return positions, Result.win_for(game.turn.opponent)
        positions.append(Labelled(_with_ply(game), lines))
        if abs(lines[0].score) >= cfg.resign_score:
            return positions, Result.win_for(game.turn if lines[0].score > 0 else game.turn.opponent)
        if rng.random() < cfg.random_move_rate:
            legal = game.legal_usi()
            move = legal[int(rng.integers(len(legal)))]
        else:
            move = mover.choose([game])[0] if mover is not None else lines[0].move
        game.push(move)
    return positions, game.result  # None: stopped before the game ended


def _worker(cfg: LabelConfig, index: int, seed: int, tasks: Any, results: Any, stop: Any) -> None:
    """A worker process: its own teacher; plays and labels games, or labels the positions of ``tasks``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and tells us to stop
    parent = os.getppid()  # a main process killed outright leaves us orphans: we stop too
    teacher = None
    try:
        teacher = _teacher(cfg)
        if cfg.source is LabelSource.records:
            while not stop.is_set() and os.getppid() == parent:
                try:
                    task = tasks.get(timeout=1)
                except queue.Empty:
                    continue
                if task is None:
                    break
                sfen, result = task
                lines = _analyse(teacher, Game(sfen, declaration=False), cfg.multipv)
                results.put(("positions", [Labelled(sfen, lines)] if lines else [], result))
        else:
            rng = np.random.default_rng([seed, index])
            mover = _network(cfg, seed + index) if cfg.source is LabelSource.checkpoint else None
            while not stop.is_set() and os.getppid() == parent:
                positions, result = _play_game(cfg, teacher, mover, rng, stop)
                results.put(("game", positions, result))
    except Exception as exc:  # reported to the main process, which stops with it
        results.put(("error", f"{type(exc).__name__}: {exc}" if not isinstance(exc, EngineError) else str(exc)))
    finally:
        if teacher is not None:
            teacher.close()
        results.put(("exit",))


def _network(cfg: LabelConfig, seed: int) -> Any:
    """The checkpoint's network as a player (one thread: one worker per core)."""
    import torch

    from keisei.evaluation.opponents import checkpoint_player

    torch.set_num_threads(1)
    return checkpoint_player(str(cfg.checkpoint), torch.device("cpu"), cfg.temperature, seed)


# --- the main process --------------------------------------------------------------------------
def label(cfg: LabelConfig) -> LabelReport:
    """Label positions per ``cfg`` until ``cfg.output`` holds ``cfg.positions`` of them (or Ctrl-C:
    every finished label is kept); prints a progress bar with positions/s."""
    out = Output(cfg)
    report = LabelReport(total=out.rows)
    if out.rows >= cfg.positions:
        print(f"{out.path}: holds {out.rows:,} positions already (positions={cfg.positions:,})", file=sys.stderr)
        return report
    workers = cfg.workers or os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    tasks, results, stop = ctx.Queue(maxsize=4 * workers), ctx.Queue(), ctx.Event()
    seed = cfg.seed * 1_000_003 + out.rows  # a rerun plays other games than the run it continues
    procs = [ctx.Process(target=_worker, args=(cfg, i, seed, tasks, results, stop), daemon=True)
             for i in range(workers)]
    record_positions = _record_positions(cfg, out, report) if cfg.source is LabelSource.records else None
    bar = tqdm(total=cfg.positions, initial=out.rows, unit="pos", desc="label", dynamic_ncols=True,
               disable=not cfg.logging.progress_bar)
    for p in procs:
        p.start()
    error: str | None = None
    try:
        error = _collect(cfg, out, report, results, tasks, record_positions, workers, bar, stop)
    except KeyboardInterrupt:
        stop.set()
        print("Interrupted: writing the finished labels ...", file=sys.stderr)
        _drain(out, report, results, workers, bar, tasks)
        report.total = out.rows
        print(f"{report}; the same command continues", file=sys.stderr)
        raise
    finally:
        stop.set()
        bar.close()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        report.total = out.rows
    if error:
        raise EngineError(error)
    return report


def _collect(cfg: LabelConfig, out: Output, report: LabelReport, results: Any, tasks: Any,
             record_positions: Iterator[tuple[str, Result]] | None, workers: int, bar: tqdm, stop: Any) -> str | None:
    """Feed the workers and write what they return until the target or the end of the records."""
    running, pending = workers, 0
    feeding = record_positions is not None
    while running:
        while feeding and pending < 4 * workers and out.rows + pending < cfg.positions:
            task = next(record_positions, None)  # type: ignore[arg-type]
            if task is None:
                feeding = False
                break
            tasks.put(task)
            pending += 1
        if record_positions is not None and not feeding and pending == 0 and not stop.is_set():
            stop.set()
            for _ in range(workers):
                tasks.put(None)
        message = results.get()
        if message[0] == "exit":
            running -= 1
        elif message[0] == "error":
            stop.set()
            _drain(out, report, results, running, bar, tasks)
            return message[1]
        elif message[0] == "game" and message[2] is None:
            continue  # a game the target's stop cut short: its result is unknown, and the file is full
        else:
            pending -= message[0] == "positions"
            _write(out, report, message, bar)
            if out.rows >= cfg.positions and not stop.is_set():
                stop.set()
                for _ in range(workers):
                    _put_nowait(tasks, None)
    return None


def _write(out: Output, report: LabelReport, message: tuple, bar: tqdm) -> None:
    kind, positions, result = message
    written, duplicates = out.append(positions, Result.DRAW if result is None else result)  # Ctrl-C: a draw
    report.written += written
    report.duplicates += duplicates
    report.games += kind == "game"
    bar.update(written)
    bar.set_postfix({"dup": report.duplicates, "games": report.games} if report.games else {"dup": report.duplicates})


def _drain(out: Output, report: LabelReport, results: Any, running: int, bar: tqdm, tasks: Any) -> str:
    """After a stop: write what the workers still send, until every one has exited; their first error."""
    error = ""
    for _ in range(running):
        _put_nowait(tasks, None)
    while running:
        try:
            message = results.get(timeout=60)
        except queue.Empty:
            break
        if message[0] == "exit":
            running -= 1
        elif message[0] == "error":
            error = error or message[1]
        else:
            _write(out, report, message, bar)
    return error


def _put_nowait(q: Any, item: Any) -> None:
    with contextlib.suppress(queue.Full):
        q.put_nowait(item)


def _record_positions(cfg: LabelConfig, out: Output, report: LabelReport) -> Iterator[tuple[str, Result]]:
    """Every position of the records that the file does not hold yet, once, with its game's result."""
    report.records = ReadReport()
    policy = "skip" if cfg.skip_bad_records else "raise"
    queued: set[bytes] = set()
    for record in read_records(cfg.records, policy=policy, report=report.records):
        if record.result is None:
            report.records.skipped.append(f"{record.source}: no result ({record.ending})")
            continue
        for sfen in record.positions:
            key = parse_sfen(sfen).to_hcp()
            if key in out.seen or key in queued:
                report.duplicates += 1
                continue
            queued.add(key)
            yield sfen, record.result
