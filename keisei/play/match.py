"""Matches between two players, refereed by our rules, and what they produce.

``play_match`` plays N games in parallel, alternating colours (games 2k and 2k+1 start
from the same random opening, with colours swapped). Every move goes through
``Game.push``: an illegal move forfeits the game (``ILLEGAL_MOVE``), as do an engine's
timeout, crash or resignation. ``match_results`` turns the games into the figures of
``results.json``; ``save_records`` writes every game as KIF, CSA and USI moves.

The games advance in lockstep: each round, both players choose in the games where they are to
move, then every move is played. With ``workers`` > 1 a match between two networks that play
without search runs its games in env worker processes (``keisei.env.workers``), which step them
(rules, adjudication, encoding) while this process only runs the networks on their planes: the
same rounds, batches and draws, so the same games as in this process.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from keisei.env.workers import WorkerVecEnv
from keisei.evaluation.elo import match_stats
from keisei.play.players import AgentPlayer, Player
from keisei.shogi import MAX_PLIES, Color, Game, IllegalMoveError, Termination, random_opening


@dataclass
class MatchGame:
    game: Game
    a_colour: Color  # colour of the first player
    illegal_move: str | None = None  # the move that forfeited the game, if any

    def names(self, a: str, b: str) -> tuple[str, str]:
        """(black, white) player names."""
        return (a, b) if self.a_colour is Color.BLACK else (b, a)


class MatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a match: ``games`` holds the games that had finished (in game order)."""

    def __init__(self, games: list[MatchGame], planned: int) -> None:
        super().__init__(f"{len(games)} of {planned} games finished")
        self.games, self.planned = games, planned


def play_match(a: Player, b: Player, games: int, *, max_plies: int = MAX_PLIES, declaration: bool = True,
               opening_plies: int = 0, seed: int = 0, progress: bool = False, workers: int = 1) -> list[MatchGame]:
    """Play ``games`` games of ``a`` against ``b``; ``a`` has Black in the even-numbered games.
    ``workers`` > 1: step the games in that many env worker processes when both players are
    networks without search (``on_workers``); other matches are played in this process.
    Ctrl-C raises ``MatchInterrupted`` with the games finished so far."""
    if games < 1:
        raise ValueError(f"games must be >= 1, got {games}")
    if not 0 <= opening_plies < max_plies:
        raise ValueError(f"opening_plies must be >= 0 and below max_plies ({max_plies}), got {opening_plies}")
    rng = np.random.default_rng(seed)
    matches: list[MatchGame] = []
    for k in range(games):
        if k % 2 == 0:  # each opening is played twice, once with each colour
            opening = random_opening(Game(max_plies=max_plies, declaration=declaration), opening_plies, rng)
        matches.append(MatchGame(opening.copy(), Color.BLACK if k % 2 == 0 else Color.WHITE))
    with tqdm(total=games, desc=f"{a.name} vs {b.name}", unit="game", disable=not progress) as bar:
        try:
            if workers > 1 and on_workers(a, b):
                _play_on_workers(a, b, matches, workers, max_plies=max_plies, declaration=declaration,
                                 done=bar.update)
            else:
                _play_here(a, b, matches, done=bar.update)
        except KeyboardInterrupt:
            raise MatchInterrupted([m for m in matches if m.game.is_over], games) from None
    return matches


def on_workers(a: Player, b: Player) -> bool:
    """Whether a match of ``a`` and ``b`` can run on env workers: two networks playing their policy's
    move (a search, an engine or a scripted player needs the games themselves in this process)."""
    return all(isinstance(p, AgentPlayer) and p.search is None for p in (a, b))


def _play_here(a: Player, b: Player, matches: list[MatchGame], done: Callable[[int], object]) -> None:
    active = [m for m in matches if not m.game.is_over]
    while active:
        turns = [(player, [m for m in active if (m.game.turn is m.a_colour) == plays_a])
                 for player, plays_a in ((a, True), (b, False))]
        for player, turn in turns:  # disjoint games: a's moves do not change b's positions
            if turn:
                for m, choice in zip(turn, player.choose([m.game for m in turn])):
                    _referee(m, choice)
        still = [m for m in active if not m.game.is_over]
        done(len(active) - len(still))
        active = still


