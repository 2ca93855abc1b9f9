"""GPU check: training env steps/s and evaluation games/s on one GPU, in one table (docs/gpu.md).

Every case composes train.py's config from ``conf/`` (Hydra overrides), starts a run as train.py
does (``start_run``, ``build_algorithm``), runs one warm-up update and then timed updates (collect +
learn) until ``--seconds`` have passed: env steps/s. Cases: the ``cpu_baseline`` network (2 blocks of
32 channels, experiment=cpu_baseline) and the default ResNet (6 blocks of 64 channels, train.py's
defaults), each in fp32, bf16 autocast and fp32 with ``torch.compile`` at 8 env workers, plus the
baseline in fp32 at 1 and 15 env workers. The GPU's busy share is sampled every 0.2 s during the
timed part (``torch.cuda.utilization()``, else ``nvidia-smi``). Then evaluation: an untrained network
of each kind with 200 simulations of search (``AgentPlayer``) against the random player
(``play_match``): games/s and plies/s.

The opponent mix is the same in every case: self-play (the heuristic player's share is set to 0, as
it needs env.workers=1; the snapshot pool stays empty over so few updates). A case that fails is
shown as FAILED with its error and the others still run; the exit code is then 1. No case starts
after ``--budget`` seconds (default 420): those left are shown as SKIPPED (exit code 1), so the run
ends within about 8 minutes whatever the speed. ``--out FILE`` is rewritten after every case.

    python benchmarks/gpu_check.py [--out gpu_check.md] [--seconds 15] [OVERRIDE ...]   # device=cuda
    python benchmarks/gpu_check.py --dry     # the same code on the CPU, tiny sizes, no torch.compile

About 5-7 minutes on one GPU with 16 cores, estimated (8 cases of 15 s of timed updates plus start-up,
warm-up and compilation, then 2 evaluations of 20 s and more: a round of games is not cut). ``--dry`` runs
every case and evaluation on the CPU with 4 envs, 4 steps, 1 timed update, env workers 1 / 2 / 3
instead of 1 / 8 / 15, 2 simulations and 2 games of at most 16 plies, one torch thread, and without
torch.compile (the table says so; ``--dry-compile`` compiles, about 2 minutes a network here): the
test suite runs it (tests/test_gpu_check.py). ``--only NAME,NAME`` runs some cases (names as in the
table); OVERRIDE (e.g. ``env.num_envs=256``) applies to every case and evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from keisei.config import TrainConfig, register_configs, validate
from keisei.nn.model import build_model
from keisei.play.match import play_match
from keisei.play.players import AgentPlayer, RandomPlayer
from keisei.train.algorithm import batch_size, build_algorithm
from keisei.train.run import start_run

CONF = Path(__file__).resolve().parents[1] / "conf"

#: The networks measured: their name in the table and the overrides that select them.
NETWORKS = {
    "baseline": ("cpu_baseline (resnet 2x32)", ["experiment=cpu_baseline"]),
    "resnet": ("default resnet (6x64)", []),
}

#: Every case and evaluation, whatever the network: no periodic evaluation, no heuristic opponent
#: (it needs env.workers=1; left out everywhere so that the worker counts compare the same games).
COMMON = ["logging.progress_bar=false", "evaluation.interval_timesteps=0", "evaluation.periodic_opponents=[]",
          "training.opponent_pool.heuristic_fraction=0", "wandb.mode=disabled"]

#: The dry run's sizes (the network and everything else stay as in the real run).
DRY_SIZES = ["env.num_envs=4", "algorithm.num_steps=4", "algorithm.minibatch_size=8", "algorithm.update_epochs=1"]

BUSY_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Plan:
    """What a run measures: the real one on the GPU, or the dry one on the CPU."""

    dry: bool
    device: str  # the device= override
    compile: bool  # whether the compile cases really torch.compile (the dry run: only with --dry-compile)
    seconds: float  # timed updates per case run until this much time has passed (at least one)
    workers: tuple[int, int, int]  # env workers: one, the usual, the most
    simulations: int  # search at evaluation
    games: int  # games per evaluation round (colours alternating)
    eval_max_plies: int
    eval_seconds: float  # evaluation rounds until this much time has passed (at least one)
    budget_s: float  # no case starts after this much time: it is shown as SKIPPED

    @classmethod
    def real(cls, seconds: float = 15.0, eval_seconds: float = 20.0, budget_s: float = 420.0) -> Plan:
        return cls(dry=False, device="cuda", compile=True, seconds=seconds, workers=(1, 8, 15), simulations=200,
                   games=4, eval_max_plies=256, eval_seconds=eval_seconds, budget_s=budget_s)

    @classmethod
    def dry_run(cls, compile: bool = False, budget_s: float = 420.0) -> Plan:
        return cls(dry=True, device="cpu", compile=compile, seconds=0.0, workers=(1, 2, 3), simulations=2, games=2,
                   eval_max_plies=16, eval_seconds=0.0, budget_s=budget_s)


@dataclass(frozen=True)
class Case:
    network: str  # a key of NETWORKS
    precision: str  # fp32 | bf16
    compile: bool  # torch.compile (requested; the dry run skips it)
    workers: int

    @property
    def name(self) -> str:
        variant = "compile" if self.compile else self.precision
        return f"{self.network}-{variant}-w{self.workers}"

    def overrides(self, plan: Plan) -> list[str]:
        sizes = DRY_SIZES if plan.dry else []
        return [*NETWORKS[self.network][1], *COMMON, *sizes, f"device={plan.device}",
                f"training.precision={self.precision}", f"training.compile={self.compile and plan.compile}",
                f"env.workers={self.workers}"]


@dataclass(frozen=True)
class EvalCase:
    network: str

    @property
    def name(self) -> str:
        return f"eval-{self.network}"

    def overrides(self, plan: Plan) -> list[str]:
        return [*NETWORKS[self.network][1], *COMMON, f"device={plan.device}"]


def cases(plan: Plan) -> list[Case]:
    """Both networks in fp32, bf16 and compiled at the usual worker count; the baseline at the others."""
    one, usual, most = plan.workers
    out = [Case(network, precision, compiled, usual) for network in NETWORKS
           for precision, compiled in (("fp32", False), ("bf16", False), ("fp32", True))]
    return [*out, Case("baseline", "fp32", False, one), Case("baseline", "fp32", False, most)]


def eval_cases() -> list[EvalCase]:
    return [EvalCase(network) for network in NETWORKS]


# --- the GPU's busy share -------------------------------------------------------------------------

def parse_nvidia_smi(text: str) -> float:
    """The utilisation (percent) in ``nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits``
    output for one GPU."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected one line from nvidia-smi, got {len(lines)}: {text!r}")
    return float(lines[0])  # "[N/A]" (no such figure on this GPU) raises ValueError


