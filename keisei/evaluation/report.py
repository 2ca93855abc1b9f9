"""Results as text and metrics: the console line of a match, the round robin's summary, the
gauntlet's and the ladder's markdown tables, and the metrics record of a periodic evaluation
(``eval/...``, ``eval/ladder_elo``, ...).
"""

from __future__ import annotations

from typing import Any


def format_match(results: dict[str, Any]) -> str:
    """One line for a match's results: games, +W =D -L, score, win rate [95 %], Elo, how the games
    ended and their mean length."""
    r = results
    ends = ", ".join(f"{k} {v}" for k, v in r["terminations"].items())
    return (f"{r['player']} vs {r['opponent']}: {r['games']} games, +{r['wins']} ={r['draws']} -{r['losses']}, "
            f"score {r['score']:.3f}, win rate {r['win_rate']:.3f} "
            f"[{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}], "
            f"Elo {r['elo']:+.0f} ± {r['elo_error']:.0f}; ended by: {ends}; "
            f"length {r['game_length']['mean']:.0f} plies")


def format_round_robin(summary: dict[str, Any]) -> str:
    """A round robin's results: a line per pairing, then the Elo table (best first)."""
    lines = [format_match(pairing) for pairing in summary["pairings"]]
    lines.append("Elo (first player at 0): " + ", ".join(f"{k} {v:+.0f}" for k, v in summary["elo"].items()))
    return "\n".join(lines)


def gauntlet_table(player: str, games: int, matches: list[dict[str, Any]]) -> str:
    """The gauntlet's markdown table: a row per opponent with +W =D -L, win rate [95 %] and Elo, and
    whether the agent trained against it when the matches say (``held_out``)."""
    marked = all("held_out" in r for r in matches)
    rows = ["| opponent | games | +W =D -L | win rate [95 %] | Elo |" + (" held out |" if marked else ""),
            "| --- | ---: | ---: | ---: | ---: |" + (" :---: |" if marked else "")]
    for r in matches:
        rows.append(f"| {r['opponent']} | {r['games']} | +{r['wins']} ={r['draws']} -{r['losses']} | "
                    f"{r['win_rate']:.3f} [{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}] | "
                    f"{r['elo']:+.0f} ± {r['elo_error']:.0f} |" + (f" {_held_out(r)} |" if marked else ""))
    return f"{player}, {games} games per opponent\n\n" + "\n".join(rows) + "\n"


def _held_out(results: dict[str, Any]) -> str:
    return "yes" if results["held_out"] else "no (trained against)"


def eval_metrics(results: dict[str, Any], global_step: int, others: dict[str, dict[str, Any]] | None = None,
                 *, ladder: bool = False) -> dict[str, float]:
    """The metrics record of a periodic evaluation: ``eval/win_rate``, ... of the match against
    ``opponent`` (``results``), or with ``ladder`` the network's rating on the ladder (``results``:
    ``keisei.evaluation.ladder.rate_agent``'s), and ``eval/<name>/win_rate``, ... of each match against
    one of ``evaluation.periodic_opponents`` (``others``: results by preset name)."""
    main = _ladder_metrics(results) if ladder else _match_metrics(results, "eval/")
    record = {"eval/global_step": global_step, **main}
    for name, other in (others or {}).items():
        record.update(_match_metrics(other, f"eval/{name}/"))
    return record


def _match_metrics(results: dict[str, Any], prefix: str) -> dict[str, float]:
    """A match's figures as metrics named ``<prefix>win_rate``, ``<prefix>elo``, ..."""
    return {f"{prefix}win_rate": results["win_rate"], f"{prefix}score": results["score"],
            f"{prefix}draw_rate": results["draws"] / results["games"], f"{prefix}elo": results["elo"],
            f"{prefix}elo_error": results["elo_error"], f"{prefix}games": results["games"],
            f"{prefix}game_length": results["game_length"]["mean"]}


def _ladder_metrics(rating: dict[str, Any]) -> dict[str, float]:
    """A ladder rating as metrics: ``eval/ladder_elo``, its 95 % half-width and the games it rests on."""
    return {"eval/ladder_elo": rating["elo"], "eval/ladder_elo_error": rating["elo_error"],
            "eval/ladder_games": rating["games"]}


def ladder_table(player: str, elo: float, error: float, matches: list[dict[str, Any]]) -> str:
    """The ladder rating's markdown table: the rating, then a row per rung played (its rating, the
    agent's +W =D -L and score, and whether the agent trained against it)."""
    rows = ["| rung | rung Elo | games | +W =D -L | score | held out |", "| --- | ---: | ---: | ---: | ---: | :---: |"]
    for m in matches:
        rows.append(f"| {m['opponent']} | {m['rung_elo']:.0f} | {m['games']} | +{m['wins']} ={m['draws']} "
                    f"-{m['losses']} | {m['score']:.3f} | {_held_out(m)} |")
    return f"{player}: ladder Elo {elo:.0f} ± {error:.0f} (95 %)\n\n" + "\n".join(rows) + "\n"
