"""The one Elo implementation: the logistic model P(A beats B) = 1 / (1 + 10^((R_B - R_A) / 400)).

``match_stats`` gives the head-to-head figures of one match (score, win rate with a 95 %
interval, Elo difference with its error, taken from the score's 95 % interval); ``ratings``
fits ratings for many players from all their pairings (maximum likelihood, draws counted as
half a win for each side), which for two players reduces to the same Elo difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054


def elo_from_score(score: float) -> float:
    """Elo difference that makes ``score`` (0 < score < 1) the expected score."""
    return -400.0 * math.log10(1.0 / score - 1.0) + 0.0  # + 0.0: an even score is 0, not -0


def expected_score(diff: float) -> float:
    """Expected score of a player rated ``diff`` points above its opponent."""
    return 1.0 / (1.0 + 10.0 ** (-diff / 400.0))


@dataclass(frozen=True)
class MatchStats:
    games: int
    wins: int
    draws: int
    losses: int
    score: float  # (wins + draws / 2) / games
    win_rate: float  # wins / games
    win_rate_low: float  # 95 % Wilson interval
    win_rate_high: float
    elo: float  # Elo difference of the player over its opponent
    elo_error: float  # the larger side of its 95 % interval (from the score's Wilson interval)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _wilson(successes: float, n: float) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (``successes`` may be fractional: a draw is half a win)."""
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    # Exact at the edges (rounding would leave 0 wins with a lower bound of 1e-17).
    low = 0.0 if successes == 0 else min(p, centre - half)
    high = 1.0 if successes == n else max(p, centre + half)
    return low, high


def match_stats(wins: int, draws: int, losses: int) -> MatchStats:
    """Head-to-head figures from one player's wins, draws and losses.

    The Elo error comes from the same Wilson interval as the win rate, applied to the score (a
    draw counted as half a win): the Elo difference's 95 % interval is the Elo of the score's
    interval ends, and ``elo_error`` is the larger of its two sides, so ``elo ± elo_error`` covers
    it. Without draws this is exactly the win rate's interval; with draws it is conservative (the
    binomial variance is the largest a score with that mean can have). It is never zero: two drawn
    games say little, and 2 out of 2 no more. A perfect or null score has no finite Elo: it is then
    estimated, interval included, as if one more game had been drawn, (points + 1/2) / (n + 1)
    (the same virtual draw ``ratings`` uses).
    """
    n = wins + draws + losses
    if n == 0:
        raise ValueError("match_stats needs at least one game")
    points = wins + 0.5 * draws
    score = points / n
    games = n
    if score in (0.0, 1.0):
        points, games = points + 0.5, n + 1
    elo = elo_from_score(points / games)
    score_low, score_high = _wilson(points, games)
    elo_error = max(elo_from_score(score_high) - elo, elo - elo_from_score(score_low))
    low, high = _wilson(wins, n)
    return MatchStats(n, wins, draws, losses, score, wins / n, low, high, elo, elo_error)


def ratings(players: Sequence[str], results: Sequence[tuple[str, str, float]], anchor: str | None = None,
            iterations: int = 2000) -> dict[str, float]:
    """Maximum-likelihood Elo ratings from game results ``(player_a, player_b, score_of_a)``.

    Scores are 1, 0.5 or 0 per game. ``anchor`` (default: the first player with a game) is rated 0.
    Minorisation-maximisation updates of Bradley-Terry strengths. Only players with at least one
    game are rated (an interrupted round robin may leave some without). A player with no points
    at all (or every point), the anchor included, has no finite maximum-likelihood rating: it gets
    one virtual draw, shared equally among the opponents it met, as in ``match_stats``; two such
    players who met share one draw between them (the larger share). Which players get one is decided
    on the real games alone, so the order of ``players`` does not matter.
    Players that no chain of games links to the anchor cannot be rated against it: a ValueError.
    """
    played = [p for p in players if any(p in (a, b) for a, b, _ in results)]
    if not played:
        return {}
    anchor = anchor if anchor is not None else played[0]
    if anchor not in played:
        raise ValueError(f"the anchor {anchor!r} has played no game")
    index = {p: i for i, p in enumerate(played)}
    points = {p: 0.0 for p in played}
    games = {p: 0.0 for p in played}
    opponents: dict[str, list[str]] = {p: [] for p in played}
    for a, b, s in results:
        points[a] += s
        points[b] += 1.0 - s
        games[a] += 1
        games[b] += 1
        for x, y in ((a, b), (b, a)):
            if y not in opponents[x]:
                opponents[x].append(y)
    _check_connected(anchor, opponents)
    weights: dict[frozenset[str], float] = {}  # a virtual draw's weight by pair: a pair of two such players gets one
    for p in [p for p in played if points[p] in (0.0, games[p])]:
        for q in opponents[p]:
            pair = frozenset((p, q))
            weights[pair] = max(weights.get(pair, 0.0), 1.0 / len(opponents[p]))
    virtual = [(*sorted(pair), 0.5 * w, w) for pair, w in weights.items()]  # (a, b, score of a, games)
    wins = [0.0] * len(played)
    pair_games: dict[tuple[int, int], float] = {}
    for a, b, s, n in [*((a, b, s, 1.0) for a, b, s in results), *virtual]:
        i, j = index[a], index[b]
        wins[i] += s
        wins[j] += n - s
        pair_games[(i, j)] = pair_games.get((i, j), 0.0) + n
    strength = _bradley_terry(wins, pair_games, index[anchor], iterations)
    return {p: 400.0 * math.log10(strength[index[p]]) for p in played}


