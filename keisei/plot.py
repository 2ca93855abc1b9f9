"""Pictures of runs and games.

    python -m keisei.plot RUN_DIR [--out FILE.png]    # the run's metrics.jsonl as a PNG (default RUN_DIR/metrics.png)
    python -m keisei.plot RUN_DIR... --opponent NAME [--out FILE.png]
                                                     # the runs' periodic win rates against NAME over
                                                     # training time, a curve per run, in one panel
    python -m keisei.plot RECORD [--out FILE.svg]     # a game record's final position (KIF, CSA, or a
                                                     # games.jsonl line as games.jsonl:N)

N in games.jsonl:N is a line number, counted from 1 (line 1 is the file's first game, 0000.kif
in an evaluation's games/ dir). Bad input (a missing file, a line number outside the file, a file
that is not what its name says) gives one line ``Error: ...`` naming the file, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

# Panels: (title, [(metric key, label)]); panels whose metrics are absent are left out.
PANELS = [
    ("policy", [("losses/policy_loss", "policy loss"), ("losses/entropy", "entropy")]),
    ("value", [("losses/value_loss", "value loss"), ("losses/explained_variance", "explained variance")]),
    ("update size", [("losses/approx_kl", "approx KL"), ("losses/clipfrac", "clip fraction")]),
    ("self-play outcomes", [("games/black_win", "black wins"), ("games/white_win", "white wins"),
                            ("games/draw", "draws")]),
    ("game length (plies)", [("games/length_mean", "mean")]),
    ("throughput (env steps/s)", [("charts/SPS", "steps/s")]),
]
#: The panels of supervised training (``algorithm=supervised``: records with ``val/...`` metrics), each
#: measure on the update's training batch and on the held-out positions.
SUPERVISED_PANELS = [
    ("policy loss (cross-entropy)", [("losses/policy_loss", "train"), ("val/policy_loss", "validation")]),
    ("value loss (MSE)", [("losses/value_loss", "train"), ("val/value_loss", "validation")]),
    ("move accuracy", [("losses/accuracy", "train"), ("val/accuracy", "validation")]),
    ("value error", [("val/value_error", "validation: mean |value - target|")]),
    ("throughput (positions/s)", [("charts/SPS", "positions/s")]),
]
EVAL_PANEL = ("periodic evaluation", [("eval/win_rate", "win rate"), ("eval/score", "score"),
                                      ("eval/draw_rate", "draw rate")])
_OTHER_WIN_RATE = re.compile(r"eval/(.+)/win_rate")
#: A panel: its title and what draws it into an axes (curves, labels of the x axis).
Panel = tuple[str, Callable[[Any], None]]


class PlotError(ValueError):
    """Input that cannot be drawn; the message is one line naming the file (and the line, where one is at fault)."""


def _read_text(path: Path, encodings: tuple[str, ...] = ("utf-8",)) -> str:
    """The text of ``path`` in the first of ``encodings`` that decodes it."""
    data = path.read_bytes()
    if b"\x00" not in data:  # no text file holds NUL bytes, though Shift-JIS would decode them
        for encoding in encodings:
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                pass
    names = {"utf-8": "UTF-8", "shift_jis": "Shift-JIS"}
    raise PlotError(f"{path}: not a text file (not {' or '.join(names.get(e, e) for e in encodings)})")


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training records, evaluation records) of a run dir's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run dir?)")
    train, evals = [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlotError(f"{path}:{number}: not a JSON line ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise PlotError(f"{path}:{number}: not a JSON object")
        (train if "global_step" in record else evals).append(record)
    return train, evals


def eval_opponents(evals: list[dict[str, Any]]) -> list[str]:
    """The ``evaluation.periodic_opponents`` of a run's evaluation records (``eval/<name>/win_rate``),
    in the order they first appear."""
    names: dict[str, None] = {}
    for record in evals:
        for key in record:
            match = _OTHER_WIN_RATE.fullmatch(key)
            if match:
                names.setdefault(match[1])
    return list(names)


def main_opponent(run_dir: Path) -> str | None:
    """The name of the run's periodic-evaluation ``opponent`` (from its config.yaml), if known."""
    import yaml

    try:
        opponent = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["opponent"]
        return str(opponent.get("name") or opponent["kind"])
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def eval_panel(run_dir: Path, evals: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    """The evaluation panel: win rate, score and draw rate against ``opponent``, and a win-rate curve
    per other opponent (``evaluation.periodic_opponents``), each labelled with its name."""
    title, series = EVAL_PANEL
    others = eval_opponents(evals)
    if others:
        vs = f" vs {main}" if (main := main_opponent(run_dir)) else ""
        series = [("eval/win_rate", f"win rate{vs}"),
                  *[(f"eval/{name}/win_rate", f"win rate vs {name}") for name in others],
                  *[(key, f"{label}{vs}") for key, label in series[1:]]]
    return title, series


def plot_metrics(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the metrics of ``run_dir`` against env steps into a PNG; returns its path."""
    import matplotlib.pyplot as plt

    fig = metrics_figure(run_dir)
    out = out or run_dir / "metrics.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def metrics_figure(run_dir: Path) -> Any:
    """The matplotlib figure of ``plot_metrics``: a panel per group of metrics, against env steps, and
    with ladder ratings (``eval/ladder_elo``, ``evaluation=ladder``) the ladder Elo with its 95 %
    interval against env steps and against training time (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(run_dir)
    panels = [*_curve_panels(run_dir, train, evals), *ladder_panels(train, evals)]
    if not panels:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: nothing to plot")
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, (title, draw) in zip(axes.flat, panels):
        draw(ax)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    return fig


def _curve_panels(run_dir: Path, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[Panel]:
    """The panels of ``PANELS`` (``SUPERVISED_PANELS`` for a run with validation metrics) and the evaluation
    panel, each with the curves whose metrics are present."""
    supervised = any(key.startswith("val/") for record in train for key in record)
    groups = [(title, series, train, "global_step") for title, series in (SUPERVISED_PANELS if supervised else PANELS)]
    if evals:
        groups.append((*eval_panel(run_dir, evals), evals, "eval/global_step"))
    panels = []
    for title, series, records, x_key in groups:
        curves = [(label, points) for key, label in series
                  if (points := sorted((r[x_key], r[key]) for r in records if r.get(key) is not None))]
        if curves:
            panels.append((title, partial(_draw_curves, curves=curves)))
    return panels


def _draw_curves(ax: Any, curves: list[tuple[str, list[tuple[float, float]]]]) -> None:
    """Curves of (env step, value) points, each labelled."""
    for label, points in curves:
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("env steps")


def ladder_ratings(evals: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """(env step, ladder Elo, its 95 % half-width; NaN if unknown) of the evaluation records that rate
    the network on the ladder, by step."""
    return sorted((r["eval/global_step"], r["eval/ladder_elo"], _number(r.get("eval/ladder_elo_error")))
                  for r in evals if r.get("eval/ladder_elo") is not None)


def training_seconds(train: list[dict[str, Any]]) -> dict[int, float]:
    """The training time up to the end of each update, by its global step. The metrics records hold no
    clock time, so this is the sum of each update's env steps / ``charts/SPS``: its collect and learn
    phases only (start-up, inline evaluations and checkpoint writes are left out)."""
    elapsed, previous, seconds = 0.0, 0, {}
    for record in sorted(train, key=lambda r: r["global_step"]):
        sps = _number(record.get("charts/SPS"))
        if sps > 0:
            elapsed += (record["global_step"] - previous) / sps
        previous = record["global_step"]
        seconds[record["global_step"]] = elapsed
    return seconds


def ladder_panels(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[Panel]:
    """The ladder Elo with its 95 % band against env steps and, where the training records give the
    time of the steps evaluated, against training time (``training_seconds``)."""
    rated = ladder_ratings(evals)
    if not rated:
        return []
    panels = [("ladder Elo", partial(_draw_ladder, rated=rated, xlabel="env steps"))]
    seconds = training_seconds(train)
    timed = [(seconds[step], elo, error) for step, elo, error in rated if step in seconds]
    if timed and max(t for t, _, _ in timed) > 0:
        hours = max(t for t, _, _ in timed) >= 2 * 3600
        scale, unit = (3600, "h") if hours else (60, "min")
        timed = [(t / scale, elo, error) for t, elo, error in timed]
        xlabel = f"training time ({unit}; sum of update times from charts/SPS, evaluations left out)"
        panels.append(("ladder Elo over training time", partial(_draw_ladder, rated=timed, xlabel=xlabel)))
    return panels


def _draw_ladder(ax: Any, rated: list[tuple[float, float, float]], xlabel: str) -> None:
    """The ladder Elo at each x, and its 95 % interval as a band."""
    xs, elo, error = zip(*rated)
    ax.plot(xs, elo, marker="o", markersize=3, label="ladder Elo")
    ax.fill_between(xs, [e - w for e, w in zip(elo, error)], [e + w for e, w in zip(elo, error)], alpha=0.25,
                    label="95 % interval")
    ax.set_xlabel(xlabel)


def win_rate_over_time(run_dir: Path, opponent: str) -> list[tuple[float, float]]:
    """(training minutes, win rate) of the run's periodic evaluations against ``opponent``: a name of
    ``evaluation.periodic_opponents`` (``eval/<name>/win_rate``) or the run's ``opponent``
    (``eval/win_rate``). Training minutes as ``training_seconds`` counts them."""
    train, evals = read_metrics(run_dir)
    keys = [f"eval/{opponent}/win_rate", *(["eval/win_rate"] if opponent == main_opponent(run_dir) else [])]
    seconds = training_seconds(train)
    points = [(seconds[r["eval/global_step"]] / 60, r[key]) for r in evals for key in keys
              if r.get(key) is not None and r.get("eval/global_step") in seconds]
    if not points:
        known = ", ".join([*eval_opponents(evals), main_opponent(run_dir) or "its opponent"])
        raise PlotError(f"{run_dir}: no periodic evaluation against {opponent} (it has: {known})")
    return sorted(points)


def plot_win_rates(run_dirs: list[Path], opponent: str, out: Path | None = None) -> Path:
    """One panel: each run's win rate against ``opponent`` over training time (``win_rate_over_time``),
    labelled with the run dir's name; returns the PNG's path (default ``win_rate_<opponent>.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(run_dir.name, win_rate_over_time(run_dir, opponent)) for run_dir in run_dirs]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in curves:
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("training time (min; sum of update times from charts/SPS, evaluations left out)")
    ax.set_ylabel(f"win rate vs {opponent}")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = out or Path(f"win_rate_{opponent}.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _number(value: Any) -> float:
    """A metric's value as a float; NaN for a missing one (``null``: not finite when logged)."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def _jsonl_game(path: Path, number: str) -> tuple[Any, list[str]]:
    """(start board, USI moves) of line ``number`` (from 1) of a games.jsonl file."""
    from rsshogi.core import Board

    if not path.is_file():
        raise PlotError(f"{path}: {'is a directory' if path.is_dir() else 'does not exist'}")
    lines = _read_text(path).splitlines()
    if not lines:
        raise PlotError(f"{path}: empty, no games in it")
    valid = f"its lines are numbered 1..{len(lines)}"
    try:
        n = int(number)
    except ValueError:
        raise PlotError(f"{path}:{number}: not a line number ({valid})") from None
    if not 1 <= n <= len(lines):
        raise PlotError(f"{path}:{number}: no such line ({valid})")
    try:
        entry = json.loads(lines[n - 1])
    except json.JSONDecodeError as exc:
        raise PlotError(f"{path}:{n}: not a JSON line ({exc.msg} at column {exc.colno})") from None
    position = entry.get("usi") if isinstance(entry, dict) else None
    if not isinstance(position, str):
        raise PlotError(f"{path}:{n}: no 'usi' position in this line")
    start, _, moves = position.removeprefix("position ").partition(" moves ")
    try:
        board = Board() if start == "startpos" else Board(start.removeprefix("sfen "))
    except ValueError as exc:
        raise PlotError(f"{path}:{n}: bad start position {start!r} ({exc})") from None
    return board, moves.split()


def _parse_error(file: Path, kind: str, text: str, exc: Exception) -> PlotError:
    """The parser's complaint, with the line it names located in the file (or the move it counts from 0)."""
    detail = (str(exc).splitlines() or [type(exc).__name__])[0]
    where = str(file)
    bad_line = re.search(r"line: (.+)$", detail)
    if bad_line:
        numbers = [k for k, line in enumerate(text.splitlines(), start=1) if line.strip() == bad_line[1].strip()]
        if numbers:
            where = f"{file}:{numbers[0]}"
    detail = re.sub(r"at index (\d+)", lambda m: f"at move {int(m[1]) + 1}", detail)
    return PlotError(f"{where}: not a valid {kind} record ({detail})")


def final_position_svg(record: str) -> str:
    """SVG of the last position of a game record: ``x.kif``, ``x.csa`` or ``games.jsonl:N`` (line N, from 1).

    Raises ``PlotError`` (or ``OSError``) with a one-line message naming the file for bad input."""
    from rsshogi.core import Board
    from rsshogi.record import Record

    path, jsonl, number = record.rpartition(".jsonl:")
    if jsonl:
        where = f"{path}.jsonl:{number}"
        board, usi_moves = _jsonl_game(Path(path + ".jsonl"), number)
    else:
        file, where = Path(record), record
        if not file.exists():
            raise PlotError(f"{record}: does not exist")
        kind = {".kif": "KIF", ".csa": "CSA"}.get(file.suffix.lower())
        if kind is None:
            if file.suffix.lower() == ".jsonl":
                raise PlotError(f"{record}: say which game, by line number from 1: {record}:N")
            raise PlotError(f"{record}: expected a run dir, a .kif or .csa file, or games.jsonl:N")
        # Keisei writes UTF-8; Shift-JIS is the traditional encoding of .kif files.
        text = _read_text(file, ("utf-8", "shift_jis"))
        try:
            rec = Record.from_kif_str(text) if kind == "KIF" else Record.from_csa_str(text)
        except ValueError as exc:
            raise _parse_error(file, kind, text, exc) from None
        # The parsers skip lines they do not know, so any text parses: one with nothing in it is no record.
        if not rec.moves and rec.main_terminal is None and rec.init_position_sfen == Board().to_sfen():
            raise PlotError(f"{record}: no moves or position found: not a {kind} record")
        board = Board(rec.init_position_sfen)
        usi_moves = [entry.move.to_usi() for entry in rec.moves]
    last = None
    for ply, usi in enumerate(usi_moves, start=1):
        try:
            last = board.push_usi(usi)  # the Move32 (with its piece) marks the last move in the picture
        except ValueError as exc:
            raise PlotError(f"{where}: move {ply} ({usi}) cannot be played ({exc})") from None
    return str(board.to_svg(last_move=last, scale=2.0))


def _run_dirs(targets: list[str], opponent: str | None) -> list[Path]:
    """The run dirs of a comparison, checked: each a directory, and the opponent named."""
    if not opponent:
        raise PlotError(f"{len(targets)} run dirs: name the opponent to compare them on (--opponent NAME)")
    for target in targets:
        if not Path(target).is_dir():
            raise PlotError(f"{target}: not a run dir (--opponent compares run dirs)")
    return [Path(target) for target in targets]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m keisei.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="+", help="a run dir (several with --opponent), or a game record "
                        "(.kif, .csa, games.jsonl:N with N from 1)")
    parser.add_argument("--opponent", help="compare the runs' periodic win rates against this opponent")
    parser.add_argument("--out", type=Path, help="output file (PNG for run dirs, SVG for a record)")
    args = parser.parse_args(argv)
    try:
        if args.opponent or len(args.target) > 1:
            print(plot_win_rates(_run_dirs(args.target, args.opponent), args.opponent, args.out))
            return
        target = Path(args.target[0])
        if target.is_dir():
            print(plot_metrics(target, args.out))
        else:
            out = args.out or Path(f"{args.target[0].replace('.jsonl:', '-')}.svg")
            out.write_text(final_position_svg(args.target[0]), encoding="utf-8")
            print(out)
    except (OSError, ValueError, IndexError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
