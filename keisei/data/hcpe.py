"""Training positions in dlshogi's ``hcpe`` and YaneuraOu's ``psv`` formats, through ``rsshogi.numpy``.

Both are flat files of fixed-size rows; the numpy dtypes of ``rsshogi.numpy`` give their layout
(little-endian, no padding between fields) and rsshogi packs the positions and encodes the moves:

- ``hcpe`` (``HuffmanCodedPosAndEval``, 38 bytes): ``hcp`` (the position, Huffman coded, 32 bytes,
  no move number), ``eval`` (int16, the side to move's view), ``bestMove16`` (Apery's 16-bit move,
  cshogi's ``move16``), ``gameResult`` (the game's outcome: 0 draw, 1 Black won, 2 White won).
- ``psv`` (``PackedSfenValue``, 40 bytes): ``sfen`` (the position, packed, 32 bytes), ``score`` (int16,
  the side to move's view), ``move`` (YaneuraOu's 16-bit move), ``game_ply`` (the move number),
  ``game_result`` (int8, the side to move's view: 1 it won, 0 draw, -1 it lost).

A row is a ``Sample``: the position as SFEN, the move as USI, the score and the game's ``Result``
(Black's or White's win, whoever is to move). Rows are checked as they are read or written: a
position rsshogi or ``parse_sfen`` refuses, or a move that is not legal in it, is a ``ValueError``
naming the row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rsshogi.numpy as rsnp
from rsshogi.core import AperyMove, Board, Move

from keisei.data.records import GameRecord
from keisei.shogi import Game, Result, parse_sfen

HCPE = np.dtype(rsnp.HuffmanCodedPosAndEval)
PSV = np.dtype(rsnp.PackedSfenValue)

_HCPE_RESULT = {Result.DRAW: 0, Result.BLACK_WIN: 1, Result.WHITE_WIN: 2}
_HCPE_RESULT_OF = {code: result for result, code in _HCPE_RESULT.items()}
_INT16 = (-(2**15), 2**15 - 1)


@dataclass(frozen=True)
class Sample:
    """One training position: ``move`` (USI) played or recommended in ``sfen``, ``score`` from the
    side to move's view, ``result`` the outcome of the game it comes from."""

    sfen: str
    move: str
    score: int
    result: Result

    def game(self) -> Game:
        """The position as a ``Game`` (declaration off, as in a record's replay)."""
        return Game(self.sfen, declaration=False)


def samples_of(record: GameRecord, scores: Iterable[int] | None = None) -> list[Sample]:
    """A sample per move of a finished game record (``scores`` per move, 0 when not given)."""
    if record.result is None:
        raise ValueError(f"{record.source}: the game has no result ({record.ending}): no samples")
    scores = list(scores) if scores is not None else [0] * len(record.moves)
    return [Sample(sfen, move, score, record.result)
            for sfen, move, score in zip(record.positions, record.moves, scores, strict=True)]


# --- hcpe ------------------------------------------------------------------------------------
def to_hcpe(rows: Iterable[Sample]) -> np.ndarray:
    """An ``HCPE`` array of ``rows`` (the move number of each SFEN is not kept)."""
    rows = list(rows)
    out = np.zeros(len(rows), dtype=HCPE)
    for i, sample in enumerate(rows):
        board, move = _checked(sample, f"sample {i}")
        out[i]["hcp"] = np.frombuffer(board.to_hcp(), dtype=np.uint8)
        out[i]["eval"] = sample.score
        out[i]["bestMove16"] = move.to_apery().value
        out[i]["gameResult"] = _HCPE_RESULT[sample.result]
    return out


def from_hcpe(row: np.void, ply: int = 1, where: str = "hcpe row") -> Sample:
    """The ``Sample`` of one ``HCPE`` row; hcpe keeps no move number, the SFEN gets ``ply``."""
    code = int(row["gameResult"])
    if code not in _HCPE_RESULT_OF:
        raise ValueError(f"{where}: game result {code} is not 0, 1 or 2")
    board = _unpack(lambda b: b.set_hcp(bytes(row["hcp"]), ply), where)
    move = AperyMove(int(row["bestMove16"])).to_move()
    return _sample(board, move, int(row["eval"]), _HCPE_RESULT_OF[code], where)


