"""Game records (CSA, KIF, KI2, JKF) read through ``rsshogi.record`` and replayed through ``Game``.

rsshogi parses every format (and refuses a move that is illegal where it is played); each game is
then replayed move by move through Keisei's ``Game``, the referee of training, with declaration off
(a player may decline to declare) and no ply limit. Bad input is one ``RecordError`` line naming the
file, the game of a multi-game CSA file and the move: ``policy="raise"`` raises it, ``policy="skip"``
counts it in a ``ReadReport``, logs it and goes on with the next game.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rsshogi.record import GameResult, Record

from keisei.shogi import Game, IllegalMoveError, Result

log = logging.getLogger(__name__)

Policy = Literal["raise", "skip"]

#: Record format of each file extension (``.kifu`` / ``.ki2u`` are the UTF-8 spellings).
FORMATS = {".csa": "csa", ".kif": "kif", ".kifu": "kif", ".ki2": "ki2", ".ki2u": "ki2", ".jkf": "jkf"}

_PARSERS: dict[str, Callable[[str], Record]] = {
    "csa": Record.from_csa_str, "kif": Record.from_kif_str, "ki2": Record.from_ki2_str, "jkf": Record.from_jkf_str,
}
#: A CSA multi-game file separates its games with a line holding only ``/``.
_CSA_SEPARATOR = re.compile(r"^/[ \t]*\r?$", re.MULTILINE)
_RSSHOGI_INDEX = re.compile(r"at index (\d+)")


class RecordError(ValueError):
    """A record that cannot be read or replayed: one line naming the file, the game and the move."""


@dataclass(frozen=True)
class GameRecord:
    """One game: ``positions[i]`` (SFEN) is the position ``moves[i]`` (USI) was played in."""

    source: str  # the file, with ", game K" in a multi-game CSA file
    start_sfen: str
    moves: tuple[str, ...]
    positions: tuple[str, ...]
    result: Result | None  # None: the record names no winner or draw (interrupted, unfinished)
    ending: str  # rsshogi's GameResult name: BLACK_WIN, WHITE_WIN_BY_DECLARATION, PAUSED, ...
    game: Game  # the replayed game at its final position


@dataclass
class ReadReport:
    """What a read did: games yielded, games or files skipped (one line each), files not records."""

    games: int = 0
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.games} games read, {len(self.skipped)} skipped"
        return text + (f", {len(self.ignored)} files of no record format ignored" if self.ignored else "")


def read_records(source: str | Path | Iterable[str | Path], *, policy: Policy = "raise", fmt: str | None = None,
                 report: ReadReport | None = None) -> Iterator[GameRecord]:
    """Every game of ``source``: a record file, a folder (searched recursively, files of a known
    extension in name order; others are listed in ``report.ignored``) or several of these.
    ``fmt`` ("csa", "kif", "ki2", "jkf") overrides the extension."""
    if policy not in ("raise", "skip"):
        raise ValueError(f"policy must be 'raise' or 'skip', got {policy!r}")
    if fmt is not None and fmt not in _PARSERS:
        raise ValueError(f"unknown record format {fmt!r} (one of {sorted(_PARSERS)})")
    return _read(source, policy, fmt, report if report is not None else ReadReport())


def _read(source: str | Path | Iterable[str | Path], policy: Policy, fmt: str | None,
          report: ReadReport) -> Iterator[GameRecord]:
    for path in _files(source, report, explicit_format=fmt is not None):
        for item in _games_of(path, fmt):
            try:
                if isinstance(item, RecordError):
                    raise item
                game = _replay(*item)
            except RecordError as exc:
                if policy == "raise":
                    raise
                report.skipped.append(str(exc))
                log.warning("skipped: %s", exc)
                continue
            report.games += 1
            yield game
    (log.warning if report.skipped else log.info)("records: %s", report)


def read_record(path: str | Path, *, fmt: str | None = None) -> GameRecord:
    """The one game of a record file (``RecordError`` if it holds none or several)."""
    games = list(read_records(path, fmt=fmt))
    if len(games) != 1:
        raise RecordError(f"{path}: expected one game, found {len(games)}")
    return games[0]


def _files(source: str | Path | Iterable[str | Path], report: ReadReport, explicit_format: bool) -> Iterator[Path]:
    sources = [source] if isinstance(source, str | Path) else list(source)
    for item in map(Path, sources):
        if not item.is_dir():
            yield item  # a named file is read (or refused) whatever its extension
            continue
        for path in sorted(p for p in item.rglob("*") if p.is_file()):
            if explicit_format or path.suffix.lower() in FORMATS:
                yield path
            else:
                report.ignored.append(str(path))
                log.info("not a record file, ignored: %s", path)


def _games_of(path: Path, fmt: str | None) -> list[tuple[Record, str] | RecordError]:
    """The games of one file as (rsshogi record, where) pairs, or the error that stops each."""
    try:
        fmt = fmt or _format_of(path)
        text = _decode(path)
        if fmt == "csa":
            return _csa_games(path, text)
        return [(_parse(_PARSERS[fmt], text, str(path), fmt), str(path))]
    except RecordError as exc:
        return [exc]


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RecordError(f"{path}: unknown record format {path.suffix or '(no extension)'!r} "
                          f"(known: {', '.join(FORMATS)})")
    return fmt


def _decode(path: Path) -> str:
    """The file's text: UTF-8 (with or without BOM), else Shift_JIS (cp932), the two encodings of
    KIF and CSA files. rsshogi's file readers assume Shift_JIS for KIF, so UTF-8 KIF files (Keisei's
    own, ``.kifu``) would not read through them."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for encoding in ("utf-8-sig", "cp932"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise RecordError(f"{path}: not text in UTF-8 or Shift_JIS")


