"""Elo: the logistic model, one match's figures (match_stats) and the fitted table (ratings)."""

from __future__ import annotations

import itertools
import math

import pytest

from keisei.evaluation.elo import (
    elo_from_score,
    expected_score,
    match_stats,
    rating_against,
    rating_errors,
    ratings,
)
from keisei.evaluation.report import format_match
from keisei.play.match import match_results, play_match
from keisei.play.players import RandomPlayer

Z = 1.959963984540054  # two-sided 95 % normal quantile


def wilson(successes: float, n: float) -> tuple[float, float]:
    """Wilson score interval, written out from its textbook form."""
    p = successes / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_elo_error(points: float, n: float) -> float:
    """The larger side of the Elo image of the Wilson interval of the score ``points / n``."""
    low, high = wilson(points, n)
    elo = elo_from_score(points / n)
    return max(elo_from_score(high) - elo, elo - elo_from_score(low))


# --- the model -------------------------------------------------------------------------------------


def test_elo_from_score_by_hand():
    assert elo_from_score(0.5) == pytest.approx(0.0, abs=1e-12)
    assert elo_from_score(0.75) == pytest.approx(400 * math.log10(3))  # odds 3:1
    assert elo_from_score(10 / 11) == pytest.approx(400.0)  # odds 10:1 is 400 points
    assert elo_from_score(0.25) == pytest.approx(-400 * math.log10(3))


@pytest.mark.parametrize("score", [0.01, 0.2, 0.5, 0.64, 0.9, 0.999])
def test_expected_score_inverts_elo_from_score(score):
    assert expected_score(elo_from_score(score)) == pytest.approx(score, rel=1e-12)


def test_expected_score_by_hand():
    assert expected_score(0.0) == 0.5
    assert expected_score(400.0) == pytest.approx(10 / 11)
    assert expected_score(-400.0) == pytest.approx(1 / 11)
    assert expected_score(200.0) + expected_score(-200.0) == pytest.approx(1.0)


# --- match_stats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("wins", "draws", "losses"), [(6, 2, 2), (3, 0, 1), (1, 5, 4), (40, 25, 35), (1, 0, 1)])
def test_match_stats_by_hand(wins, draws, losses):
    n = wins + draws + losses
    stats = match_stats(wins, draws, losses)
    assert (stats.games, stats.wins, stats.draws, stats.losses) == (n, wins, draws, losses)
    score = (wins + draws / 2) / n
    assert stats.score == pytest.approx(score)
    assert stats.win_rate == pytest.approx(wins / n)
    assert stats.elo == pytest.approx(-400 * math.log10(1 / score - 1), abs=1e-9)
    low, high = wilson(wins, n)
    assert (stats.win_rate_low, stats.win_rate_high) == (pytest.approx(low), pytest.approx(high))
    assert stats.elo_error == pytest.approx(wilson_elo_error(wins + draws / 2, n))
    assert stats.to_dict()["elo"] == stats.elo


def test_match_stats_worked_example():
    # 6 wins, 2 draws, 2 losses: score 0.7, odds 7:3.
    stats = match_stats(6, 2, 2)
    assert stats.score == pytest.approx(0.7)
    assert stats.elo == pytest.approx(400 * math.log10(7 / 3))  # about 147.2
    # Wilson interval of 6/10 (a textbook value): about (0.313, 0.832).
    assert stats.win_rate_low == pytest.approx(0.3127, abs=1e-3)
    assert stats.win_rate_high == pytest.approx(0.8318, abs=1e-3)
    # The score's interval is Wilson's for 7/10 (a textbook value): about (0.3968, 0.8922), i.e.
    # Elo -72.8 to +367.2 around +147.2: about 220 on either side.
    low, high = 0.3968, 0.8922
    assert stats.elo - stats.elo_error == pytest.approx(elo_from_score(low), abs=0.5)
    assert stats.elo + stats.elo_error == pytest.approx(elo_from_score(high), abs=0.5)
    assert stats.elo_error == pytest.approx(220.0, abs=0.5)


@pytest.mark.parametrize(("wins", "draws", "losses"), [(6, 2, 2), (0, 3, 7), (10, 0, 0), (5, 5, 5), (1, 0, 9)])
def test_match_stats_is_symmetric(wins, draws, losses):
    mine, theirs = match_stats(wins, draws, losses), match_stats(losses, draws, wins)
    assert mine.elo == pytest.approx(-theirs.elo, abs=1e-9)
    assert mine.elo_error == pytest.approx(theirs.elo_error)
    assert mine.score + theirs.score == pytest.approx(1.0)


