"""keisei.data: game records (CSA, KIF, KI2, JKF) through rsshogi and Game, hcpe and psv rows through
rsshogi's numpy dtypes. Real rsshogi throughout; the record files are in tests/data/records (good/: one
known game in every format and a multi-game CSA file; bad/: one bad input each), the hcpe / psv rows
in tests/data/hcpe were written by cshogi, an independent implementation of both formats."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from rsshogi.record import Record

from keisei.data import (
    HCPE,
    PSV,
    ReadReport,
    RecordError,
    Sample,
    from_hcpe,
    from_psv,
    read,
    read_record,
    read_records,
    read_samples,
    samples_of,
    to_hcpe,
    to_psv,
    write,
)
from keisei.shogi import STARTPOS, Game, Result, Termination

DATA = Path(__file__).parent / "data"
GOOD, BAD = DATA / "records" / "good", DATA / "records" / "bad"
#: The game of good/known.*: Black mates with G*5b on move 21 (a drop, a promotion, captures).
KNOWN = ["2h4h", "3c3d", "3i2h", "2b5e", "3g3f", "5e3g", "2h3g", "4a4b", "3f3e", "2c2d", "3g3f", "5a4a", "B*6e",
         "4b3b", "6e8c+", "6c6d", "8c6a", "8b8g+", "6i6h", "8g8f", "G*5b"]


def _without_ply(sfen: str) -> str:
    return sfen.rsplit(" ", 1)[0]


# --- records -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["known.csa", "known.kif", "known.kifu", "known.ki2", "known.jkf"])
def test_known_game_replays_to_the_same_position(name: str) -> None:
    """Each format of the known game (CSA with an explicit board, times and comments; KIF in Shift_JIS
    and in UTF-8; KI2; JKF) gives its moves, every position before them and the final position of Game."""
    record = read_record(GOOD / name)
    expected = Game.replay(STARTPOS, KNOWN)
    assert list(record.moves) == KNOWN
    assert record.game.sfen() == expected.sfen()
    assert record.game.termination is Termination.CHECKMATE
    assert record.result is Result.BLACK_WIN and record.ending == "BLACK_WIN"
    assert record.positions == tuple(Game.replay(STARTPOS, KNOWN[:i]).sfen() for i in range(len(KNOWN)))


def test_records_written_by_save_records_read_back(tmp_path: Path) -> None:
    """Keisei's own match records (UTF-8 .kif and .csa from save_records) read back to the same games,
    results included: a checkmate, a resignation, a draw at max plies."""
    from keisei.play.match import MatchGame, save_records

    rng = random.Random(7)
    resigned, drawn = Game(), Game(max_plies=40)
    for game, plies in ((resigned, 15), (drawn, 40)):
        while game.ply < plies and not game.is_over:
            game.push(rng.choice(game.legal_usi()))
    resigned.resign()
    games = [Game.replay(STARTPOS, KNOWN), resigned, drawn]
    save_records([MatchGame(g, a_colour=g.turn) for g in games], "a", "b", tmp_path)
    for suffix in ("kif", "csa"):
        read = list(read_records(sorted(tmp_path.glob(f"*.{suffix}"))))
        assert [r.moves for r in read] == [tuple(g.moves) for g in games]
        assert [r.game.sfen() for r in read] == [g.sfen() for g in games]
        assert [r.result for r in read] == [g.result for g in games]


def test_multi_game_csa_file_is_read_in_full() -> None:
    games = list(read_records(GOOD / "multi.csa"))
    assert [g.source for g in games] == [f"{GOOD / 'multi.csa'}, game {k}" for k in (1, 2, 3)]
    assert [len(g.moves) for g in games] == [21, 36, 4]
    assert [g.result for g in games] == [Result.BLACK_WIN, Result.WHITE_WIN, None]  # the 3rd: %CHUDAN
    assert games[2].ending == "PAUSED" and not games[2].game.is_over
    assert games[1].game.termination is Termination.CHECKMATE


def test_folder_is_read_in_full() -> None:
    report = ReadReport()
    games = list(read_records(GOOD, report=report))
    assert len(games) == report.games == 8  # 5 single-game files + 3 games of multi.csa
    assert report.skipped == [] and report.ignored == [str(GOOD / "notes.txt")]
    assert sum(list(g.moves) == KNOWN for g in games) == 6


@pytest.mark.parametrize(("name", "line"), [
    ("illegal.csa", "illegal.csa: move 3: illegal move"),
    ("illegal.kif", "illegal.kif: move 2: illegal move"),
    ("multi_bad.csa", "multi_bad.csa, game 2: move 2: illegal move"),
    ("sennichite.csa", "sennichite.csa: move 13: cannot play '2h3h': the game is over (sennichite)"),
    ("truncated.csa", "truncated.csa: unreadable CSA record (truncated or corrupt?): invalid CSA move line: +3635"),
    ("truncated.kif", "truncated.kif: move 13: unreadable move '13 \N{FULLWIDTH DIGIT SIX}' (truncated or corrupt"),
    ("truncated.jkf", "truncated.jkf: unreadable JKF record (truncated or corrupt?)"),
    ("empty.kif", "empty.kif: no moves and no result"),
    ("game.pgn", "game.pgn: unknown record format '.pgn'"),
])
def test_bad_input_is_one_line_naming_file_game_and_move(name: str, line: str) -> None:
    with pytest.raises(RecordError) as caught:
        list(read_records(BAD / name))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(BAD / name))
    assert line in message


def test_moves_after_the_game_ended_are_caught_by_our_referee() -> None:
    """rsshogi reads the 13th move played after the 4th occurrence of the start position; Game refuses it."""
    assert Record.from_csa_file(str(BAD / "sennichite.csa")).move_count == 13
    with pytest.raises(RecordError, match=r"move 13: .*game is over"):
        read_record(BAD / "sennichite.csa")


def test_skip_counts_every_skipped_game_and_goes_on() -> None:
    report = ReadReport()
    games = list(read_records(BAD, policy="skip", report=report))
    assert [g.source for g in games] == [f"{BAD / 'multi_bad.csa'}, game {k}" for k in (1, 3)]
    assert report.games == 2 and len(report.skipped) == 8
    assert {line.split(":")[0].split(",")[0] for line in report.skipped} == {
        str(BAD / n) for n in ("empty.kif", "illegal.csa", "illegal.kif", "multi_bad.csa", "sennichite.csa",
                               "truncated.csa", "truncated.jkf", "truncated.kif")}
    assert report.ignored == [str(BAD / "game.pgn")]
    assert str(report) == "2 games read, 8 skipped, 1 files of no record format ignored"
    with pytest.raises(RecordError, match=r"empty\.kif"):  # refuse: the first bad file in name order
        list(read_records(BAD, policy="raise"))


def test_format_override_and_bad_arguments(tmp_path: Path) -> None:
    shutil.copy(GOOD / "known.csa", tmp_path / "known.txt")
    assert list(read_record(tmp_path / "known.txt", fmt="csa").moves) == KNOWN
    with pytest.raises(ValueError, match="policy"):
        read_records(GOOD, policy="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown record format 'pgn'"):
        read_records(GOOD, fmt="pgn")
    with pytest.raises(RecordError, match=r"missing\.csa: cannot read"):
        read_record(tmp_path / "missing.csa")


# --- hcpe and psv --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def game_samples() -> list[Sample]:
    """A sample per move of every finished game in good/ (scores made up, both signs)."""
    games = [g for g in read_records(GOOD) if g.result is not None]
    return [s for g in games for s in samples_of(g, scores=range(-300, -300 + 37 * len(g.moves), 37))]


def test_hcpe_round_trip_of_real_games(game_samples: list[Sample], tmp_path: Path) -> None:
    rows = to_hcpe(game_samples)
    path = tmp_path / "games.hcpe"
    write(path, rows)
    assert path.stat().st_size == 38 * len(game_samples)
    back = read(path, HCPE)
    plies = [int(s.sfen.split()[-1]) for s in game_samples]
    assert [from_hcpe(row, ply) for row, ply in zip(back, plies)] == game_samples
    assert [_without_ply(s.sfen) for s in read_samples(path, HCPE)] == [_without_ply(s.sfen) for s in game_samples]


def test_psv_round_trip_of_real_games(game_samples: list[Sample], tmp_path: Path) -> None:
    path = tmp_path / "games.psv"
    write(path, to_psv(game_samples[:10]))
    write(path, to_psv(game_samples[10:]), append=True)
    assert path.stat().st_size == 40 * len(game_samples)
    assert read_samples(path, PSV) == game_samples  # psv keeps the move number


def _cshogi_samples() -> list[Sample]:
    table = json.loads((DATA / "hcpe" / "cshogi.json").read_text())["samples"]
    return [Sample(sfen, move, score, Result(result)) for sfen, move, score, result in table]


def test_rows_are_byte_identical_to_cshogi() -> None:
    """Positions of both colours to move, drops and promotions, every result: written as cshogi wrote
    them, and cshogi's rows read back to the same samples."""
    samples = _cshogi_samples()
    assert to_hcpe(samples).tobytes() == (DATA / "hcpe" / "cshogi.hcpe").read_bytes()
    assert to_psv(samples).tobytes() == (DATA / "hcpe" / "cshogi.psv").read_bytes()
    assert read_samples(DATA / "hcpe" / "cshogi.psv", PSV) == samples
    hcpe = read_samples(DATA / "hcpe" / "cshogi.hcpe", HCPE)
    assert [(_without_ply(s.sfen), s.move, s.score, s.result) for s in hcpe] == [
        (_without_ply(s.sfen), s.move, s.score, s.result) for s in samples]