def _csa_games(path: Path, text: str) -> list[tuple[Record, str] | RecordError]:
    """The games of a CSA file (one, or several separated by ``/`` lines). rsshogi refuses the whole
    file when one game is bad and does not say which: then each game is parsed on its own."""
    try:
        records = Record.from_csa_games_str(text)
    except ValueError:
        chunks = [chunk for chunk in _CSA_SEPARATOR.split(text) if chunk.strip()]
        return [_csa_game(chunk, _where(path, k, len(chunks))) for k, chunk in enumerate(chunks, start=1)]
    return [(record, _where(path, k, len(records))) for k, record in enumerate(records, start=1)]


def _csa_game(text: str, where: str) -> tuple[Record, str] | RecordError:
    try:
        return _parse(Record.from_csa_str, text, where, "csa"), where
    except RecordError as exc:
        return exc


def _where(path: Path, k: int, n: int) -> str:
    return f"{path}, game {k}" if n > 1 else str(path)


def _parse(parser: Callable[[str], Record], text: str, where: str, fmt: str) -> Record:
    """rsshogi's record of ``text``; its errors as one ``RecordError`` line (an illegal move with its
    number, counted from 1)."""
    try:
        record = parser(text)
    except ValueError as exc:
        found = _RSSHOGI_INDEX.search(str(exc))
        if found and "illegal" in str(exc):
            raise RecordError(f"{where}: move {int(found[1]) + 1}: illegal move (rsshogi: {exc})") from None
        raise RecordError(f"{where}: unreadable {fmt.upper()} record (truncated or corrupt?): {exc}") from None
    terminal = record.main_terminal
    if terminal is not None and terminal.kind == "UNKNOWN":
        raise RecordError(f"{where}: move {record.move_count + 1}: unreadable move {terminal.raw!r} "
                          f"(truncated or corrupt file?)")
    if record.move_count == 0 and terminal is None:
        raise RecordError(f"{where}: no moves and no result (empty, truncated, or not a {fmt.upper()} record)")
    return record


def _replay(record: Record, where: str) -> GameRecord:
    """Replay ``record`` through ``Game``: ``RecordError`` names the first move the referee refuses."""
    moves = tuple(entry.move.to_usi() for entry in record.moves)
    try:
        game = Game(record.init_position_sfen, max_plies=len(moves) + 1, declaration=False)
    except ValueError as exc:
        raise RecordError(f"{where}: start position: {exc}") from None
    positions = []
    for number, usi in enumerate(moves, start=1):
        positions.append(game.sfen())
        try:
            game.push(usi)
        except IllegalMoveError as exc:
            raise RecordError(f"{where}: move {number}: {exc}") from None
    ending = record.result
    return GameRecord(source=where, start_sfen=game.start_sfen, moves=moves, positions=tuple(positions),
                      result=to_result(ending), ending=ending.name, game=game)


def to_result(result: GameResult) -> Result | None:
    """Keisei's ``Result`` of an rsshogi ``GameResult``; None when it names no winner or draw."""
    if result.is_black_win():
        return Result.BLACK_WIN
    if result.is_white_win():
        return Result.WHITE_WIN
    return Result.DRAW if result.is_draw() else None