def test_perfect_and_null_scores_give_finite_bounded_elo():
    perfect, null = match_stats(10, 0, 0), match_stats(0, 0, 10)
    assert (perfect.score, null.score) == (1.0, 0.0)
    # As if one more game were drawn: 10.5 / 11, odds 21:1.
    assert perfect.elo == pytest.approx(400 * math.log10(21))
    assert null.elo == pytest.approx(-400 * math.log10(21))
    for stats in (perfect, null):
        assert math.isfinite(stats.elo) and math.isfinite(stats.elo_error) and stats.elo_error > 0
    # More games, a higher bound; and a perfect score beats any score with a loss in it.
    assert match_stats(10, 0, 0).elo < match_stats(100, 0, 0).elo == pytest.approx(400 * math.log10(201))
    assert perfect.elo > match_stats(9, 0, 1).elo
    # Wilson for 10/10 by hand: high 1, low 1 / (1 + z^2 / n).
    assert perfect.win_rate_high == pytest.approx(1.0)
    assert perfect.win_rate_low == pytest.approx(1 / (1 + Z * Z / 10))
    assert null.win_rate_low == pytest.approx(0.0, abs=1e-12)
    assert null.win_rate_high == pytest.approx(1 - 1 / (1 + Z * Z / 10))


def test_perfect_score_interval_is_the_wilson_interval_with_the_virtual_draw():
    n = 10
    assert match_stats(n, 0, 0).elo_error == pytest.approx(wilson_elo_error(n + 0.5, n + 1))
    assert match_stats(0, 0, n).elo_error == pytest.approx(wilson_elo_error(0.5, n + 1))
    # Its lower end is below the Elo of the lower end of the plain 10/10 Wilson interval (honest, not tighter).
    stats = match_stats(n, 0, 0)
    assert stats.elo - stats.elo_error <= elo_from_score(wilson(n, n)[0])


def test_match_stats_needs_games():
    with pytest.raises(ValueError):
        match_stats(0, 0, 0)


def test_all_draws_have_an_honest_interval():
    stats = match_stats(0, 8, 0)
    assert stats.score == 0.5 and stats.elo == pytest.approx(0.0, abs=1e-12)
    assert stats.win_rate == 0.0 and stats.win_rate_low == 0.0
    # Not 0: 8 drawn games do not pin the Elo difference down. A draw counts half a win, so the
    # interval is Wilson's for 4/8 (about 0.215 to 0.785), the same as for 4 wins and 4 losses.
    assert stats.elo_error == pytest.approx(wilson_elo_error(4, 8))
    assert stats.elo_error == pytest.approx(match_stats(4, 0, 4).elo_error)
    assert 200 < stats.elo_error < 250


@pytest.mark.parametrize(("wins", "draws", "losses"), [(0, 2, 0), (1, 0, 1), (2, 0, 0), (0, 0, 2), (0, 1, 0),
                                                       (1, 1, 0)])
def test_a_couple_of_games_never_claim_precision(wins, draws, losses):
    stats = match_stats(wins, draws, losses)
    assert math.isfinite(stats.elo_error) and stats.elo_error > 350  # hundreds of points either way
    if draws == 2:  # two draws: the score's interval is Wilson's for 1/2, about 0.095 to 0.905
        assert stats.elo_error == pytest.approx(elo_from_score(wilson(1, 2)[1]))
        assert stats.elo_error == pytest.approx(392.5, abs=0.5)


@pytest.mark.parametrize(("wins", "losses"), [(6, 4), (30, 10), (3, 17), (99, 1), (1, 1)])
def test_without_draws_the_elo_interval_is_the_win_rate_interval(wins, losses):
    stats = match_stats(wins, 0, losses)
    elo_low, elo_high = elo_from_score(stats.win_rate_low), elo_from_score(stats.win_rate_high)
    assert stats.elo - stats.elo_error <= elo_low + 1e-9 and stats.elo + stats.elo_error >= elo_high - 1e-9
    assert stats.elo_error == pytest.approx(max(elo_high - stats.elo, stats.elo - elo_low))


def test_two_drawn_games_are_not_reported_as_elo_plus_minus_zero():
    """The real path: two games played to the ply limit (draws), their results and the summary line."""
    games = play_match(RandomPlayer(seed=1), RandomPlayer(seed=2), 2, max_plies=2, seed=0)
    results = match_results(games, "a", "b")
    assert (results["wins"], results["draws"], results["losses"]) == (0, 2, 0)
    assert {"elo", "elo_error", "win_rate_low", "win_rate_high"} <= results.keys()
    line = format_match(results)
    assert "Elo +0 ± 393" in line, line