def test_bad_rows_and_samples_are_named(tmp_path: Path) -> None:
    samples = _cshogi_samples()
    path = tmp_path / "cut.hcpe"
    path.write_bytes((DATA / "hcpe" / "cshogi.hcpe").read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"cut\.hcpe: 1971 bytes is not a whole number of 38-byte rows"):
        read(path, HCPE)
    rows = to_hcpe(samples[:3])
    rows[1]["gameResult"] = 7
    with pytest.raises(ValueError, match="row 1: game result 7 is not 0, 1 or 2"):
        [from_hcpe(row, where=f"row {i}") for i, row in enumerate(rows)]
    rows = to_psv(samples[:1])
    rows[0]["move"] = to_psv(samples[1:2])[0]["move"]  # another position's move
    with pytest.raises(ValueError, match=r"psv row: move .* is not legal"):
        from_psv(rows[0])
    start = Sample(STARTPOS, "7g7f", 0, Result.DRAW)
    with pytest.raises(ValueError, match="sample 1: move '7g7e' is not legal"):
        to_hcpe([start, Sample(STARTPOS, "7g7e", 0, Result.DRAW)])
    with pytest.raises(ValueError, match="sample 0: score 40000 does not fit int16"):
        to_psv([Sample(STARTPOS, "7g7f", 40000, Result.DRAW)])
    unfinished = next(g for g in read_records(GOOD / "multi.csa") if g.result is None)
    with pytest.raises(ValueError, match="game 3: the game has no result"):
        samples_of(unfinished)


def test_psv_result_is_the_side_to_moves_view() -> None:
    """A Black win is +1 in a position Black is to move in and -1 where White is to move."""
    white_to_move = Game.replay(STARTPOS, ["7g7f"]).sfen()
    rows = to_psv([Sample(STARTPOS, "7g7f", 5, Result.BLACK_WIN), Sample(white_to_move, "3c3d", -5, Result.BLACK_WIN),
                   Sample(white_to_move, "3c3d", 0, Result.DRAW)])
    assert rows["game_result"].tolist() == [1, -1, 0]
    assert np.array_equal(to_hcpe([from_psv(r) for r in rows])["gameResult"], [1, 1, 0])
