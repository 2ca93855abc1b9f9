"""A game of Shogi under the official rules, with adjudication and records.

rsshogi generates the legal moves (pawn-drop mate, nifu, dead drops and forced
promotion are not among them) and detects repetitions; this module adds what
decides a game: no legal move loses, the 4th occurrence of a position draws unless
one side checked on every move of the cycle (that side loses), the CSA 27-point
entering-king declaration wins, and ``max_plies`` moves end in a draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, IntEnum

import numpy as np
from rsshogi.core import Board, Move
from rsshogi.record import GameResult, Record, RecordMetadataBuilder
from rsshogi.types import Color as RsColor
from rsshogi.types import PieceType, RepetitionState

STARTPOS = "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1"
#: The default ply limit of a game (games, envs, matches and the configs): a game that reaches it is a draw.
MAX_PLIES = 320


class IllegalMoveError(ValueError):
    """A move that is malformed, illegal in the position, or played after the end."""


class Color(str, Enum):
    BLACK = "b"  # sente, moves first
    WHITE = "w"  # gote

    @property
    def opponent(self) -> Color:
        return Color.WHITE if self is Color.BLACK else Color.BLACK


class Result(str, Enum):
    BLACK_WIN = "black_win"
    WHITE_WIN = "white_win"
    DRAW = "draw"

    @staticmethod
    def win_for(color: Color) -> Result:
        return Result.BLACK_WIN if color is Color.BLACK else Result.WHITE_WIN


class Termination(IntEnum):
    """Why a game ended. The integer codes are what ``VecEnv`` reports (0 = still running)."""

    NONE = 0
    CHECKMATE = 1  # side to move is in check with no legal move: it loses
    NO_LEGAL_MOVES = 2  # side to move is not in check and has no legal move: it loses
    SENNICHITE = 3  # 4th occurrence of the same position: draw
    PERPETUAL_CHECK = 4  # 4th occurrence, one side checked on every move of the cycle: it loses
    DECLARATION = 5  # side to move meets the CSA 27-point entering-king rule: it wins
    MAX_PLIES = 6  # max_plies moves were played: draw (a truncation for RL)
    RESIGN = 7  # side to move resigned: it loses
    ILLEGAL_MOVE = 8  # side to move tried an illegal move (engines in matches): it loses
    TIMEOUT = 9  # side to move gave no move within its time limit: it loses
    CRASH = 10  # side to move's engine died or broke the protocol: it loses


#: Ways the side to move can lose without a move on the board (``Game.forfeit``).
FORFEITS = frozenset({Termination.RESIGN, Termination.ILLEGAL_MOVE, Termination.TIMEOUT, Termination.CRASH})


_COLORS = (Color.BLACK, Color.WHITE)
_REPETITION = {RepetitionState.DRAW: "draw", RepetitionState.WIN: "win", RepetitionState.LOSE: "lose"}
_BIG_PIECES = frozenset({PieceType.BISHOP, PieceType.ROOK, PieceType.HORSE, PieceType.DRAGON})
#: Each side (by rsshogi ``Color.value``: Black, White) as its rsshogi Color and, by rank index (0 is
#: rank a), how many ranks its king stands from the enemy camp (the far three ranks; 0 or less: in it).
_SIDES = ((RsColor.BLACK, tuple(rank - 2 for rank in range(9))),
          (RsColor.WHITE, tuple(6 - rank for rank in range(9))))


def parse_sfen(sfen: str) -> Board:
    """A Board for ``sfen``; ``ValueError`` naming the SFEN if it is malformed or not a legal position."""
    if not isinstance(sfen, str):
        raise ValueError(f"SFEN must be a string, got {type(sfen).__name__}")
    text = sfen.strip()
    if text.startswith("sfen "):
        text = text[5:].strip()
    if text == "startpos":
        text = STARTPOS
    fields = text.split()
    if len(fields) == 3:  # the move number is optional
        fields.append("1")
    if len(fields) != 4:
        raise ValueError(f"invalid SFEN {sfen!r}: expected board, side to move, hands, move number")
    text = " ".join(fields)
    try:
        board = Board(text)
    except ValueError as exc:
        raise ValueError(f"invalid SFEN {sfen!r}: {exc}") from None
    if not board.is_valid():
        problems = "; ".join(issue.message for issue in board.validate_all().issues)
        raise ValueError(f"invalid SFEN {sfen!r}: {problems}")
    kinds = [piece.piece_type for _, piece in board.iter_pieces()]
    if kinds.count(PieceType.KING) != 2:
        raise ValueError(f"invalid SFEN {sfen!r}: each side needs exactly one king")
    mover = board.turn
    if board.attackers_to_color_current(mover, board.king_square(mover.opponent())).count():
        raise ValueError(f"invalid SFEN {sfen!r}: the side not to move is in check")
    return board


def declaration_points(board: Board) -> tuple[int, int] | None:
    """(pieces in the enemy camp, points) for the side to move if it may declare, else None.

    CSA 27-point rule: the king stands in the enemy camp (the far three ranks), is
    not in check, at least 10 other pieces of the side stand in the enemy camp, and
    those pieces plus the pieces in hand score at least 28 points for Black or 27
    for White (rook and bishop, promoted or not, 5; every other piece 1).
    """
    turn = board.turn
    black = turn.is_black()
    king_rank = board.king_square(turn).value % 9
    king_in_camp = king_rank <= 2 if black else king_rank >= 6
    if not king_in_camp or board.is_in_check():
        return None
    pieces = points = 0
    for square, piece in board.iter_pieces():
        rank = square.value % 9
        in_camp = rank <= 2 if black else rank >= 6
        if in_camp and piece.color == turn and piece.piece_type != PieceType.KING:
            pieces += 1
            points += 5 if piece.piece_type in _BIG_PIECES else 1
    hand = board.hand_counts(turn)
    points += sum(count * (5 if kind in "BR" else 1) for kind, count in hand.items())
    if pieces >= 10 and points >= (28 if black else 27):
        return pieces, points
    return None


def _repetitions(board: Board) -> int:
    """How often ``board``'s position occurred before: 0 to 3, by rsshogi's ``is_repetition(k)``."""
    count = 0
    while count < 3 and board.is_repetition(count + 1):
        count += 1
    return count


def _sides_from(turn: int, ply: int) -> tuple:
    """``Game._sides``: the entries of ``_SIDES`` for the side to move after an even and an odd number of
    moves, from the side to move (``Color.value``) after ``ply`` moves."""
    first = turn ^ (ply & 1)
    return _SIDES[first], _SIDES[1 - first]


def random_opening(start: Game, plies: int, rng: np.random.Generator, tries: int = 1000) -> Game:
    """A copy of ``start`` after ``plies`` uniformly random legal moves that leave it running
    (drawn again when one ends the game; ``RuntimeError`` after ``tries`` draws)."""
    for _ in range(tries):
        game = start.copy()
        for _ in range(plies):
            legal = game.legal_moves
            if game.play(legal[int(rng.integers(len(legal)))]):
                break
        else:
            return game
    raise RuntimeError(f"no opening of {plies} random plies left the game running in {tries} tries")


class Game:
    """One game: ``push`` USI moves, read ``result`` and ``termination``, export records.

    ``max_plies`` counts the moves played in this game (from the given start position);
    when it is reached the game is a draw (``Termination.MAX_PLIES``).
    """

    __slots__ = ("_board", "_camp_checks", "_history", "_legal", "_repeats", "_result", "_sides", "_start_sfen",
                 "_termination", "declaration", "max_plies")

    def __init__(self, sfen: str | None = None, *, max_plies: int = MAX_PLIES, declaration: bool = True) -> None:
        if not isinstance(max_plies, int) or max_plies < 1:
            raise ValueError(f"max_plies must be a positive integer, got {max_plies!r}")
        self._board = parse_sfen(sfen) if sfen is not None else Board()
        self._start_sfen = self._board.to_sfen()
        self._sides = _sides_from(self._board.turn.value, 0)
        self._camp_checks = [0, 0]
        self.max_plies = max_plies
        self.declaration = declaration
        self._history: list[Move] = []
        self._result: Result | None = None
        self._termination = Termination.NONE
        self._adjudicate()

    @classmethod
    def from_usi_position(cls, position: str, **kwargs: object) -> Game:
        """A game from a USI position command: ``"startpos moves 7g7f 3c3d"`` or
        ``"sfen <sfen> moves ..."`` (a leading ``"position "`` is allowed)."""
        tokens = position.split()
        if tokens[:1] == ["position"]:
            tokens = tokens[1:]
        if tokens[:1] == ["startpos"]:
            sfen, rest = STARTPOS, tokens[1:]
        elif tokens[:1] == ["sfen"] and len(tokens) >= 4:
            end = tokens.index("moves") if "moves" in tokens else len(tokens)
            sfen, rest = " ".join(tokens[1:end]), tokens[end:]
        else:
            raise ValueError(f"invalid USI position {position!r}: expected 'startpos' or 'sfen ...'")
        if rest and rest[0] != "moves":
            raise ValueError(f"invalid USI position {position!r}: expected 'moves' after the position")
        return cls.replay(sfen, rest[1:], source="USI position", **kwargs)

    @classmethod
    def replay(cls, start_sfen: str, moves: Sequence[str], *, source: str = "the moves", **kwargs: object) -> Game:
        """A game from ``start_sfen`` after the USI ``moves``, each checked: ``IllegalMoveError``
        ``move N of <source>: ...`` names the first bad one."""
        game = cls(start_sfen, **kwargs)  # type: ignore[arg-type]
        for number, usi in enumerate(moves, start=1):
            try:
                game.push(usi)
            except IllegalMoveError as exc:
                raise IllegalMoveError(f"move {number} of {source}: {exc}") from None
        return game

    # --- state -----------------------------------------------------------------
    @property
    def turn(self) -> Color:
        """The side to move."""
        return _COLORS[self._board.turn.value]

    @property
    def ply(self) -> int:
        """Number of moves played in this game."""
        return len(self._history)

    @property
    def moves(self) -> list[str]:
        """The moves played, as USI strings."""
        return [move.to_usi() for move in self._history]

    @property
    def start_sfen(self) -> str:
        return self._start_sfen

    @property
    def is_over(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> Result | None:
        """``Result`` once the game is over, None while it runs."""
        return self._result

    @property
    def termination(self) -> Termination | None:
        """Why the game ended, None while it runs."""
        return self._termination if self._result is not None else None

    @property
    def winner(self) -> Color | None:
        if self._result is Result.BLACK_WIN:
            return Color.BLACK
        if self._result is Result.WHITE_WIN:
            return Color.WHITE
        return None

    def sfen(self) -> str:
        return self._board.to_sfen()

    @property
    def board(self) -> Board:
        """The rsshogi ``Board`` of the current position: read it, never push or pop on it
        (``play`` keeps the adjudication in step)."""
        return self._board

    @property
    def legal_moves(self) -> list[Move]:
        """Legal moves of the side to move as rsshogi ``Move`` objects, as ``Board.legal_moves()``
        (empty once the game is over); pass one to ``play``. Made on first use after each move (the
        environment never asks: its encoder finds the moves itself) and shared: do not modify it."""
        legal = self._legal
        if legal is None:
            legal = self._legal = self._board.legal_moves()
        return legal

    def is_in_check(self) -> bool:
        return self._board.is_in_check()

    @property
    def repetitions(self) -> int:
        """How often the current position (board, hands and side to move) occurred before in this
        game: 0 to 3, by the count rsshogi adjudicates sennichite with (at 3 this is the 4th
        occurrence and the game is over), read from the board after every move (``play`` asks
        ``is_repetition(1)``, and only when that is true for the exact count). Positions before
        ``start_sfen`` are not known, and rsshogi looks back only to the latest position on the same
        board (see docs/observations.md); a game from ``from_finished_state`` has no history and
        counts 0. ``keisei.shogi.encoding`` reads the same count for the ``repeated_ge1/ge2`` planes."""
        return self._repeats

    def legal_usi(self) -> list[str]:
        """Legal moves of the side to move as USI strings (empty once the game is over)."""
        return [move.to_usi() for move in self.legal_moves]

    def copy(self) -> Game:
        other = object.__new__(Game)
        other._board = self._board.copy()
        other._history = list(self._history)
        other._legal = self._legal
        other._repeats = self._repeats
        other._sides = self._sides
        other._camp_checks = list(self._camp_checks)
        other._result = self._result
        other._termination = self._termination
        other._start_sfen = self._start_sfen
        other.max_plies = self.max_plies
        other.declaration = self.declaration
        return other

    # --- moves -------------------------------------------------------------------
    def push(self, usi: str) -> None:
        """Play ``usi``. Raises ``IllegalMoveError`` (game unchanged) if it is not legal."""
        if self._result is not None:
            raise IllegalMoveError(
                f"cannot play {usi!r}: the game is over ({self._termination.name.lower()}) "
                f"in position {self.sfen()}")
        try:
            move = Move.from_usi(usi) if isinstance(usi, str) else None
        except ValueError:
            move = None
        if move is None:
            raise IllegalMoveError(f"malformed move {usi!r} in position {self.sfen()}")
        if move not in self.legal_moves:
            raise IllegalMoveError(f"illegal move {usi!r} in position {self.sfen()}")
        self.play(move)

    def resign(self) -> None:
        """The side to move resigns."""
        self.forfeit(Termination.RESIGN)

    def forfeit(self, termination: Termination) -> None:
        """The side to move loses without a move: ``RESIGN``, ``ILLEGAL_MOVE``, ``TIMEOUT`` or ``CRASH``
        (what a referee decides for an engine)."""
        if termination not in FORFEITS:
            raise ValueError(f"{termination!r} is not a forfeit (one of {sorted(t.name for t in FORFEITS)})")
        if self._result is not None:
            raise IllegalMoveError(f"the game is already over ({self._termination.name.lower()})")
        self._finish(Result.win_for(self.turn.opponent), termination)

    def play(self, move: Move) -> bool:
        """Play a move taken from ``legal_moves``, without validation: the fast path of environments,
        players and search. Anything else is undefined; ``push`` checks a USI move. Returns whether
        the game is over.

        Most moves end nothing: a screen of cheap rsshogi calls, each true whenever one of the endings
        may apply (a repeated position, no legal move, the ply limit, the king in the enemy camp),
        passes the rest to ``_adjudicate``, which decides in the rules' order."""
        board, history = self._board, self._history
        board.apply_move(move)
        history.append(move)
        n = len(history)
        if (board.is_repetition(1) or board.is_mated() or n >= self.max_plies
                or (self.declaration and n >= self._camp_checks[n & 1] and self._king_in_camp(n))):
            return self._adjudicate()
        self._legal = None  # made by legal_moves when asked for
        self._repeats = 0
        return False

    def _king_in_camp(self, n: int) -> bool:
        """Whether the king of the side to move after ``n`` moves stands in its enemy camp. When not,
        it cannot get there before ``n + 2 * distance`` (a king moves one rank at most, on every other
        ply): until then ``play`` does not ask again (``_camp_checks``, by the parity of ``n``)."""
        color, distances = self._sides[n & 1]
        distance = distances[self._board.king_square(color).value % 9]
        if distance > 0:
            self._camp_checks[n & 1] = n + 2 * distance
        return distance <= 0

    def finished_state(self) -> tuple:
        """A finished game as plain data (start, final SFEN, move values, result, termination, settings),
        for ``from_finished_state`` in another process: cheaper than replaying the moves."""
        assert self._result is not None, "only a finished game"
        return (self._start_sfen, self._board.to_sfen(), [int(m) for m in self._history], self._result.value,
                int(self._termination), self.max_plies, self.declaration)

    @classmethod
    def from_finished_state(cls, state: tuple) -> Game:
        """The finished game ``finished_state`` described (its final board set from the SFEN, not replayed,
        so without the history of positions: ``repetitions`` is 0; such a game is never encoded)."""
        start, final, values, result, termination, max_plies, declaration = state
        game = object.__new__(cls)
        game._board = Board(final)
        game._history = [Move(v) for v in values]
        game._legal = []
        game._repeats = 0
        game._sides = _sides_from(game._board.turn.value, len(values))
        game._camp_checks = [0, 0]
        game._result = Result(result)
        game._termination = Termination(termination)
        game._start_sfen = start
        game.max_plies = max_plies
        game.declaration = declaration
        return game

    def play_line(self, moves: Sequence[Move]) -> None:
        """Play ``moves`` (each legal in turn) without validation, adjudicating only the position
        they reach: for a line already known to leave the game running until its last move, such
        as a path down a search tree. Anything else is undefined; ``play`` adjudicates every move."""
        if not moves:
            return
        board, history = self._board, self._history
        for move in moves:
            board.apply_move(move)
            history.append(move)
        self._adjudicate()

    def _finish(self, result: Result, termination: Termination) -> None:
        self._result = result
        self._termination = termination
        self._legal = []

    def _adjudicate(self) -> bool:
        """Decide the position just reached, in this order: the 4th occurrence of a position (rsshogi's
        ``is_repetition(3)``, then ``repetition_state()`` for perpetual check), no legal move (rsshogi's
        ``is_mated()``, true exactly when ``legal_moves()`` is empty, without making the list), the
        declaration (``declaration_points``), ``max_plies``. Returns whether the game is over."""
        board = self._board
        self._legal = None  # made by legal_moves when asked for
        self._repeats = _repetitions(board)
        if self._repeats == 3:
            self._finish_repetition()
        elif board.is_mated():
            reason = Termination.CHECKMATE if board.is_in_check() else Termination.NO_LEGAL_MOVES
            self._finish(Result.win_for(self.turn.opponent), reason)
        elif self.declaration and declaration_points(board) is not None:
            self._finish(Result.win_for(self.turn), Termination.DECLARATION)
        elif len(self._history) >= self.max_plies:
            self._finish(Result.DRAW, Termination.MAX_PLIES)
        return self._result is not None

    def _finish_repetition(self) -> None:
        """End the game on the 4th occurrence of its position: a draw, or a loss for the side that
        checked on every move of the cycle (rsshogi reports it from the side to move's view)."""
        repetition = _REPETITION[self._board.repetition_state()]
        if repetition == "draw":
            self._finish(Result.DRAW, Termination.SENNICHITE)
        else:
            mover = self.turn
            winner = mover if repetition == "win" else mover.opponent
            self._finish(Result.win_for(winner), Termination.PERPETUAL_CHECK)

    # --- records -----------------------------------------------------------------------
    def to_usi_position(self) -> str:
        """``"sfen <start> moves ..."`` (or ``"startpos moves ..."``), as sent to USI engines."""
        start = "startpos" if self._start_sfen == STARTPOS else f"sfen {self._start_sfen}"
        return f"{start} moves {' '.join(self.moves)}" if self._history else start

    def record(self, black: str | None = None, white: str | None = None) -> Record:
        """The game as an rsshogi ``Record`` (result included once the game is over, players' names if given)."""
        metadata = RecordMetadataBuilder(black_player=black, white_player=white).build()
        return Record.from_usi_main_line(self._start_sfen, self.moves, result=self._record_result(),
                                         metadata=metadata)

    def to_kif(self, black: str | None = None, white: str | None = None) -> str:
        return self.record(black, white).to_kif()

    def to_csa(self, black: str | None = None, white: str | None = None) -> str:
        return self.record(black, white).to_csa()

    def _record_result(self) -> GameResult | None:
        if self._result is None:
            return None
        term, winner = self._termination, self.winner
        black = winner is Color.BLACK
        if self._result is Result.DRAW:
            repetition = term is Termination.SENNICHITE
            return GameResult.DRAW_BY_REPETITION if repetition else GameResult.DRAW_BY_MAX_PLIES
        if term is Termination.DECLARATION:
            return GameResult.BLACK_WIN_BY_DECLARATION if black else GameResult.WHITE_WIN_BY_DECLARATION
        if term in (Termination.PERPETUAL_CHECK, Termination.ILLEGAL_MOVE):
            return GameResult.BLACK_WIN_BY_ILLEGAL_MOVE if black else GameResult.WHITE_WIN_BY_ILLEGAL_MOVE
        if term is Termination.TIMEOUT:
            return GameResult.BLACK_WIN_BY_TIMEOUT if black else GameResult.WHITE_WIN_BY_TIMEOUT
        return GameResult.BLACK_WIN if black else GameResult.WHITE_WIN

    def __repr__(self) -> str:
        state = self._termination.name.lower() if self._result is not None else "running"
        return f"Game(sfen={self.sfen()!r}, ply={self.ply}, {state})"