def nvidia_smi_id(index: int, visible: str | None) -> str:
    """The ``nvidia-smi --id`` of torch's CUDA device ``index`` (``visible``: CUDA_VISIBLE_DEVICES)."""
    entries = [e.strip() for e in (visible or "").split(",") if e.strip()]
    return entries[index] if index < len(entries) else str(index)


def torch_reader(index: int) -> Callable[[], float]:
    """``torch.cuda.utilization`` of CUDA device ``index`` (needs pynvml, the nvidia-ml-py package)."""
    return lambda: float(torch.cuda.utilization(index))


def nvidia_smi_reader(index: int) -> Callable[[], float]:
    """``nvidia-smi``'s utilisation of torch's CUDA device ``index``."""
    command = [shutil.which("nvidia-smi") or "nvidia-smi",
               f"--id={nvidia_smi_id(index, os.environ.get('CUDA_VISIBLE_DEVICES'))}",
               "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

    def read() -> float:
        done = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True)
        return parse_nvidia_smi(done.stdout)

    return read


def first_working(readers: Sequence[tuple[str, Callable[[], float]]]) -> tuple[Callable[[], float] | None, str]:
    """The first reader that returns a figure now, and its name; else ``None`` and why each failed."""
    errors = []
    for how, read in readers:
        try:
            read()
            return read, how
        except Exception as exc:
            errors.append(f"{how}: {first_line(exc)}")
    return None, "n/a (" + "; ".join(errors) + ")"


