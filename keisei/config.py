"""The one config schema: dataclasses registered in Hydra's ConfigStore.

``conf/`` holds the YAML files that fill these schemas (``conf/train.yaml`` and its
groups mirror the classes below). Hydra composes and type-checks them (a wrong type,
an unknown key or a bad enum value fails at composition); ``validate`` then checks
ranges and cross-field rules and returns the typed ``TrainConfig``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from keisei.shogi import MAX_PLIES

#: The config dir: ``conf/opponent/<name>.yaml`` are the opponent presets.
CONF = Path(__file__).resolve().parents[1] / "conf"


class ConfigError(ValueError):
    """A config value out of range or inconsistent; the message names the key."""


class ModelName(str, Enum):
    resnet = "resnet"
    mlp = "mlp"


class Norm(str, Enum):
    group = "group"
    batch = "batch"
    none = "none"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Schedule(str, Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class WandbMode(str, Enum):
    disabled = "disabled"
    offline = "offline"
    online = "online"


@dataclass
class ModelConfig:
    """Policy/value network. ``resnet``: a convolutional tower; ``mlp``: a tiny net for tests."""

    name: ModelName = ModelName.resnet
    blocks: int = 6  # resnet: residual blocks
    channels: int = 64  # resnet: channels of the tower
    squeeze_excitation: bool = False  # resnet: SE layer in each block
    se_reduction: int = 4  # resnet: SE bottleneck = channels / se_reduction
    norm: Norm = Norm.group  # resnet: normalisation after each convolution (group | batch | none)
    value_hidden: int = 128  # resnet: hidden units of the value head
    policy_mates: bool = True  # resnet: the policy head also reads the mate planes of the input directly
    mlp_hidden: int = 64  # mlp: hidden units of each of its two layers
    material_potential: float = 0.0  # value of a pawn of material added to the value (shaping; 0: off)
    material_potential_max: float = 0.5  # the shaping potential saturates at +-this (below a win's 1)
    king_potential: float = 0.0  # value of an attack on a square of a king's zone (shaping; 0: off)
    value_reach: bool = True  # the value head spans 1 + the potentials' bound, so head + potentials reach +-1
    value_plane_norm: bool = False  # resnet: normalise the value head's one plane (loses its level; old runs)
    value_plane_relu: bool = False  # resnet: a ReLU on the value head's one plane (it can die: old runs)


@dataclass
class EnvConfig:
    """Self-play environment (``keisei.env.VecEnv``)."""

    num_envs: int = 64
    max_plies: int = MAX_PLIES
    declaration: bool = True
    opening_plies: int = 0  # random legal moves at the start of each game
    workers: int = 1  # processes stepping the games (1: in the training process)


@dataclass
class OpponentPoolConfig:
    """Training opponents besides the learner itself: past snapshots of the network (size 0: none)
    and the heuristic player (``heuristic_fraction`` 0: none). The rest of the games are self-play."""

    size: int = 0  # snapshots kept (oldest dropped)
    snapshot_interval: int = 10  # updates between snapshots
    fraction: float = 0.5  # share of the games played against a snapshot when the pool is not empty
    heuristic_fraction: float = 0.0  # share of the games played against keisei.play.players.HeuristicPlayer


@dataclass
class TrainingConfig:
    """What every way of training shares: the budget, the optimiser, checkpoints, precision and the
    training opponents. Step counts accept integral floats (``1e6``); see ``validate``."""

    total_timesteps: Any = 1_000_000  # env steps (moves) over the whole run
    learning_rate: float = 3e-4
    lr_schedule: Schedule = Schedule.linear  # spans the whole run
    optimizer: Optimizer = Optimizer.adam
    weight_decay: float = 0.0
    max_grad_norm: float = 0.5  # gradients clipped to this global norm
    checkpoint_interval_timesteps: Any = 50_000  # env steps between checkpoints/last.pt
    checkpoint_interval_minutes: float = 10.0  # also write last.pt this often, whichever comes first (0: off)
    collective_timeout_minutes: float = 10.0  # several ranks: how long one waits for the others (joining, a collective)
    precision: Precision = Precision.fp32  # bf16 / fp16 autocast (fp16 needs CUDA)
    compile: bool = False  # torch.compile the network
    init_checkpoint: str | None = None  # a new run starts from its weights (file or run dir; a resumed run ignores it)
    opponent_pool: OpponentPoolConfig = field(default_factory=OpponentPoolConfig)


@dataclass
class PPOConfig:
    """``algorithm=ppo``: clipped PPO on two-player GAE (CleanRL's names; ``keisei.train.ppo``)."""

    name: str = "ppo"
    num_steps: int = 128  # rollout length per env; batch = env.num_envs * num_steps
    minibatch_size: int = 1024
    update_epochs: int = 4
    gamma: float = 0.99  # per own move
    gae_lambda: float = 0.95
    bootstrap_truncated: bool = True  # a game cut at env.max_plies: bootstrap from its value (else a draw, 0)
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    norm_adv: bool = True
    target_kl: float | None = None  # stop the epochs of an update early above this KL
    init_kl_coef: float = 0.0  # loss += this * KL(pi_init || pi), pi_init: training.init_checkpoint's policy (0: off)


#: The keys that moved from ``training`` to ``algorithm`` when PPO became one ``algorithm`` option.
PPO_KEYS = tuple(f.name for f in dataclasses.fields(PPOConfig) if f.name != "name")


@dataclass
class SupervisedConfig:
    """``algorithm=supervised``: the network learns the best move and the value of positions read from
    hcpe files (``keisei.train.supervised``); one env step is one training position."""

    name: str = "supervised"
    train: list[str] = MISSING  # hcpe files, or folders of *.hcpe files
    validation_fraction: float = 0.05  # the last this share of each file's rows is held out
    validation_positions: int = 4096  # held-out rows evaluated (the first ones of the held-out split)
    validation_interval: int = 50  # updates between validations (and one at the last update)
    batch_size: int = 256  # positions per update, per process
    value_coef: float = 1.0  # loss = policy cross-entropy + value_coef * value MSE
    result_weight: float = 0.5  # value target = w * game result + (1 - w) * (2 * sigmoid(eval / score_scale) - 1)
    score_scale: float = 600.0  # centipawns per unit of the eval's logit (dlshogi: 756.09 for YaneuraOu)


@dataclass
class GumbelAZConfig:
    """``algorithm=gumbel_az``: Gumbel AlphaZero self-play (Danihelka et al., ICLR 2022; ``keisei.train.gumbel_az``).
    Every move of every game is chosen by a Gumbel-root search; the search's improved policy and the game's
    result are the targets, learnt from a replay buffer. One env step is one move played."""

    name: str = "gumbel_az"
    simulations: int = 16  # playouts per move (the root's own evaluation is the first); 16-32 on a CPU
    gumbel_actions: int = 16  # m: root moves sampled (Gumbel top-m) for Sequential Halving; 1 <= m <= simulations
    c_visit: float = 50.0  # sigma(q) = (c_visit + max visits) * c_scale * q (mctx's defaults)
    c_scale: float = 0.1
    mate_plies: int = 3  # the search's root mate search (odd; 0: off)
    num_steps: int = 8  # moves per game per update: env.num_envs * num_steps moves an update
    buffer_size: int = 100_000  # positions kept (about 1.6 KB each; keisei/train/replay.py)
    samples_per_position: float = 4.0  # minibatch samples per move played: each position is trained on this often
    minibatch_size: int = 256  # positions per optimiser step (at most buffer_size)
    value_coef: float = 1.0  # loss = policy cross-entropy + value_coef * value MSE
    root_value_weight: float = 0.0  # value target = (1 - w) * game result + w * the search's value


class SearchRoot(str, Enum):
    """How the search chooses among the root's moves (below the root it is always PUCT)."""

    puct = "puct"  # PUCT at the root too; the most visited move is played
    gumbel = "gumbel"  # Gumbel top-m sampling and Sequential Halving (Danihelka et al., 2022)


@dataclass
class SearchConfig:
    """Search at play time (``keisei.play.search``): MCTS guided by the policy and value heads, with a
    short mate search. ``simulations`` 0 plays the raw policy (no search)."""

    simulations: int = 0  # network evaluations per move (0: no search, the policy's move)
    batch_size: int = 16  # leaves evaluated together in one forward pass
    c_puct: float = 1.5  # exploration constant
    temperature: float = 0.0  # move choice from visit counts: 0 the most visited; > 0 samples
    temperature_moves: int = 0  # plies of the game played at ``temperature``; later moves greedy
    dirichlet_alpha: float = 0.3  # root noise (self-play only)
    dirichlet_fraction: float = 0.0  # share of the root prior replaced by noise (0: off, as for evaluation)
    mate_plies: int = 3  # mate search depth in plies (odd; 1: mate in one only; 0: off)
    reuse_tree: bool = True  # keep the subtree of the move played
    root: SearchRoot = SearchRoot.puct  # root move selection: puct, or gumbel (Gumbel root, PUCT below)
    gumbel_actions: int = 16  # root=gumbel: m, the moves sampled (Gumbel top-m) for Sequential Halving
    # root=gumbel: sigma(q) = (c_visit + max visits) * c_scale * q, q the completed values min-max rescaled
    # to [0, 1] over the root's moves (mctx's qtransform_completed_by_mix_value: maxvisit_init, value_scale)
    gumbel_c_visit: float = 50.0
    gumbel_c_scale: float = 0.1
    gumbel_noise: bool = False  # root=gumbel: draw the Gumbel noise (self-play); False: g = 0, deterministic play


class OpponentKind(str, Enum):
    random = "random"
    heuristic = "heuristic"
    checkpoint = "checkpoint"
    usi = "usi"


@dataclass
class OpponentConfig:
    """Who the agent plays in evaluations (``conf/opponent/``)."""

    kind: OpponentKind = OpponentKind.random
    name: str | None = None  # shown in results and records (default: derived from the kind)
    checkpoint: str | None = None  # kind=checkpoint: a checkpoint file or run dir
    temperature: float = 0.0  # kind=checkpoint: 0 plays greedily
    command: str | None = None  # kind=usi: the engine executable
    args: list[str] = field(default_factory=list)  # kind=usi: its arguments
    options: dict[str, Any] = field(default_factory=dict)  # kind=usi: sent as setoption name K value V
    movetime_ms: int | None = None  # kind=usi: time per move (go movetime); default 100
    byoyomi_ms: int | None = None  # kind=usi: instead, go btime 0 wtime 0 byoyomi N
    depth: int | None = None  # kind=usi: instead, go depth N
    timeout_s: float = 5.0  # kind=usi: silence beyond the move time forfeits the game
    random_moves: float = 0.0  # kind=heuristic: share of its moves played uniformly at random instead
    search: SearchConfig = field(default_factory=SearchConfig)  # kind=checkpoint: search at play time


class EvaluationMode(str, Enum):
    single_opponent = "single_opponent"
    round_robin = "round_robin"
    gauntlet = "gauntlet"
    ladder = "ladder"


#: The evaluation modes of periodic evaluation in train.py: a match against ``opponent``, or the
#: network's rating on the ladder (``keisei.evaluation.ladder``).
PERIODIC_MODES = (EvaluationMode.single_opponent, EvaluationMode.ladder)


class PeriodicMode(str, Enum):
    inline = "inline"
    background = "background"


@dataclass
class EvaluationConfig:
    """Matches (``conf/evaluation/``): used by evaluate.py and by periodic evaluation in training."""

    mode: EvaluationMode = EvaluationMode.single_opponent
    games: int = 100  # per pairing, colours alternating
    opening_plies: int = 0  # random opening moves (each opening played with both colours)
    max_plies: int = MAX_PLIES
    declaration: bool = True
    temperature: float = 0.0  # the agent's: 0 plays greedily
    search: SearchConfig = field(default_factory=SearchConfig)  # the agent's search (simulations 0: none)
    players: list[str] = field(default_factory=list)  # round_robin, gauntlet: checkpoints or presets; ladder: its rungs
    save_records: bool = True  # every game as KIF, CSA and USI moves
    workers: int = 1  # >1: env worker processes step the games of network-vs-network matches without search
    interval_timesteps: Any = 0  # train.py: evaluate every this many env steps (0: never)
    periodic: PeriodicMode = PeriodicMode.inline  # train.py: inline blocks; background runs a process
    periodic_opponents: list[str] = field(default_factory=list)  # train.py: opponent presets played too
    ladder_rungs: int = 3  # ladder: rungs played (`games` each), each the one nearest the rating so far


@dataclass
class LoggingConfig:
    progress_bar: bool = True
    tensorboard: bool = False  # event files in <run dir>/tensorboard (needs the tensorboard package)


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.disabled
    project: str = "keisei"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """train.py's config. ``algorithm`` is one of ``ALGORITHMS`` (``conf/algorithm/``): its schema
    is chosen by the group, so the field is untyped here; a config built in Python gets PPO."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    algorithm: Any = MISSING
    env: EnvConfig = field(default_factory=EnvConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    opponent: OpponentConfig = field(default_factory=OpponentConfig)
    seed: int = 0
    device: Device = Device.auto
    resume: str | None = None  # a checkpoint file or a run dir (its checkpoints/last.pt)

    def __post_init__(self) -> None:
        if self.algorithm is MISSING:
            self.algorithm = PPOConfig()


#: The ``algorithm`` options by name: the schema of ``conf/algorithm/<name>.yaml``.
ALGORITHMS: dict[str, type] = {"ppo": PPOConfig, "supervised": SupervisedConfig, "gumbel_az": GumbelAZConfig}


@dataclass
class EvaluateConfig:
    """evaluate.py: ``checkpoint`` is the agent measured."""

    checkpoint: str = MISSING  # a checkpoint file or a run dir (its latest checkpoint)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    opponent: OpponentConfig = field(default_factory=OpponentConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    seed: int = 0
    device: Device = Device.auto


class LabelSource(str, Enum):
    """Where label.py's positions come from (``keisei.data.label``)."""

    selfplay = "selfplay"  # games the teacher plays against itself from random openings (gensfen-style)
    checkpoint = "checkpoint"  # games a checkpoint's network plays against itself, labelled by the teacher
    records = "records"  # every position of game records (CSA, KIF, KI2, JKF files or folders)


@dataclass
class LabelConfig:
    """label.py: positions labelled by a USI engine (``teacher``), written as hcpe (``keisei.data.label``)."""

    output: str = MISSING  # the hcpe file; a rerun appends to it until it holds ``positions`` rows
    positions: Any = 10_000  # distinct positions the file holds when done
    source: LabelSource = LabelSource.selfplay
    records: list[str] = field(default_factory=list)  # source=records: record files or folders
    skip_bad_records: bool = True  # source=records: a bad record is skipped and counted (false: refused)
    checkpoint: str | None = None  # source=checkpoint: a checkpoint file or run dir
    temperature: float = 1.0  # source=checkpoint: its sampling temperature
    teacher: OpponentConfig = field(default_factory=OpponentConfig)  # a USI engine (conf/teacher/)
    multipv: int = 1  # > 1: the teacher's best N moves and scores go to the side file too
    opening_plies: int = 16  # selfplay/checkpoint: each game starts with 0..N random moves
    random_move_rate: float = 0.0  # selfplay/checkpoint: share of the moves played at random (labelled still)
    resign_score: int = 3000  # selfplay/checkpoint: a game ends, won by the side ahead, at this |score| (cp)
    max_plies: int = MAX_PLIES  # selfplay/checkpoint: games cut here are draws
    workers: int = 0  # teacher processes, one position each at a time (0: one per core)
    seed: int = 0
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def register_configs() -> None:
    """Register the schemas that ``conf/`` files extend (called before composition): root configs, not
    groups, so that ``--help`` lists only the groups a user picks from."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="model_schema", node=ModelConfig)
    cs.store(name="training_schema", node=TrainingConfig)
    for name, schema in ALGORITHMS.items():
        cs.store(name=f"{name}_schema", node=schema)
    cs.store(name="evaluation_schema", node=EvaluationConfig)
    cs.store(name="opponent_schema", node=OpponentConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="label_schema", node=LabelConfig)


_STEP_KEYS = ("total_timesteps", "checkpoint_interval_timesteps")


def validate_evaluation(ev: EvaluationConfig, op: OpponentConfig) -> None:
    """Checks shared by train.py (periodic evaluation) and evaluate.py."""
    ev.interval_timesteps = _as_count("evaluation.interval_timesteps", ev.interval_timesteps)
    _check(ev.interval_timesteps >= 0, "evaluation.interval_timesteps", ev.interval_timesteps, "must be >= 0")
    _check(ev.games >= 1, "evaluation.games", ev.games, "must be >= 1")
    _check(ev.max_plies >= 1, "evaluation.max_plies", ev.max_plies, "must be >= 1")
    _check(0 <= ev.opening_plies < ev.max_plies, "evaluation.opening_plies", ev.opening_plies,
           "must be >= 0 and below evaluation.max_plies")
    _check(ev.temperature >= 0, "evaluation.temperature", ev.temperature, "must be >= 0")
    _check(ev.workers >= 1, "evaluation.workers", ev.workers, "must be >= 1 (1: in this process)")
    _check(op.temperature >= 0, "opponent.temperature", op.temperature, "must be >= 0")
    _check(0 <= op.random_moves <= 1, "opponent.random_moves", op.random_moves, "must be in [0, 1]")
    _check(ev.ladder_rungs >= 1, "evaluation.ladder_rungs", ev.ladder_rungs, "must be >= 1")
    validate_search(ev.search, "evaluation.search")
    validate_search(op.search, "opponent.search")
    if op.kind is OpponentKind.checkpoint:
        _check(bool(op.checkpoint), "opponent.checkpoint", op.checkpoint,
               "opponent=checkpoint needs opponent.checkpoint=PATH")
    if op.kind is OpponentKind.usi:
        _check(bool(op.command), "opponent.command", op.command, "opponent=usi needs opponent.command=PATH")
        _check(op.timeout_s > 0, "opponent.timeout_s", op.timeout_s, "must be > 0")
        for key in ("movetime_ms", "byoyomi_ms", "depth"):
            value = getattr(op, key)
            _check(value is None or value >= 1, f"opponent.{key}", value, "must be >= 1 or null")


def validate_search(s: SearchConfig, prefix: str) -> None:
    _check(s.simulations >= 0, f"{prefix}.simulations", s.simulations, "must be >= 0")
    _check(s.batch_size >= 1, f"{prefix}.batch_size", s.batch_size, "must be >= 1")
    _check(s.c_puct > 0, f"{prefix}.c_puct", s.c_puct, "must be > 0")
    _check(s.temperature >= 0, f"{prefix}.temperature", s.temperature, "must be >= 0")
    _check(s.temperature_moves >= 0, f"{prefix}.temperature_moves", s.temperature_moves, "must be >= 0")
    _check(s.dirichlet_alpha > 0, f"{prefix}.dirichlet_alpha", s.dirichlet_alpha, "must be > 0")
    _check(0 <= s.dirichlet_fraction <= 1, f"{prefix}.dirichlet_fraction", s.dirichlet_fraction,
           "must be in [0, 1]")
    _check(s.mate_plies >= 0 and (s.mate_plies == 0 or s.mate_plies % 2 == 1), f"{prefix}.mate_plies",
           s.mate_plies, "must be 0 (off) or odd (1: mate in one, 3: mate in three, ...)")
    _check(s.gumbel_actions >= 1, f"{prefix}.gumbel_actions", s.gumbel_actions, "must be >= 1")
    for key in ("gumbel_c_visit", "gumbel_c_scale"):
        value = getattr(s, key)
        _check(math.isfinite(value) and value > 0, f"{prefix}.{key}", value, "must be finite and > 0")


def validate_evaluate(cfg: DictConfig | EvaluateConfig) -> EvaluateConfig:
    """evaluate.py's checks; returns the typed ``EvaluateConfig``."""
    if isinstance(cfg, DictConfig):
        _reject_unknown_keys(cfg)
        cfg = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    assert isinstance(cfg, EvaluateConfig)
    validate_evaluation(cfg.evaluation, cfg.opponent)
    if cfg.evaluation.mode is not EvaluationMode.single_opponent:
        _check(len(cfg.evaluation.players) >= 1, "evaluation.players", cfg.evaluation.players,
               f"{cfg.evaluation.mode.value} needs at least one other player")
    return cfg


def _as_count(key: str, value: Any) -> int:
    """An integer from an int or an integral float such as 1e6 (OmegaConf refuses those for int fields)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r}: expected an integer (e.g. 1000000 or 1e6)")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ConfigError(f"{key}={value!r}: expected a whole number of steps")
    return int(value)


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def _reject_unknown_keys(node: DictConfig, prefix: str = "") -> None:
    """Keys added with ``+key=value`` that no schema field declares (OmegaConf would drop them silently)."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    fields = {f.name for f in dataclasses.fields(schema)}
    for key in node:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: no such key in {schema.__name__} (check the spelling)")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _reject_unknown_keys(child, f"{prefix}{key}.")


def validate(cfg: DictConfig | TrainConfig, *, data: bool = True) -> TrainConfig:
    """Range and consistency checks; returns a typed ``TrainConfig`` with step counts as ints. ``data``:
    also check the files a run reads (``algorithm=supervised``'s hcpe files); off for the config of a
    checkpoint (``from_container``), whose network loads wherever its data went since."""
    if isinstance(cfg, DictConfig):
        _reject_unknown_keys(cfg)
        cfg = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    assert isinstance(cfg, TrainConfig)
    _validate_training(cfg.training)
    if isinstance(cfg.algorithm, PPOConfig):
        _validate_ppo(cfg.algorithm, cfg.env, cfg.training)
    if isinstance(cfg.algorithm, SupervisedConfig):
        _validate_supervised(cfg.algorithm, cfg.training, data)
    if isinstance(cfg.algorithm, GumbelAZConfig):
        _validate_gumbel_az(cfg.algorithm, cfg)
    _validate_opponent_pool(cfg.training.opponent_pool, cfg.env)
    _validate_env(cfg.env)
    _validate_model(cfg.model)
    _check(cfg.training.precision is not Precision.fp16 or cfg.device is not Device.cpu, "training.precision",
           cfg.training.precision.value, "fp16 needs device=cuda (use bf16 on the CPU)")
    validate_evaluation(cfg.evaluation, cfg.opponent)
    _check(cfg.evaluation.mode in PERIODIC_MODES, "evaluation.mode", cfg.evaluation.mode.value,
           "periodic evaluation in train.py plays `opponent` (single_opponent) or rates the network on the "
           "ladder (ladder), and evaluation.periodic_opponents; round_robin and gauntlet are for evaluate.py")
    if cfg.evaluation.mode is EvaluationMode.ladder:
        _check(len(cfg.evaluation.players) >= 1, "evaluation.players", cfg.evaluation.players,
               "evaluation=ladder needs the ladder's rungs (opponent presets, weakest first)")
    validate_periodic_opponents(cfg.evaluation)
    return cfg


def _validate_training(t: TrainingConfig) -> None:
    for key in _STEP_KEYS:
        setattr(t, key, _as_count(f"training.{key}", getattr(t, key)))
    _check(t.total_timesteps > 0, "training.total_timesteps", t.total_timesteps, "must be > 0")
    _check(t.checkpoint_interval_timesteps > 0, "training.checkpoint_interval_timesteps",
           t.checkpoint_interval_timesteps, "must be > 0")
    _check(t.checkpoint_interval_minutes >= 0, "training.checkpoint_interval_minutes",
           t.checkpoint_interval_minutes, "must be >= 0 (0: by steps only)")
    _check(0 < t.collective_timeout_minutes < math.inf, "training.collective_timeout_minutes",
           t.collective_timeout_minutes, "must be > 0 and finite")
    _check(t.learning_rate > 0, "training.learning_rate", t.learning_rate, "must be > 0")
    _check(t.weight_decay >= 0, "training.weight_decay", t.weight_decay, "must be >= 0")
    _check(t.max_grad_norm > 0, "training.max_grad_norm", t.max_grad_norm, "must be > 0")


def _validate_ppo(a: PPOConfig, e: EnvConfig, t: TrainingConfig) -> None:
    _check(0 < a.gamma <= 1, "algorithm.gamma", a.gamma, "must be in (0, 1]")
    _check(0 <= a.gae_lambda <= 1, "algorithm.gae_lambda", a.gae_lambda, "must be in [0, 1]")
    _check(a.num_steps >= 2, "algorithm.num_steps", a.num_steps, "must be >= 2")
    _check(a.update_epochs >= 1, "algorithm.update_epochs", a.update_epochs, "must be >= 1")
    _check(a.minibatch_size >= 1, "algorithm.minibatch_size", a.minibatch_size, "must be >= 1")
    batch = e.num_envs * a.num_steps
    _check(batch % a.minibatch_size == 0, "algorithm.minibatch_size", a.minibatch_size,
           f"must divide the batch env.num_envs * algorithm.num_steps = {batch}")
    _check(a.clip_coef > 0, "algorithm.clip_coef", a.clip_coef, "must be > 0")
    for key in ("ent_coef", "vf_coef"):
        _check(getattr(a, key) >= 0, f"algorithm.{key}", getattr(a, key), "must be >= 0")
    _check(a.target_kl is None or a.target_kl > 0, "algorithm.target_kl", a.target_kl, "must be > 0 or null")
    _check(a.init_kl_coef >= 0, "algorithm.init_kl_coef", a.init_kl_coef, "must be >= 0 (0: off)")
    _check(a.init_kl_coef == 0 or bool(t.init_checkpoint), "algorithm.init_kl_coef", a.init_kl_coef,
           "needs training.init_checkpoint=PATH (the penalty pulls towards the network the run starts from)")


def _validate_supervised(a: SupervisedConfig, t: TrainingConfig, data: bool) -> None:
    _check(0 < a.validation_fraction < 1, "algorithm.validation_fraction", a.validation_fraction, "must be in (0, 1)")
    for key in ("validation_positions", "validation_interval", "batch_size"):
        _check(getattr(a, key) >= 1, f"algorithm.{key}", getattr(a, key), "must be >= 1")
    _check(a.value_coef >= 0, "algorithm.value_coef", a.value_coef, "must be >= 0")
    _check(0 <= a.result_weight <= 1, "algorithm.result_weight", a.result_weight, "must be in [0, 1]")
    _check(a.score_scale > 0, "algorithm.score_scale", a.score_scale, "must be > 0")
    for key in ("size", "heuristic_fraction"):
        _check(not getattr(t.opponent_pool, key), f"training.opponent_pool.{key}", getattr(t.opponent_pool, key),
               "must be 0 with algorithm=supervised (it plays no games)")
    _check(len(a.train) >= 1, "algorithm.train", a.train, "needs at least one hcpe file or folder of them, "
           "e.g. algorithm.train=[data/a.hcpe,data/more]")
    if data:
        rows = [hcpe_rows(path) for path in hcpe_files(a.train)]
        _check(sum(n - held_out(n, a.validation_fraction) for n in rows) >= 1, "algorithm.train", a.train,
               f"{sum(rows)} rows in all: none left to train on after holding out algorithm.validation_fraction="
               f"{a.validation_fraction} of each file")


def _validate_gumbel_az(a: GumbelAZConfig, cfg: TrainConfig) -> None:
    _check(a.simulations >= 2, "algorithm.simulations", a.simulations,
           "must be >= 2 (the root's evaluation is the first playout: one more is the least search)")
    _check(1 <= a.gumbel_actions <= a.simulations, "algorithm.gumbel_actions", a.gumbel_actions,
           f"must be in [1, algorithm.simulations={a.simulations}] (a candidate needs a playout to be compared)")
    for key in ("c_visit", "c_scale"):
        _check(math.isfinite(getattr(a, key)) and getattr(a, key) > 0, f"algorithm.{key}", getattr(a, key),
               "must be finite and > 0")
    _check(a.mate_plies >= 0 and (a.mate_plies == 0 or a.mate_plies % 2 == 1), "algorithm.mate_plies",
           a.mate_plies, "must be 0 (off) or odd")
    for key in ("num_steps", "buffer_size", "minibatch_size"):
        _check(getattr(a, key) >= 1, f"algorithm.{key}", getattr(a, key), "must be >= 1")
    _check(a.minibatch_size <= a.buffer_size, "algorithm.minibatch_size", a.minibatch_size,
           f"must be at most algorithm.buffer_size={a.buffer_size}")
    _check(math.isfinite(a.samples_per_position) and a.samples_per_position > 0, "algorithm.samples_per_position",
           a.samples_per_position, "must be finite and > 0")
    _check(a.value_coef >= 0, "algorithm.value_coef", a.value_coef, "must be >= 0")
    _check(0 <= a.root_value_weight <= 1, "algorithm.root_value_weight", a.root_value_weight, "must be in [0, 1]")
    _check(cfg.env.workers == 1, "env.workers", cfg.env.workers,
           "must be 1 with algorithm=gumbel_az (the search reads the games in the training process)")
    for key in ("material_potential", "king_potential"):
        _check(getattr(cfg.model, key) == 0, f"model.{key}", getattr(cfg.model, key),
               "must be 0 with algorithm=gumbel_az (the search and its value targets need values in [-1, 1])")
    for key in ("size", "heuristic_fraction"):
        _check(not getattr(cfg.training.opponent_pool, key), f"training.opponent_pool.{key}",
               getattr(cfg.training.opponent_pool, key), "must be 0 with algorithm=gumbel_az (self-play only)")


def hcpe_files(paths: list[str]) -> list[Path]:
    """The hcpe files of ``algorithm.train``: each file as given, each folder's ``*.hcpe`` files by name;
    a ``ConfigError`` naming the key and the path for one that is missing or a folder without any."""
    files = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(path.glob("*.hcpe"))
            _check(bool(found), "algorithm.train", paths, f"{entry}: a folder without *.hcpe files")
            files += found
        else:
            _check(path.is_file(), "algorithm.train", paths, f"{entry}: no such file or folder")
            files.append(path)
    return files


def hcpe_rows(path: Path) -> int:
    """The number of rows of an hcpe file; a ``ConfigError`` for a size that is no whole number of rows."""
    from keisei.data.hcpe import HCPE

    size = path.stat().st_size
    _check(size % HCPE.itemsize == 0, "algorithm.train", str(path),
           f"{size} bytes is not a whole number of {HCPE.itemsize}-byte hcpe rows (truncated, or another format)")
    return size // HCPE.itemsize


def held_out(rows: int, fraction: float) -> int:
    """How many of a file's ``rows`` (its last ones) are held out for validation: ``fraction`` of them,
    rounded up (a file of one row or more holds out at least one)."""
    return math.ceil(round(rows * fraction, 6))  # 300 * 0.07 is 21.000000000000004: 21 rows, not 22


def _validate_opponent_pool(pool: OpponentPoolConfig, e: EnvConfig) -> None:
    key = "training.opponent_pool"
    _check(pool.size >= 0, f"{key}.size", pool.size, "must be >= 0")
    _check(pool.snapshot_interval >= 1, f"{key}.snapshot_interval", pool.snapshot_interval, "must be >= 1")
    _check(0 <= pool.fraction <= 1, f"{key}.fraction", pool.fraction, "must be in [0, 1]")
    _check(0 <= pool.heuristic_fraction <= 1 - pool.fraction, f"{key}.heuristic_fraction",
           pool.heuristic_fraction, f"must be in [0, 1 - {key}.fraction]")
    _check(pool.heuristic_fraction == 0 or e.workers == 1, f"{key}.heuristic_fraction", pool.heuristic_fraction,
           "needs env.workers=1 (the heuristic player reads the games in the training process)")


def _validate_env(e: EnvConfig) -> None:
    _check(e.num_envs >= 1, "env.num_envs", e.num_envs, "must be >= 1")
    _check(1 <= e.workers <= e.num_envs, "env.workers", e.workers, "must be >= 1 and at most env.num_envs")
    _check(e.max_plies >= 1, "env.max_plies", e.max_plies, "must be >= 1")
    _check(0 <= e.opening_plies < e.max_plies, "env.opening_plies", e.opening_plies,
           "must be >= 0 and below env.max_plies")


def _validate_model(m: ModelConfig) -> None:
    _check(m.blocks >= 1, "model.blocks", m.blocks, "must be >= 1")
    _check(m.channels >= 1, "model.channels", m.channels, "must be >= 1")
    _check(m.value_hidden >= 1, "model.value_hidden", m.value_hidden, "must be >= 1")
    _check(0 <= m.material_potential <= 0.1, "model.material_potential", m.material_potential,
           "must be in [0, 0.1] (the value of a pawn; the outcome is worth 1)")
    _check(0 < m.material_potential_max <= 0.5, "model.material_potential_max", m.material_potential_max,
           "must be in (0, 0.5] (the potential must stay well below a win, worth 1)")
    _check(0 <= m.king_potential <= 0.015, "model.king_potential", m.king_potential,
           "must be in [0, 0.015] (27 attacks on a king's zone at most; the outcome is worth 1)")
    _check(m.mlp_hidden >= 1, "model.mlp_hidden", m.mlp_hidden, "must be >= 1")
    _check(m.se_reduction >= 1 and m.channels // m.se_reduction >= 1, "model.se_reduction", m.se_reduction,
           "must be >= 1 and at most model.channels")


def opponent_presets() -> list[str]:
    """The names of the opponent presets (``conf/opponent/<name>.yaml``)."""
    return sorted(p.stem for p in (CONF / "opponent").glob("*.yaml"))


def validate_periodic_opponents(ev: EvaluationConfig) -> None:
    """``evaluation.periodic_opponents``: distinct names of existing opponent presets, with periodic
    evaluation on. (Whether each preset can be played alone is checked when it is composed, by
    ``keisei.evaluation.opponents.periodic_opponents``.)"""
    names = ev.periodic_opponents
    if not names:
        return
    key = "evaluation.periodic_opponents"
    _check(ev.interval_timesteps > 0, key, names,
           "needs periodic evaluation: set evaluation.interval_timesteps (e.g. 1e5)")
    _check(len(set(names)) == len(names), key, names, "names an opponent twice")
    presets = opponent_presets()
    for name in names:
        _check(name in presets, key, names,
               f"{name!r} is not an opponent preset (conf/opponent/: {', '.join(presets)})")


def to_container(cfg: TrainConfig | EvaluateConfig | OpponentConfig) -> dict[str, Any]:
    """Plain dict (enums as strings) for checkpoints, metrics and W&B."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore[return-value]


def from_container(data: dict[str, Any]) -> TrainConfig:
    """The ``TrainConfig`` of a dict written by ``to_container`` (e.g. from a checkpoint); a config
    written before ``algorithm`` existed has its PPO keys under ``training``, and is read as such."""
    data = upgrade_config(data)
    schema = ALGORITHMS[data["algorithm"].get("name", "ppo")]
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"algorithm": OmegaConf.structured(schema)}, data)
    return validate(merged, data=False)  # type: ignore[arg-type]


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the PPO keys of a config written before ``algorithm`` existed moved there."""
    if "algorithm" in data:
        return data
    training = dict(data.get("training", {}))
    algorithm = {"name": "ppo", **{k: training.pop(k) for k in PPO_KEYS if k in training}}
    return {**data, "training": training, "algorithm": algorithm}