# --- ratings ---------------------------------------------------------------------------------------


def games_between(a: str, b: str, wins: int, draws: int, losses: int) -> list[tuple[str, str, float]]:
    return [(a, b, 1.0)] * wins + [(a, b, 0.5)] * draws + [(a, b, 0.0)] * losses


@pytest.mark.parametrize(("wins", "draws", "losses"), [(6, 2, 2), (3, 4, 9), (1, 0, 1)])
def test_two_players_reproduce_the_head_to_head_elo(wins, draws, losses):
    table = ratings(["A", "B"], games_between("A", "B", wins, draws, losses))
    assert table["A"] == pytest.approx(0.0, abs=1e-9)  # the first player is the default anchor
    assert table["A"] - table["B"] == pytest.approx(match_stats(wins, draws, losses).elo, abs=1e-3)
    # Listing the games from B's side changes nothing.
    flipped = [(b, a, 1.0 - s) for a, b, s in games_between("A", "B", wins, draws, losses)]
    assert ratings(["A", "B"], flipped) == pytest.approx(table, abs=1e-3)


def test_consistent_chain_of_three():
    # A scores 75 % against B, B 75 % against C; A against C exactly what the model then expects:
    # 2 * elo(0.75) points, i.e. odds 9:1 (90 %). The maximum-likelihood table is then exact.
    step = elo_from_score(0.75)
    assert expected_score(2 * step) == pytest.approx(0.9)
    results = (games_between("A", "B", 15, 0, 5) + games_between("B", "C", 15, 0, 5)
               + games_between("A", "C", 9, 0, 1))
    table = ratings(["A", "B", "C"], results)
    assert table["A"] == pytest.approx(0.0, abs=1e-9)
    assert table["A"] - table["B"] == pytest.approx(step, abs=0.5)
    assert table["B"] - table["C"] == pytest.approx(step, abs=0.5)
    # Another anchor shifts the table, differences stay.
    anchored = ratings(["A", "B", "C"], results, anchor="B")
    assert anchored["B"] == pytest.approx(0.0, abs=1e-9)
    assert anchored["A"] - anchored["C"] == pytest.approx(table["A"] - table["C"], abs=1e-3)


def test_draws_count_half():
    # Two draws are worth one win and one loss.
    drawn = ratings(["A", "B", "C"], games_between("A", "B", 0, 2, 0) + games_between("B", "C", 3, 0, 1))
    split = ratings(["A", "B", "C"], games_between("A", "B", 1, 0, 1) + games_between("B", "C", 3, 0, 1))
    assert drawn == pytest.approx(split, abs=1e-3)
    assert drawn["B"] == pytest.approx(0.0, abs=1e-3)
    assert drawn["C"] == pytest.approx(-elo_from_score(0.75), abs=0.5)


def test_player_who_lost_every_game_gets_a_finite_lowest_rating():
    results = (games_between("A", "B", 6, 0, 4) + games_between("A", "D", 5, 0, 0)
               + games_between("B", "D", 5, 0, 0))
    table = ratings(["A", "B", "D"], results)
    assert all(math.isfinite(r) for r in table.values())
    assert table["D"] < table["B"] < table["A"] == pytest.approx(0.0, abs=1e-9)
    # And one who won every game is finite and on top.
    table = ratings(["A", "B", "D"], [(a, b, 1.0 - s) for a, b, s in results])
    assert all(math.isfinite(r) for r in table.values())
    assert table["D"] > table["B"] > table["A"]


def test_two_players_with_a_perfect_score_agree_with_match_stats():
    table = ratings(["A", "B"], games_between("A", "B", 10, 0, 0))
    assert table["A"] - table["B"] == pytest.approx(match_stats(10, 0, 0).elo, abs=1e-3)


def test_an_anchor_that_lost_every_game_gets_a_virtual_draw_too():
    """The first player (the anchor) lost all its games while the others split theirs: without a
    virtual draw for the anchor its maximum-likelihood rating is -infinity, and the table drifted
    with the number of iterations (1047, 1288, 1529 for B at 500, 2000, 8000). The virtual draw is
    shared among the opponents met, so the table does not depend on which player is the anchor."""
    results = (games_between("A", "B", 0, 0, 10) + games_between("A", "C", 0, 0, 10)
               + games_between("B", "C", 6, 0, 4))
    table = ratings(["A", "B", "C"], results)
    assert ratings(["A", "B", "C"], results, iterations=8000) == pytest.approx(table, abs=1e-6)
    assert table["A"] == pytest.approx(0.0, abs=1e-9) and table["B"] > table["C"] > table["A"]
    other = ratings(["B", "C", "A"], results)
    assert {p: other[p] - other["A"] for p in other} == pytest.approx(table, abs=1e-3)


