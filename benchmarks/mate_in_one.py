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
from rsshogi.core import Board, Move

from keisei.evaluation.opponents import checkpoint_player
from keisei.play.match import match_results, play_match
from keisei.play.players import Choice, HeuristicPlayer, Player, RandomPlayer
from keisei.shogi import Game

OPPONENTS = ("random", "heuristic")


def finishing(records: Path, opponent: str) -> dict[str, int]:
    """Over the records of the agent's games against ``opponent``, each game replayed once: ``games``;
    ``chances``, the agent's positions with a mate in one, and ``taken``, how many of them it mated in;
    ``mated``, its losses by checkmate, and ``avoidable``, how many of those it could have kept from
    being a mate in one: at its last move, a legal move after which the opponent had no mate in one
    (rsshogi's ``solve_mate_in_one`` after each legal move)."""
    counts = dict.fromkeys(("games", "chances", "taken", "mated", "avoidable"), 0)
    for line in records.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        counts["games"] += 1
        agent_black = record["black"] != opponent
        lost_by_mate = (record["termination"] == "checkmate"
                        and record["result"] == ("white_win" if agent_black else "black_win"))
        counts["mated"] += lost_by_mate
        start, _, moves = record["usi"].partition(" moves ")
        moves = moves.split()
        game = Game.from_usi_position(start, max_plies=10_000)
        for ply, usi in enumerate(moves):
            if lost_by_mate and ply == len(moves) - 2:  # the agent's move that let the mate in
                counts["avoidable"] += any(_leaves_no_mate(game.board.copy(), move)
                                           for move in game.board.legal_moves())
            mate_here = (ply % 2 == 0) == agent_black and game.board.solve_mate_in_one() is not None
            game.push(usi)
            counts["chances"] += mate_here
            counts["taken"] += mate_here and game.board.is_mated()
    return counts


def _leaves_no_mate(board: Board, move: Move) -> bool:
    board.push_move(move)
    return board.solve_mate_in_one() is None


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
            c = finishing(records, opponent)
            print(f"{run} vs {opponent}: {c['games']} games, {c['chances']} positions with a mate in one for the "
                  f"agent, mated in {c['taken']} ({c['taken'] / max(c['chances'], 1):.0%}); lost {c['mated']} by "
                  f"checkmate, {c['avoidable']} of them to a mate in one it could have avoided", flush=True)


if __name__ == "__main__":
    main()