# --- psv -------------------------------------------------------------------------------------
def to_psv(rows: Iterable[Sample]) -> np.ndarray:
    """A ``PSV`` array of ``rows`` (the move number of each SFEN is kept in ``game_ply``)."""
    rows = list(rows)
    out = np.zeros(len(rows), dtype=PSV)
    for i, sample in enumerate(rows):
        board, move = _checked(sample, f"sample {i}")
        out[i]["sfen"] = np.frombuffer(board.to_packed_sfen(), dtype=np.uint8)
        out[i]["score"] = sample.score
        out[i]["move"] = move.value
        out[i]["game_ply"] = board.game_ply
        out[i]["game_result"] = _relative(sample.result, board)
    return out


def from_psv(row: np.void, where: str = "psv row") -> Sample:
    """The ``Sample`` of one ``PSV`` row."""
    board = _unpack(lambda b: b.set_packed_sfen(bytes(row["sfen"])), where)
    board.set_sfen(_with_ply(board.to_sfen(), int(row["game_ply"])))
    relative = int(row["game_result"])
    if relative not in (-1, 0, 1):
        raise ValueError(f"{where}: game result {relative} is not -1, 0 or 1")
    mover_won = Result.BLACK_WIN if board.turn.is_black() else Result.WHITE_WIN
    result = Result.DRAW if relative == 0 else mover_won if relative == 1 else _other(mover_won)
    return _sample(board, Move(int(row["move"])), int(row["score"]), result, where)


# --- files -----------------------------------------------------------------------------------
def write(path: str | Path, rows: np.ndarray, *, append: bool = False) -> None:
    """Write (or append) ``rows``, an ``HCPE`` or ``PSV`` array, to ``path``: the bytes of the format."""
    if rows.dtype not in (HCPE, PSV):
        raise ValueError(f"{path}: rows of dtype {rows.dtype} are neither hcpe nor psv")
    with open(path, "ab" if append else "wb") as f:
        f.write(np.ascontiguousarray(rows).tobytes())


def read(path: str | Path, dtype: np.dtype) -> np.ndarray:
    """The rows of an hcpe (``dtype=HCPE``) or psv (``PSV``) file; a size that is not a whole number
    of rows is a ``ValueError`` naming the file (truncated, or another format)."""
    data = Path(path).read_bytes()
    if len(data) % dtype.itemsize:
        raise ValueError(f"{path}: {len(data)} bytes is not a whole number of {dtype.itemsize}-byte rows "
                         f"(truncated, or not this format)")
    return np.frombuffer(data, dtype=dtype).copy()


def read_samples(path: str | Path, dtype: np.dtype) -> list[Sample]:
    """Every row of an hcpe or psv file as a ``Sample``, each checked."""
    rows = read(path, dtype)
    decode = from_hcpe if dtype == HCPE else from_psv
    return [decode(row, where=f"{path}: row {i}") for i, row in enumerate(rows)]


# --- helpers ---------------------------------------------------------------------------------
def _checked(sample: Sample, where: str) -> tuple[Board, Move]:
    """The board and move of ``sample``, both checked; a score that fits int16."""
    try:
        board = parse_sfen(sample.sfen)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not _INT16[0] <= sample.score <= _INT16[1]:
        raise ValueError(f"{where}: score {sample.score} does not fit int16")
    try:
        move = Move.from_usi(sample.move)
    except ValueError:
        move = None
    if move is None or not board.is_legal_move(move):
        raise ValueError(f"{where}: move {sample.move!r} is not legal in {sample.sfen}")
    return board, move


def _unpack(fill: Callable[[Board], None], where: str) -> Board:
    """A Board that ``fill`` sets from packed bytes; rsshogi's refusal as a ``ValueError`` naming the row."""
    board = Board()
    try:
        fill(board)
    except ValueError as exc:
        raise ValueError(f"{where}: not a position: {exc}") from None
    return board


def _sample(board: Board, move: Move, score: int, result: Result, where: str) -> Sample:
    """The row's sample once its position passes ``parse_sfen`` and its move is legal there."""
    sfen = board.to_sfen()
    try:
        parse_sfen(sfen)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not board.is_legal_move(move):
        raise ValueError(f"{where}: move {move.to_usi()!r} is not legal in {sfen}")
    return Sample(sfen, move.to_usi(), score, result)


def _relative(result: Result, board: Board) -> int:
    """psv's game result: the side to move's view (1 won, 0 draw, -1 lost)."""
    if result is Result.DRAW:
        return 0
    return 1 if (result is Result.BLACK_WIN) == board.turn.is_black() else -1


def _other(result: Result) -> Result:
    return Result.WHITE_WIN if result is Result.BLACK_WIN else Result.BLACK_WIN


def _with_ply(sfen: str, ply: int) -> str:
    return f"{sfen.rsplit(' ', 1)[0]} {max(ply, 1)}"