def _bradley_terry(wins: list[float], pair_games: dict[tuple[int, int], float], anchor: int,
                   iterations: int) -> list[float]:
    """Bradley-Terry strengths by minorisation-maximisation updates, from each player's (fractional)
    wins and the games played by each pair of players (by index); the ``anchor``'s strength is 1."""
    strength = [1.0] * len(wins)
    for _ in range(iterations):
        new = []
        for i in range(len(wins)):
            denom = 0.0
            for (a, b), n in pair_games.items():
                if i in (a, b):
                    denom += n / (strength[a] + strength[b])
            new.append(wins[i] / denom)
        scale = new[anchor]
        strength = [s / scale for s in new]
    return strength


def _check_connected(anchor: str, opponents: dict[str, list[str]]) -> None:
    """A ValueError naming the players that no chain of games (``opponents``: whom each met) links to ``anchor``."""
    reached, frontier = {anchor}, [anchor]
    while frontier:
        for q in opponents[frontier.pop()]:
            if q not in reached:
                reached.add(q)
                frontier.append(q)
    apart = [p for p in opponents if p not in reached]
    if apart:
        raise ValueError(f"no games link {', '.join(apart)} to {anchor!r}: no rating relative to it")


def rating_errors(ratings_: dict[str, float], results: Sequence[tuple[str, str, float]],
                  anchor: str) -> dict[str, float]:
    """95 % half-widths of maximum-likelihood ``ratings_`` (from ``ratings``) relative to ``anchor``
    (0 for it): the inverse of the likelihood's observed information, with the anchor held fixed."""
    import numpy as np

    others = [p for p in ratings_ if p != anchor]
    index = {p: i for i, p in enumerate(others)}
    info = np.zeros((len(others), len(others)))
    c = (math.log(10) / 400.0) ** 2
    for a, b, _ in results:
        p = expected_score(ratings_[a] - ratings_[b])
        w = c * p * (1 - p)
        for x in (a, b):
            if x in index:
                info[index[x], index[x]] += w
        if a in index and b in index:
            info[index[a], index[b]] -= w
            info[index[b], index[a]] -= w
    cov = np.linalg.inv(info)
    return {anchor: 0.0, **{p: Z95 * math.sqrt(cov[i, i]) for p, i in index.items()}}


def rating_against(fixed: dict[str, float], results: Sequence[tuple[str, float]]) -> tuple[float, float]:
    """The maximum-likelihood rating of one player, and its 95 % half-width, from its games
    ``(opponent, score)`` against opponents of ``fixed`` ratings (the scale is taken as exact). A
    perfect or null score gets one virtual draw shared among the opponents met, as in ``ratings``."""
    games = [(fixed[o], s, 1.0) for o, s in results]
    points = sum(s for _, s, _ in games)
    if points in (0.0, len(games)):
        met = sorted({o for o, _ in results})
        games += [(fixed[o], 0.5 / len(met), 1.0 / len(met)) for o in met]
    low, high = min(r for r, _, _ in games) - 2000.0, max(r for r, _, _ in games) + 2000.0
    for _ in range(100):  # bisection on the score equation: expected points = points
        mid = (low + high) / 2
        if sum(n * expected_score(mid - r) - s for r, s, n in games) < 0:
            low = mid
        else:
            high = mid
    rating = (low + high) / 2
    info = sum(n * expected_score(rating - r) * (1 - expected_score(rating - r)) for r, _, n in games)
    return rating, Z95 * 400.0 / math.log(10) / math.sqrt(info)