def test_players_without_games_are_not_rated_and_unlinked_players_are_refused():
    results = games_between("A", "B", 3, 1, 2)
    table = ratings(["A", "B", "C"], results)  # C never played: e.g. a round robin interrupted early
    assert set(table) == {"A", "B"}
    assert table["A"] - table["B"] == pytest.approx(match_stats(3, 1, 2).elo, abs=1e-3)
    assert set(ratings(["C", "A", "B"], results)) == {"A", "B"}  # the anchor: the first player with a game
    with pytest.raises(ValueError, match="C"):
        ratings(["A", "B", "C", "D"], results + games_between("C", "D", 2, 0, 1))
    with pytest.raises(ValueError, match="anchor"):
        ratings(["A", "B", "C"], results, anchor="C")


# --- rating_against: one player against opponents of fixed ratings ---------------------------------

#: 400 / ln 10: Elo points per unit of natural-log odds (the logistic model's slope is its inverse).
SCALE = 400 / math.log(10)


def scores(wins: int, draws: int, losses: int) -> list[float]:
    return [1.0] * wins + [0.5] * draws + [0.0] * losses


def test_rating_against_recovers_a_known_rating():
    # 75 % against a 0-rated opponent: odds 3:1, i.e. 400 log10(3) = +190.8.
    games = [("B", s) for s in scores(15, 0, 5)]
    rating, _ = rating_against({"B": 0.0}, games)
    assert rating == pytest.approx(400 * math.log10(3), abs=0.01)
    assert rating == pytest.approx(190.85, abs=0.01)
    # The opponent rated 300 points higher: the same score is worth 300 points more.
    assert rating_against({"B": 300.0}, games)[0] == pytest.approx(300 + rating, abs=0.01)
    # Draws count half: 10 wins and 10 draws out of 20 is the same 75 %.
    assert rating_against({"B": 0.0}, [("B", s) for s in scores(10, 10, 0)])[0] == pytest.approx(rating, abs=0.01)
    # One opponent: the head-to-head Elo of match_stats, shifted by the opponent's rating.
    for wins, draws, losses in [(3, 4, 9), (6, 2, 2), (1, 0, 1)]:
        assert rating_against({"B": -50.0}, [("B", s) for s in scores(wins, draws, losses)])[0] == \
            pytest.approx(-50 + match_stats(wins, draws, losses).elo, abs=0.01)


def test_rating_against_is_the_root_of_the_score_equation():
    """Against several opponents the maximum-likelihood rating makes the expected points equal the
    points scored (the derivative of the log-likelihood is points - expected points)."""
    fixed = {"weak": -250.0, "even": 40.0, "strong": 610.0}
    games = ([("weak", s) for s in scores(9, 2, 1)] + [("even", s) for s in scores(4, 3, 5)]
             + [("strong", s) for s in scores(1, 1, 8)])
    rating, error = rating_against(fixed, games)
    points = sum(s for _, s in games)
    expected = sum(expected_score(rating - fixed[o]) for o, _ in games)
    assert expected == pytest.approx(points, abs=1e-6)
    # A root, and the only one: a point more or less moves the expected points off the score.
    assert sum(expected_score(rating + 1 - fixed[o]) for o, _ in games) > points
    assert sum(expected_score(rating - 1 - fixed[o]) for o, _ in games) < points
    # The half-width is Z over the square root of the observed information (in Elo units).
    info = sum(expected_score(rating - fixed[o]) * (1 - expected_score(rating - fixed[o])) for o, _ in games)
    assert error == pytest.approx(Z * SCALE / math.sqrt(info), rel=1e-6)
    # The order of the games changes nothing.
    assert rating_against(fixed, games[::-1]) == pytest.approx((rating, error), abs=1e-6)