def utilisation_reader(device: torch.device) -> tuple[Callable[[], float] | None, str]:
    """A function returning the GPU's busy percent now, and how it reads it; ``None`` on the CPU or
    when neither torch.cuda.utilization (pynvml) nor nvidia-smi works."""
    if device.type != "cuda":
        return None, "n/a on the CPU"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return first_working([("torch.cuda.utilization()", torch_reader(index)), ("nvidia-smi", nvidia_smi_reader(index))])


class BusySampler:
    """Samples ``read()`` (a percent) every ``interval`` seconds in a background thread while entered;
    ``mean`` is their average (``None`` without a reader, samples, or after a failed read)."""

    def __init__(self, read: Callable[[], float] | None, interval: float = BUSY_INTERVAL_S) -> None:
        self.read, self.interval = read, interval
        self.samples: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BusySampler:
        if self.read is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-busy-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if not self.samples and self.error is None:
                self._sample()  # a case shorter than one interval: one reading at its end

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and self._sample():
            pass

    def _sample(self) -> bool:
        assert self.read is not None
        try:
            self.samples.append(float(self.read()))
            return True
        except Exception as exc:
            self.error = first_line(exc)
            return False

    @property
    def mean(self) -> float | None:
        if self.error is not None or not self.samples:
            return None
        return sum(self.samples) / len(self.samples)


# --- the measurements -----------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    columns: dict[str, str]  # what the case is (network, precision, ...)
    figures: dict[str, str] = dataclasses.field(default_factory=dict)  # what was measured
    rate: float = 0.0  # env steps/s or games/s
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def compose_config(overrides: Sequence[str]) -> TrainConfig:
    """train.py's config with ``overrides`` (inside ``initialize_config_dir(CONF)``)."""
    return validate(compose("train", overrides=list(overrides)))


def busy_text(sampler: BusySampler) -> str:
    """The mean busy percent; "n/a" without a reader, with why after a failed reading."""
    mean = sampler.mean
    if mean is not None:
        return f"{mean:.0f}"
    return f"n/a ({sampler.error.replace('|', '/')})" if sampler.error else "n/a"


def run_case(case: Case, plan: Plan, extra: Sequence[str], reader: Callable[[], float] | None) -> Result:
    """One training case: warm-up update, then timed updates (collect + learn) for ``plan.seconds``."""
    compiled = ("yes" if plan.compile else "skipped (dry run)") if case.compile else "no"
    result = Result(case.name, {"network": NETWORKS[case.network][0], "precision": case.precision,
                                "compile": compiled, "workers": str(case.workers)})
    try:
        cfg = compose_config([*case.overrides(plan), *extra])
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            start = time.perf_counter()
            state = start_run(cfg, Path(tmp))
            try:
                algorithm = build_algorithm(cfg, state)
                steps_per_update = batch_size(cfg, world=1)
                algorithm.learn(algorithm.collect()[0])  # warm-up: allocation, autotuning, compilation
                warmup = time.perf_counter() - start
                updates, shares = 0, {"env": 0.0, "learn": 0.0}
                with BusySampler(reader) as sampler:
                    begin = time.perf_counter()
                    while True:
                        batch, rollout = algorithm.collect()
                        t0 = time.perf_counter()
                        algorithm.learn(batch)
                        shares["learn"] += time.perf_counter() - t0
                        shares["env"] += rollout.timing.get("env", 0.0)
                        updates += 1
                        if time.perf_counter() - begin >= plan.seconds:
                            break
                    elapsed = time.perf_counter() - begin
            finally:
                state.env.close()
        result.rate = updates * steps_per_update / elapsed
        result.figures = {"env steps/s": f"{result.rate:,.0f}", "GPU busy %": busy_text(sampler),
                          "env %": f"{shares['env'] / elapsed:.0%}", "learn %": f"{shares['learn'] / elapsed:.0%}",
                          "updates": str(updates), "steps/update": f"{steps_per_update:,}",
                          "warm-up s": f"{warmup:.1f}", "timed s": f"{elapsed:.1f}"}
    except Exception as exc:
        result.error = first_line(exc)
    return result


