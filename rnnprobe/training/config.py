"""A training run's complete configuration: frozen dataclasses, one per section.

Every setting has a dotted key (``train.steps``, ``model.hidden_size``) used alike by the CLI
flags (``--steps``), study specs (TOML sections) and ``--set key=value``. Unknown keys and
values of the wrong type are rejected with the list of valid ones; nothing is ever evaluated.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from rnnprobe.core.initialisation import SCHEMES
from rnnprobe.data.names import CHARSETS, LEVELS, SAMPLINGS, task_names
from rnnprobe.errors import RnnprobeError, check_choice, check_count
from rnnprobe.nonlinearity import NONLINEARITIES
from rnnprobe.records.index import flatten
from rnnprobe.seeds import SEED_LIMIT

LM, RECALL, FILE, TEXT = ("lm",), ("recall",), ("classify",), ("lm", "classify")
BUILT_IN_TASKS = ("lm", "copy", "adding", "recall", "classify")


@dataclass(frozen=True)
class TaskConfig:
    """What the run learns (``task.*``): the task, its sequence length and its data."""

    name: str = field(
        default="copy",
        metadata={"help": "lm, copy, adding, recall, classify or a registered task"},
    )
    seq_len: int = field(
        default=20,
        metadata={
            "help": "steps of dependency. copy: the delay; the network runs T = seq_len + 20 "
            "steps (10 symbols, the delay, 10 recalls); adding: T; recall: the lag, T = seq_len "
            "+ 1; lm: the window T; classify: tokens kept per example"
        },
    )
    # "tasks": the built-in tasks a setting applies to; another one refuses it (validate)
    corpus: str = field(
        default="stdlib", metadata={"help": "lm: a UTF-8 file or 'stdlib'", "tasks": LM}
    )
    level: str = field(
        default="char", metadata={"help": "lm, classify tokens: char or word", "tasks": TEXT}
    )
    sampling: str = field(
        default="random", metadata={"help": "lm: random or sequential", "tasks": LM}
    )
    max_chars: int = field(
        default=2_000_000,
        metadata={"help": "lm: characters of the corpus read, at most", "tasks": LM},
    )
    num_classes: int = field(
        default=8, metadata={"help": "recall: number of key tokens K", "tasks": RECALL}
    )
    variable_length: bool = field(
        default=False, metadata={"help": "recall: padded lengths", "tasks": RECALL}
    )
    # classify reads labelled text: a folder of <class>.txt files (one example per line) or a
    # CSV/TSV file with a header naming the text and label columns
    data: str = field(
        default="",
        metadata={"help": "classify: a folder of <class>.txt files, or .csv/.tsv", "tasks": FILE},
    )
    text_column: str = field(
        default="text", metadata={"help": "classify: CSV text column", "tasks": FILE}
    )
    label_column: str = field(
        default="label", metadata={"help": "classify: CSV label column", "tasks": FILE}
    )
    valid_fraction: float = field(
        default=0.1,
        metadata={"help": "lm, classify (per class): share held out to validate", "tasks": TEXT},
    )
    lowercase: bool = field(
        default=False, metadata={"help": "lm, classify: lowercase the text", "tasks": TEXT}
    )
    charset: str = field(
        default="all",
        metadata={
            "help": "lm, classify: all, ascii or letters-space (a-z, A-Z and space)",
            "tasks": TEXT,
        },
    )


@dataclass(frozen=True)
class ModelConfig:
    """The network (``model.*``): sizes, nonlinearity and the recurrent initialisation."""

    hidden_size: int = field(default=64, metadata={"help": "units per layer H"})
    layers: int = field(default=1, metadata={"help": "stacked RNN layers (count)"})
    nonlinearity: str = field(default="tanh", metadata={"help": "tanh or relu"})
    embedding_dim: int = field(default=32, metadata={"help": "token embedding size (units)"})
    init: str = field(
        default="default",
        metadata={"help": "W_hh init: default, orthogonal, identity, gaussian or spectral"},
    )
    init_gain: float = field(
        default=1.0, metadata={"help": "gain g: gaussian N(0, g²/H), orthogonal·g, identity·g"}
    )
    init_radius: float = field(
        default=1.0, metadata={"help": "spectral: W_hh scaled to spectral radius ρ"}
    )


@dataclass(frozen=True)
class TrainConfig:
    """How it trains (``train.*``): steps, optimizer, clipping, truncation, validation."""

    steps: int = field(default=500, metadata={"help": "optimizer steps to train (count)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per batch (count)"})
    optimizer: str = field(default="adam", metadata={"help": "sgd, adam, rmsprop or adagrad"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (step size of the optimizer)"})
    momentum: float = field(default=0.9, metadata={"help": "sgd momentum, in [0, 1)"})
    clip: str = field(
        default="none",
        metadata={"help": "gradient clipping: none, norm (global 2-norm) or value (each element)"},
    )
    clip_value: float = field(
        default=1.0,
        metadata={"help": "clip threshold: max global 2-norm (norm) or max |element| (value)"},
    )
    bptt: str = field(
        default="full",
        metadata={
            "help": "BPTT truncation: full, K (cut every K steps) or random:K (segments of K, "
            "or K//2 with probability 0.05)"
        },
    )
    on_nonfinite: str = field(
        default="skip", metadata={"help": "skip the update, or stop the run as diverged"}
    )
    max_nonfinite: int = field(
        default=20,
        metadata={"help": "consecutive skipped updates (count) before the run ends diverged"},
    )
    eval_every: int = field(default=100, metadata={"help": "optimizer steps between validations"})
    eval_batches: int = field(
        default=4,
        metadata={
            "help": "batches per validation (count; 0: a text or file task's whole validation "
            "split, the same text at every seq_len; a synthetic task's 8)"
        },
    )
    # Gradient flossing (rnnprobe/training/flossing.py); parsed by flossing.FlossSpec.parse.
    floss: str = field(
        default="none",
        metadata={
            "help": "gradient flossing: none, or K[,key=value…] to add weight·Σ λ_i² of each "
            "layer's top K Lyapunov exponents (ln per time step) to the loss. Keys: weight "
            "(default 1; 0 records only), every (optimizer steps between flossing steps, 1), "
            "pre (flossing-only updates before step 1, 0), qr (time steps between QRs, 1), "
            "warmup (time steps not counted, 0), batch (sequences used, 0 = all)"
        },
    )
    # Explosion early warning (rnnprobe/training/warning.py); parsed by warning.WarnSpec.parse.
    warn: str = field(
        default="on",
        metadata={
            "help": "explosion early warning: on, none, or key=value[,…] over these defaults: "
            "window (optimizer steps W, 20); grad (warn when the median pre-clip gradient norm "
            "of the last W steps exceeds this factor × the median of the W before, 10); loss "
            "(a step's loss exceeds this factor × its running mean over about W steps, 4); "
            "lyapunov (the Lyapunov probe's λ₁ exceeds this, nats per time step, 0.1); "
            "jacobian (the spectra probe's mean ‖J_t‖₂ exceeds this, 3); key=off drops a sign. "
            "The first warning is recorded as a warning event; it and the first non-finite "
            "step each write RUN/snapshots/<step>-<kind>.pt for rnnprobe replay (none: neither)"
        },
    )
    # -- end explosion early warning
    flush_denormals: bool = field(
        default=False,
        metadata={
            "help": "CPU: read and write subnormal floats (below 1.2e-38 in float32) as 0, on "
            "every thread: steps whose adjoints vanish that far run several times faster, and "
            "record 0 there (rnnprobe/core/denormals.py)"
        },
    )


@dataclass(frozen=True)
class ProbeConfig:
    """When each probe fires (``probes.*``, a SCHEDULE each) and its sample sizes."""

    adjoints: str = field(default="always", metadata={"help": "‖∂L/∂h_t‖ per step t"})
    weight_grads: str = field(
        default="every:10", metadata={"help": "per-step ∇W_hh, ∇W_ih contributions"}
    )
    # Schedules: always, never, every:K or log:BASE (steps 1, 2, 3, 5, 9, … for BASE 2).
    # At the defaults the scheduled probes cost about 8 % of a step on top of the adjoint
    # records' 4-5 % (spectra cost 3-4 steps a firing): rnnprobe bench --suite probes.
    hidden: str = field(default="every:25", metadata={"help": "hidden-state statistics"})
    spectra: str = field(default="every:100", metadata={"help": "W_hh and Jacobian spectra"})
    lyapunov: str = field(default="every:100", metadata={"help": "Lyapunov exponents"})
    reach: str = field(
        default="every:50", metadata={"help": "gradient reach ‖∂ℓ_s/∂h_t‖ by distance"}
    )
    # Singular values of J_{t+k}⋯J_{t+1} for k = 1, 2, 4, … T: seconds per firing at H = 256.
    truncation: str = field(
        default="every:50",
        metadata={"help": "full-BPTT gradient beside the truncated one (--bptt K, random:K)"},
    )
    products: str = field(
        default="never", metadata={"help": "finite-time Lyapunov exponents (costly)"}
    )
    sub_batch: int = field(
        default=4, metadata={"help": "sequences (count) for spectra, Lyapunov and reach"}
    )
    jacobian_samples: int = field(
        default=4, metadata={"help": "Jacobians J_t sampled per firing (count of (t, b))"}
    )
    top_k: int = field(
        default=16, metadata={"help": "largest singular values / exponents kept (count)"}
    )
    warmup: int = field(default=0, metadata={"help": "time steps run before Lyapunov QR starts"})


@dataclass(frozen=True)
class RunConfig:
    """One run's every setting; ``flat()`` keys (``train.lr``) are the CLI's and a spec's."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = field(default=0, metadata={"help": "seeds weights, data and probes"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    dtype: str = field(default="float32", metadata={"help": "float32 or float64"})
    flush_every: int = field(
        default=50, metadata={"help": "optimizer steps between record flushes to disk"}
    )
    checkpoint_every: int = field(
        default=100, metadata={"help": "optimizer steps between checkpoints"}
    )

    def to_dict(self) -> dict[str, Any]:
        """Return the nested plain dict (JSON- and TOML-ready)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Return ``{dotted key: value}`` for every setting."""
        return flatten(self.to_dict())

    def run_id(self, exclude: tuple[str, ...] = ("device",)) -> str:
        """Return a stable 10-hex id of the settings that change results (not the device).

        Settings added after ids were first published (``LATER_KEYS``) count only when they
        differ from their default, so a run configured before they existed keeps its id.
        """
        settings = {
            k: v
            for k, v in self.flat().items()
            if k not in exclude and not (k in LATER_KEYS and v == FIELDS[k].default)
        }
        text = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig, "probes": ProbeConfig}