def test_rating_against_error_shrinks_as_one_over_sqrt_games():
    errors = []
    for n in (20, 80, 320, 1280):
        rating, error = rating_against({"B": 0.0}, [("B", s) for s in scores(3 * n // 4, 0, n // 4)])
        assert rating == pytest.approx(400 * math.log10(3), abs=0.01)  # the same 75 % score each time
        errors.append(error)
    for small, large in itertools.pairwise(errors):
        assert small / large == pytest.approx(2.0, rel=1e-6)  # 4 times the games, half the error
    # The delta method for a binomial score: var(score) = s (1 - s) / n, d Elo / d score = SCALE / (s (1 - s)).
    assert errors[0] == pytest.approx(Z * SCALE / math.sqrt(20 * 0.75 * 0.25), rel=1e-6)  # about 176 points
    # Many games: the same half-width as the Elo image of the score's (Wilson) interval of match_stats.
    assert errors[-1] == pytest.approx(match_stats(960, 0, 320).elo_error, rel=0.02)


def test_rating_against_a_perfect_or_null_score_is_finite():
    fixed = {"B": 100.0, "C": 200.0}
    won = [("B", 1.0)] * 5 + [("C", 1.0)] * 5
    rating, error = rating_against(fixed, won)
    assert math.isfinite(rating) and math.isfinite(error) and error > 0
    assert rating > 200.0  # above every opponent it beat
    assert rating < 200.0 + 2000.0  # not pinned to the edge of a search range
    # With one opponent: match_stats' virtual draw, (10 + 1/2) / (10 + 1).
    assert rating_against({"B": 100.0}, [("B", 1.0)] * 10)[0] == pytest.approx(100 + match_stats(10, 0, 0).elo,
                                                                                abs=0.01)
    # Exactly the rating with one virtual draw shared between the two opponents met: 10.5 points
    # expected from 5.5 games against each.
    expected = sum(5.5 * expected_score(rating - r) for r in (100.0, 200.0))
    assert expected == pytest.approx(10 + 0.5, abs=1e-6)
    # A null score mirrors it.
    lost_rating, lost_error = rating_against(fixed, [(o, 0.0) for o, _ in won])
    assert lost_rating < 100.0 and math.isfinite(lost_rating)
    assert lost_rating - 150.0 == pytest.approx(-(rating - 150.0), abs=0.01)  # symmetric about their mean
    assert lost_error == pytest.approx(error, rel=1e-6)
    # More wins, a higher (still finite) rating.
    assert rating_against(fixed, won * 4)[0] > rating


# --- rating_errors: the 95 % half-widths of a fitted table -----------------------------------------


@pytest.mark.parametrize(("wins", "draws", "losses"), [(30, 0, 10), (12, 6, 22), (50, 0, 50)])
def test_rating_errors_of_two_players_is_the_delta_method(wins, draws, losses):
    results = games_between("A", "B", wins, draws, losses)
    table = ratings(["A", "B"], results, anchor="A")
    errors = rating_errors(table, results, "A")
    assert errors["A"] == 0.0
    n = wins + draws + losses
    s = (wins + draws / 2) / n
    # Elo = SCALE ln(s / (1 - s)); var(s) = s (1 - s) / n: the delta method's standard error.
    delta = SCALE / (s * (1 - s)) * math.sqrt(s * (1 - s) / n)
    assert errors["B"] == pytest.approx(Z * delta, rel=1e-3)
    # Anchored on B instead: A's error is the same (an error of a difference).
    table_b = ratings(["A", "B"], results, anchor="B")
    assert rating_errors(table_b, results, "B") == pytest.approx({"B": 0.0, "A": errors["B"]}, rel=1e-3)


def test_rating_errors_grow_with_distance_along_a_chain():
    players = ["A", "B", "C", "D", "E"]
    # A pure chain: each player plays only its neighbours, 20 games at 60 %.
    chain = [r for a, b in itertools.pairwise(players) for r in games_between(a, b, 12, 0, 8)]
    table = ratings(players, chain, anchor="A")
    errors = rating_errors(table, chain, "A")
    assert errors["A"] == 0.0
    link = Z * SCALE / math.sqrt(20 * 0.6 * 0.4)
    # The links are independent estimates: their variances add up along the chain.
    for k, p in enumerate(players):
        assert errors[p] == pytest.approx(link * math.sqrt(k), rel=1e-3)
    # Anchored in the middle: 0 there, growing both ways.
    mid = rating_errors(ratings(players, chain, anchor="C"), chain, "C")
    assert mid["C"] == 0.0
    assert mid["A"] > mid["B"] > 0 and mid["E"] > mid["D"] > 0
    assert mid["B"] == pytest.approx(link, rel=1e-3) and mid["E"] == pytest.approx(link * math.sqrt(2), rel=1e-3)
    # The ladder's design (next neighbours too): more games, smaller errors, still growing along it.
    ladder = chain + [r for a, b in zip(players, players[2:]) for r in games_between(a, b, 14, 0, 6)]
    table = ratings(players, ladder, anchor="A")
    errors_ladder = rating_errors(table, ladder, "A")
    assert [errors_ladder[p] for p in players] == sorted(errors_ladder[p] for p in players)
    assert len({round(errors_ladder[p], 6) for p in players}) == 5
    for p in players[2:]:
        assert errors_ladder[p] < errors[p]