def run_eval(case: EvalCase, plan: Plan, extra: Sequence[str], reader: Callable[[], float] | None) -> Result:
    """Evaluation: an untrained network with ``plan.simulations`` of search against the random player,
    rounds of ``plan.games`` games until ``plan.eval_seconds`` have passed."""
    result = Result(case.name, {"network": NETWORKS[case.network][0], "opponent": "random",
                                "simulations": str(plan.simulations), "max plies": str(plan.eval_max_plies)})
    try:
        cfg = compose_config([*case.overrides(plan), *extra])
        torch.manual_seed(cfg.seed)
        device = torch.device(plan.device)
        model = build_model(cfg.model).to(device).eval()
        search = dataclasses.replace(cfg.evaluation.search, simulations=plan.simulations)

        def match(games: int, max_plies: int, seed: int) -> int:
            agent = AgentPlayer(model, device=device, seed=seed, search=search)
            played = play_match(agent, RandomPlayer(seed=seed), games, max_plies=max_plies, seed=seed)
            return sum(m.game.ply for m in played)

        match(2, 2, seed=10**6)  # warm-up: one move each
        games = plies = 0
        with BusySampler(reader) as sampler:
            begin = time.perf_counter()
            while True:
                plies += match(plan.games, plan.eval_max_plies, seed=games)
                games += plan.games
                if time.perf_counter() - begin >= plan.eval_seconds:
                    break
            elapsed = time.perf_counter() - begin
        result.rate = games / elapsed
        result.figures = {"games": str(games), "mean plies": f"{plies / games:.0f}",
                          "games/s": f"{result.rate:.3f}", "plies/s": f"{plies / elapsed:,.0f}",
                          "GPU busy %": busy_text(sampler), "timed s": f"{elapsed:.1f}"}
    except Exception as exc:
        result.error = first_line(exc)
    return result


# --- the report -----------------------------------------------------------------------------------

TRAIN_COLUMNS = ["case", "network", "precision", "compile", "workers", "env steps/s", "GPU busy %", "env %",
                 "learn %", "updates", "steps/update", "warm-up s", "timed s"]
EVAL_COLUMNS = ["case", "network", "opponent", "simulations", "max plies", "games", "mean plies", "games/s",
                "plies/s", "GPU busy %", "timed s"]


def markdown_table(columns: list[str], results: list[Result]) -> str:
    """One row per result; a failed one shows FAILED and its error in its first measured column."""
    rows = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for r in results:
        cells = {"case": r.name, **r.columns}
        if r.ok:
            cells.update(r.figures)
        else:
            measured = [c for c in columns if c not in cells]
            error = (r.error or "").replace("|", "/")
            cells[measured[0]] = error if error.startswith("SKIPPED") else "FAILED: " + error
        rows.append("| " + " | ".join(cells.get(c, "") for c in columns) + " |")
    return "\n".join(rows)