def _leaf_fields() -> dict[str, dataclasses.Field]:
    keys = {}
    for f in fields(RunConfig):
        if f.name in SECTIONS:
            for sub in fields(SECTIONS[f.name]):
                keys[f"{f.name}.{sub.name}"] = sub
        else:
            keys[f.name] = f
    return keys


FIELDS: dict[str, dataclasses.Field] = _leaf_fields()
LATER_KEYS = frozenset(
    f"task.{name}"
    for name in ("data", "text_column", "label_column", "valid_fraction", "lowercase", "charset")
) | {"train.floss", "probes.truncation", "train.warn", "train.flush_denormals"}


_FLAG_NAMES = {"task.name": "task", "probes.warmup": "lyapunov-warmup"}


def flag_name(key: str) -> str:
    """Return the command-line flag of setting ``key``, without its dashes.

    ``model.hidden_size`` is ``hidden-size``: the key's last part; ``task.name`` is ``task``.
    """
    return _FLAG_NAMES.get(key, key.rpartition(".")[2].replace("_", "-"))


def field_type(key: str) -> type:
    """Return the Python type of setting ``key``."""
    return {"int": int, "float": float, "str": str, "bool": bool}[str(FIELDS[key].type)]


def check_key(key: str) -> str:
    """Return ``key`` if it names a setting, else raise an error naming the closest keys (or,
    with none close, listing the valid ones)."""
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=3, cutoff=0.75)
        if close:
            raise RnnprobeError(f"unknown setting {key!r}; did you mean {' or '.join(close)}?")
        raise RnnprobeError(f"unknown setting {key!r}; valid: {', '.join(FIELDS)}")
    return key


