"""How well an agent finishes its games: mates in one it plays, and what a mate-in-one check adds.

(a) From the game records of a run's final evaluation (``benchmarks/learning.py`` writes them to
    ``RUN/final_eval/{random,heuristic}/games/games.jsonl``): of the positions where the agent
    was to move and had a move that mates at once (rsshogi's ``solve_mate_in_one``), how many it
    mated in; and of the games the agent lost by checkmate, in how many its last move let the
    opponent mate at once while another move would have left no mate in one. Reads records only;
    any encoding version.
(b) With ``--play``: the agent against the opponent, side by side with the same agent behind a
    mate-in-one check (it plays a mating move whenever there is one, else the network's move).
    Both matches play the same openings with the same seeds, colours alternating, greedy, at most
    ``--max-plies`` plies (a game cut there is a draw). The checkpoint must be of this code's
    encoding.

    python benchmarks/mate_in_one.py RUN_DIR [RUN_DIR ...]
    python benchmarks/mate_in_one.py RUN_DIR --play [--opponent random|heuristic] [--games 100]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from keisei.evaluation import checkpoint_player
from keisei.match import match_results, play_match
from keisei.players import Choice, HeuristicPlayer, Player, RandomPlayer
from keisei.shogi import Game

OPPONENTS = ("random", "heuristic")


def mates_taken(records: Path, opponent: str) -> tuple[int, int, int]:
    """(games, the agent's positions with a mate in one, how many of them it mated in) over the
    records of its games against ``opponent``."""
    chances = taken = games = 0
    for line in records.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        games += 1
        agent_black = record["black"] != opponent
        start, _, moves = record["usi"].partition(" moves ")
        game = Game.from_usi_position(start, max_plies=10_000)
        for ply, usi in enumerate(moves.split()):
            if (ply % 2 == 0) == agent_black and game.board.solve_mate_in_one() is not None:
                chances += 1
                game.push(usi)
                taken += game.board.is_mated()
            else:
                game.push(usi)
    return games, chances, taken


def mates_walked_into(records: Path, opponent: str) -> tuple[int, int]:
    """(the agent's losses by checkmate, how many of them it could have kept from being a mate in one)
    over the records of its games against ``opponent``: at the agent's last move, a legal move after
    which the opponent had no mate in one (rsshogi's ``solve_mate_in_one`` after each legal move)."""
    mated = avoidable = 0
    for line in records.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        agent_black = record["black"] != opponent
        if record["termination"] != "checkmate" or record["result"] != ("white_win" if agent_black else "black_win"):
            continue
        mated += 1
        start, _, moves = record["usi"].partition(" moves ")
        game = Game.from_usi_position(start, max_plies=10_000)
        for usi in moves.split()[:-2]:
            game.push(usi)
        board = game.board.copy()  # the agent to move, before the move that let the mate in
        for move in board.legal_moves():
            board.push_move(move)
            safe = board.solve_mate_in_one() is None
            board.undo_move(move)
            if safe:
                avoidable += 1
                break
    return mated, avoidable


class MateInOneFirst(Player):
    """``agent``'s moves, but a move that mates at once wherever there is one."""

    def __init__(self, agent: Player) -> None:
        self.agent = agent
        self.name = f"{agent.name}+mate1"

    def reseed(self, seed: int) -> None:
        self.agent.reseed(seed)

    def choose(self, games: Sequence[Game]) -> list[Choice]:
        choices = self.agent.choose(games)
        for i, game in enumerate(games):
            mate = game.board.solve_mate_in_one()
            if mate is not None:
                choices[i] = mate.to_usi()
        return choices


def play(checkpoint: str, opponent: str, games: int, max_plies: int, seed: int) -> None:
    agent = checkpoint_player(checkpoint, torch.device("cpu"), 0.0, seed, name="agent")
    for player in (agent, MateInOneFirst(agent)):
        other = (RandomPlayer if opponent == "random" else HeuristicPlayer)(seed=seed + 1)
        player.reseed(seed)
        r = match_results(play_match(player, other, games, max_plies=max_plies, seed=seed), player.name, other.name)
        print(f"{player.name:12s} vs {other.name}: +{r['wins']} ={r['draws']} -{r['losses']}, win rate "
              f"{r['win_rate']:.3f} [{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}], mean length "
              f"{r['game_length']['mean']:.0f} plies, ended by {r['terminations']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run dirs (with --play: one run dir or checkpoint)")
    parser.add_argument("--play", action="store_true", help="(b): play the two matches")
    parser.add_argument("--opponent", choices=OPPONENTS, default="random")
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--max-plies", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.play:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        play(args.runs[0], args.opponent, args.games, args.max_plies, args.seed)
        return
    for run in args.runs:
        for opponent in OPPONENTS:
            records = Path(run) / "final_eval" / opponent / "games" / "games.jsonl"
            if not records.is_file():
                print(f"{run} vs {opponent}: no records at {records}")
                continue
            games, chances, taken = mates_taken(records, opponent)
            mated, avoidable = mates_walked_into(records, opponent)
            print(f"{run} vs {opponent}: {games} games, {chances} positions with a mate in one for the agent, "
                  f"mated in {taken} ({taken / max(chances, 1):.0%}); lost {mated} by checkmate, {avoidable} "
                  "of them to a mate in one it could have avoided", flush=True)


if __name__ == "__main__":
    main()