def describe(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    return f"{name}, torch {torch.__version__}, {os.cpu_count()} cores"


def report(plan: Plan, device: torch.device, train: list[Result], evals: list[Result], how: str,
           wall: float, done: bool = True) -> str:
    """The tables and their notes (``done`` False: a partial report, written while the run goes on)."""
    mode = "DRY RUN on the CPU (tiny sizes; not GPU figures)" if plan.dry else "GPU check"
    lines = [f"## {mode}: {describe(device)}", ""]
    if train:
        lines += [f"Training: env steps/s over timed updates (collect + learn) after one warm-up update, until "
                  f"{plan.seconds:g} s had passed; self-play, no periodic evaluation.", "",
                  markdown_table(TRAIN_COLUMNS, train), ""]
    if evals:
        lines += [f"Evaluation: an untrained network with {plan.simulations} simulations of search (fp32) "
                  f"against the random player, rounds of {plan.games} games until {plan.eval_seconds:g} s "
                  "had passed.", "", markdown_table(EVAL_COLUMNS, evals), ""]
    lines.append(f"GPU busy %: {how}." if how.startswith("n/a") else
                 f"GPU busy %: mean of {how} every {BUSY_INTERVAL_S} s over the timed part.")
    if not plan.compile:
        lines.append("torch.compile: skipped in the dry run (the compile cases ran without it).")
    failed = [r.name for r in train + evals if not r.ok and not (r.error or "").startswith("SKIPPED")]
    skips = [r.name for r in train + evals if (r.error or "").startswith("SKIPPED")]
    outcome = " ".join([f"FAILED: {', '.join(failed)}." if failed else "",
                        f"SKIPPED (over --budget): {', '.join(skips)}." if skips else ""]).strip()
    outcome = outcome or ("every case ran." if done else "still running.")
    lines.append(f"Total wall time: {wall:.0f} s; {outcome}")
    return "\n".join(lines) + "\n"


def skipped(case: Case | EvalCase, plan: Plan) -> Result:
    return Result(case.name, {"network": NETWORKS[case.network][0]},
                  error=f"SKIPPED: the run had used its {plan.budget_s:g} s before this case")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="on the CPU, tiny sizes, no torch.compile (for tests)")
    parser.add_argument("--dry-compile", action="store_true", help="with --dry: torch.compile the compile cases")
    parser.add_argument("--out", type=Path, help="also write the tables to this file (rewritten after each case)")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed updates per training case (real run)")
    parser.add_argument("--eval-seconds", type=float, default=20.0, help="evaluation rounds per network (real run)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which no further case starts (those left are SKIPPED)")
    parser.add_argument("--only", type=lambda text: [n for n in text.split(",") if n], metavar="NAME[,NAME...]",
                        help="run only these cases (names as in the table)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every case, e.g. env.num_envs=256")
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): install a "
              "CUDA build of torch (docs/installation.md), or run --dry on the CPU", file=sys.stderr)
        return 2
    plan = (Plan.dry_run(args.dry_compile, args.budget) if args.dry
            else Plan.real(args.seconds, args.eval_seconds, args.budget))
    train_cases, evaluations = cases(plan), eval_cases()
    if args.only:
        known = [c.name for c in [*train_cases, *evaluations]]
        unknown = sorted(set(args.only) - set(known))
        if unknown:
            print(f"gpu_check: --only {' '.join(unknown)}: no such case (cases: {', '.join(known)})", file=sys.stderr)
            return 2
        train_cases = [c for c in train_cases if c.name in args.only]
        evaluations = [c for c in evaluations if c.name in args.only]
    if plan.dry:
        torch.set_num_threads(1)  # the test suite shares the cores: more threads only wait for each other
    device = torch.device(plan.device)
    reader, how = utilisation_reader(device)
    register_configs()
    start = time.perf_counter()
    train: list[Result] = []
    evals: list[Result] = []
    todo: list[tuple[Case | EvalCase, list[Result]]] = [*((c, train) for c in train_cases),
                                                        *((e, evals) for e in evaluations)]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for k, (case, results) in enumerate(todo, 1):
            if time.perf_counter() - start > plan.budget_s:
                result = skipped(case, plan)
            elif isinstance(case, Case):
                result = run_case(case, plan, args.overrides, reader)
            else:
                result = run_eval(case, plan, args.overrides, reader)
            results.append(result)
            unit = "env steps/s" if isinstance(case, Case) else "games/s"
            what = f"{result.rate:,.2f} {unit}" if result.ok else result.error
            print(f"gpu_check [{k}/{len(todo)}, {time.perf_counter() - start:.0f} s] {result.name}: {what}",
                  file=sys.stderr, flush=True)
            if args.out:
                args.out.write_text(report(plan, device, train, evals, how, time.perf_counter() - start,
                                           done=k == len(todo)), encoding="utf-8")
    text = report(plan, device, train, evals, how, time.perf_counter() - start)
    print(text, end="", flush=True)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0 if all(r.ok for r in train + evals) else 1


if __name__ == "__main__":
    sys.exit(main())