def _play_on_workers(a: AgentPlayer, b: AgentPlayer, matches: list[MatchGame], workers: int, *,
                     max_plies: int, declaration: bool, done: Callable[[int], object]) -> None:
    """The rounds of ``_play_here`` with the games in a ``WorkerVecEnv`` (one env per game, loaded with
    its opening). An env whose game has ended goes on with a filler game (its lowest legal label each
    round, never recorded) until every game has ended: the env steps all its games at once."""
    n = len(matches)
    state = {"games": [[m.game.start_sfen, m.game.moves] for m in matches], "seed": 0, "game_counts": [1] * n}
    a_colour = np.array([m.a_colour is Color.WHITE for m in matches], dtype=np.int8)  # to_play's code
    over = np.zeros(n, dtype=bool)
    with WorkerVecEnv(n, workers=min(workers, n), max_plies=max_plies, declaration=declaration,
                      keep_finished=2 * n) as env:
        result = env.load_state_dict(state)
        while not over.all():
            actions = result.legal_mask.argmax(axis=1)
            a_turn = result.to_play == a_colour
            for player, rows in ((a, ~over & a_turn), (b, ~over & ~a_turn)):
                index = np.flatnonzero(rows)
                if index.size:
                    actions[index] = player.act_encoded(result.obs[index], result.legal_mask[index])[0]
            result = env.step(actions)
            ended = np.flatnonzero(result.terminated | result.truncated)
            if ended.size:
                for i, game in zip(ended, env.pop_finished()):  # this round's games, in env order
                    if not over[i]:
                        matches[i].game, over[i] = game, True
                        done(1)


def _referee(m: MatchGame, choice: str | Termination) -> None:
    if isinstance(choice, Termination):
        m.game.forfeit(choice)
        return
    try:
        m.game.push(choice)
    except IllegalMoveError:
        m.illegal_move = choice
        m.game.forfeit(Termination.ILLEGAL_MOVE)


def match_results(games: Sequence[MatchGame], a: str, b: str) -> dict[str, Any]:
    """Figures of a match from ``a``'s view: W/D/L, score, win rate (95 % interval), Elo, how games ended."""
    outcome = Counter()
    for m in games:
        winner = m.game.winner
        outcome["draws" if winner is None else "wins" if winner is m.a_colour else "losses"] += 1
    stats = match_stats(outcome["wins"], outcome["draws"], outcome["losses"])
    lengths = [m.game.ply for m in games]
    return {
        "player": a,
        "opponent": b,
        **stats.to_dict(),
        "terminations": dict(Counter(m.game.termination.name.lower() for m in games).most_common()),
        "game_length": {"mean": float(np.mean(lengths)), "min": min(lengths), "max": max(lengths)},
    }


def save_records(games: Sequence[MatchGame], a: str, b: str, directory: Path, *, start: int = 0) -> None:
    """Every game as ``NNNN.kif`` and ``NNNN.csa``, plus one JSON line per game in ``games.jsonl``
    (players, colours, result, termination, start SFEN and USI moves)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "games.jsonl", "a", encoding="utf-8") as index:
        for k, m in enumerate(games, start=start):
            black, white = m.names(a, b)
            stem = f"{k:04d}"
            (directory / f"{stem}.kif").write_text(m.game.to_kif(black, white), encoding="utf-8")
            (directory / f"{stem}.csa").write_text(m.game.to_csa(black, white), encoding="utf-8")
            index.write(json.dumps({
                "game": stem, "black": black, "white": white, "result": m.game.result.value,
                "termination": m.game.termination.name.lower(), "plies": m.game.ply,
                "illegal_move": m.illegal_move, "usi": m.game.to_usi_position(),
            }) + "\n")