def coerce(key: str, value: Any) -> Any:
    """Return ``value`` as setting ``key``'s type, or raise a one-line error."""
    kind = field_type(check_key(key))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # e.g. bptt = 32
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RnnprobeError(f"{key} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_literal(key: str, text: str) -> Any:
    """Return ``text`` parsed as a Python literal of setting ``key``'s type (strings as is)."""
    kind = field_type(check_key(key))
    if kind is str:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise RnnprobeError(f"{key}={text!r} is not a literal of type {kind.__name__}") from None
    return coerce(key, value)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Return ``(key, value)`` from ``"key=value"`` (``--set``), the value parsed as a literal."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise RnnprobeError(f"--set needs key=value, got {text!r}")
    return key.strip(), parse_literal(key.strip(), raw.strip())


def build_config(settings: dict[str, Any]) -> RunConfig:
    """Return a ``RunConfig`` from ``{dotted key: value}`` over the defaults, checked."""
    nested: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    top: dict[str, Any] = {}
    for key, value in settings.items():
        value = coerce(key, value)
        section, _, name = key.partition(".")
        if name:
            nested[section][name] = value
        else:
            top[key] = value
    config = RunConfig(**{s: cls(**nested[s]) for s, cls in SECTIONS.items()}, **top)
    validate(config)
    return config


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Return the ``RunConfig`` stored as a nested dict (e.g. a run's ``config.json``)."""
    return build_config(flatten(data))


PROBES = (  # the probes that fire on a schedule (see SCHEDULE_HELP), in firing order
    "adjoints",
    "weight_grads",
    "hidden",
    "spectra",
    "lyapunov",
    "reach",
    "truncation",
    "products",
)
SCHEDULES = tuple(f"probes.{name}" for name in PROBES)
SCHEDULE_HELP = (
    "SCHEDULE (when a probe fires): always, never, every:K (steps 1, K+1, 2K+1, …) or log:BASE "
    "(steps 1, 2, 3, 5, 9, … for BASE 2); all but never also fire at the last step."
)
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")  # built in this order by training.setup
CLIP_MODES = ("none", "norm", "value")  # training.step.clip_gradients
DTYPES = ("float32", "float64")
# The values each choice setting takes, from the registry that implements them (task names:
# ``setting_choices``, since tasks may be registered later).
CHOICES = {
    "task.level": LEVELS,
    "task.charset": CHARSETS,
    "task.sampling": SAMPLINGS,
    "model.nonlinearity": NONLINEARITIES,
    "model.init": SCHEMES,
    "train.optimizer": OPTIMIZERS,
    "train.clip": CLIP_MODES,
    "train.on_nonfinite": ("skip", "stop"),
    "dtype": DTYPES,
}
POSITIVE = (
    "task.seq_len",
    "task.max_chars",
    "task.num_classes",
    "model.hidden_size",
    "model.layers",
    "model.embedding_dim",
    "train.steps",
    "train.batch_size",
    "train.max_nonfinite",
    "train.eval_every",
    "probes.sub_batch",
    "probes.jacobian_samples",
    "probes.top_k",
    "flush_every",
    "checkpoint_every",
)


INT_LIMIT = 2**63  # counts and sizes stay int64


def setting_choices(key: str) -> tuple[str, ...] | None:
    """Return the values setting ``key`` accepts, or None when any value of its type does.

    Task names are the built-in and registered tasks of the moment: command-line flags take
    them when the CLI is imported, ``build_config`` when it is called.
    """
    return task_names() if key == "task.name" else CHOICES.get(key)


def check_seed(seed: int, what: str = "--seed") -> int:
    """Return ``seed`` if it lies in [0, 2**64) (any seed a run takes), else raise."""
    if not 0 <= seed < SEED_LIMIT:
        raise RnnprobeError(f"{what} must lie in [0, 2**64), got {seed}")
    return seed


def validate(config: RunConfig) -> None:
    """Raise a one-line error for a value outside its choices or range."""
    flat = config.flat()
    check_seed(config.seed)
    for key, value in flat.items():
        if key != "seed" and field_type(key) is int and abs(value) >= INT_LIMIT:
            raise RnnprobeError(f"{key} must be below 2**63, got {value}")
    for key in ("task.name", *CHOICES):
        check_choice(flat[key], setting_choices(key) or (), key)
    name = flat["task.name"]
    for key, spec in FIELDS.items():  # an option another built-in task reads: a mistake
        tasks = spec.metadata.get("tasks")
        if tasks and name in BUILT_IN_TASKS and name not in tasks and flat[key] != spec.default:
            raise RnnprobeError(
                f"--{flag_name(key)} applies to --task {' or '.join(tasks)} only, not {name}"
            )
    for key in POSITIVE:
        check_count(flat[key], f"--{flag_name(key)}")
    check_count(flat["train.eval_batches"], f"--{flag_name('train.eval_batches')}", minimum=0)
    for key, value in flat.items():  # inf or NaN would poison the weights or crash LAPACK
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) < 1e30):
            raise RnnprobeError(f"{key} must be a finite number below 1e30, got {value}")
    for key in ("train.lr", "train.clip_value", "model.init_radius"):
        if not flat[key] > 0:
            raise RnnprobeError(f"--{flag_name(key)} must be positive, got {flat[key]}")
    if not 0 < flat["task.valid_fraction"] < 1:
        raise RnnprobeError(
            f"task.valid_fraction must lie in (0, 1), got {flat['task.valid_fraction']}"
        )
    if config.task.name == "classify" and not config.task.data.strip():
        raise RnnprobeError(
            "--task classify needs --data: a folder of <class>.txt files or a .csv/.tsv file"
        )
    if flat["model.init_gain"] < 0:
        raise RnnprobeError(f"model.init_gain must be ≥ 0, got {flat['model.init_gain']}")
    if not 0 <= flat["train.momentum"] < 1:
        raise RnnprobeError(f"train.momentum must lie in [0, 1), got {flat['train.momentum']}")
    check_count(config.probes.warmup, "probes.warmup", 0)
    from rnnprobe.data.truncation import Truncation
    from rnnprobe.probes.schedule import Schedule
    from rnnprobe.training.flossing import FlossSpec
    from rnnprobe.training.warning import WarnSpec

    parsers = {"train.bptt": Truncation.parse, **dict.fromkeys(SCHEDULES, Schedule.parse)}
    parsers["train.floss"] = lambda text: FlossSpec.parse(text, config.model.hidden_size)
    parsers["train.warn"] = WarnSpec.parse  # warning.py: parsing loads no torch
    for key, parse in parsers.items():
        try:
            parse(flat[key])
        except RnnprobeError as error:
            raise RnnprobeError(f"{key} = {flat[key]!r}: {error}") from None
