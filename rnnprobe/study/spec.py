"""Study specs: a TOML file and/or repeated flags, expanded into a grid of run configs.

A spec file (TOML, parsed with ``tomllib``; nothing is evaluated)::
    # Question: does ReLU carry gradients further back than tanh on the copy task?
    name = "seq_len"
    question = "Does ReLU carry gradients further back than tanh on the copy task?"
    description = "tanh vs ReLU across sequence lengths"
    seeds = 3                        # seeds 0, 1, 2 become an axis on `seed`
    device = "cpu"                   # top-level settings: seed, device, dtype, flush_every, ...
    [task]                           # [task] [model] [train] [probes]: fixed settings
    name = "copy"
    [sweep]                          # dotted key -> list of values: one axis each
    "task.seq_len" = [10, 50, 200]
    "model.nonlinearity" = ["tanh", "relu"]

Precedence: config defaults < spec < command-line flags and ``--set``. A flag given once fixes
its setting (even one the spec sweeps); given several times it becomes an axis.

Everything here is plain Python (no torch): a bad spec is refused before anything heavy loads.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnprobe.errors import RnnprobeError, check_count
from rnnprobe.training.config import (
    FIELDS,
    SECTIONS,
    RunConfig,
    build_config,
    check_key,
    coerce,
    flatten,
)

__all__ = [
    "GridPoint",
    "StudySpec",
    "expand",
    "load_spec",
    "override",
    "spec_from_dict",
    "study_title",
]

_SPEC_KEYS = ("name", "question", "description", "seeds")


@dataclass(frozen=True)
class StudySpec:
    """A study: fixed settings plus axes; the grid is the product of the axes, in order."""

    name: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # dotted key -> value
    axes: Mapping[str, tuple] = field(default_factory=dict)  # dotted key -> values
    description: str = ""
    question: str = ""  # what the study answers; the report opens with it


@dataclass(frozen=True)
class GridPoint:
    """One run of a study: its id, complete config and the axis values that picked it."""

    run_id: str
    config: RunConfig
    values: dict[str, Any]


def load_spec(path: str | os.PathLike) -> StudySpec:
    """Return the study spec in the TOML file at ``path`` (name defaults to the file's stem)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RnnprobeError(f"no study spec at {path}") from None
    except IsADirectoryError:
        raise RnnprobeError(f"{path} is a directory, not a study spec (a .toml file)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RnnprobeError(f"{path} is not valid TOML: {error}") from None
    if not data:
        raise RnnprobeError(f"{path} is empty; a study spec needs at least a [sweep] or settings")
    try:
        return spec_from_dict(data, default_name=path.stem)
    except RnnprobeError as error:
        raise RnnprobeError(f"{path}: {error}") from None


def spec_from_dict(data: Mapping[str, Any], default_name: str = "study") -> StudySpec:
    """Return the spec a parsed TOML document describes; unknown keys list the valid ones."""
    data = dict(data)
    name = data.pop("name", default_name)
    description = data.pop("description", "")
    question = data.pop("question", "")
    seeds = data.pop("seeds", None)
    sweep = data.pop("sweep", {})
    for key, value in (("name", name), ("description", description), ("question", question)):
        if not isinstance(value, str):
            raise RnnprobeError(f"{key} must be a string, got {value!r}")
    fixed: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise RnnprobeError(f"[{key}] must be a table of settings, got {value!r}")
            for sub, item in flatten(value, f"{key}.").items():
                fixed[check_key(sub)] = coerce(sub, item)
        elif key in FIELDS and key not in SECTIONS:
            fixed[key] = coerce(key, value)
        else:
            top = [k for k in FIELDS if "." not in k]
            valid = [*_SPEC_KEYS, "[sweep]", *(f"[{s}]" for s in SECTIONS), *top]
            raise RnnprobeError(f"unknown key {key!r}; valid: {', '.join(valid)}")
    if not isinstance(sweep, dict):
        raise RnnprobeError("[sweep] must be a table of dotted key = [values]")
    axes = {}
    for key, values in flatten(sweep).items():
        if key in fixed:
            raise RnnprobeError(f"{key} is both fixed and swept; keep one")
        if not isinstance(values, list):
            raise RnnprobeError(f"sweep {key} must be a list of values, got {values!r}")
        axes[check_key(key)] = _axis(key, values)
    spec = StudySpec(_check_name(name), fixed, axes, description, question)
    return override(spec, seeds=seeds) if seeds is not None else spec


def override(
    spec: StudySpec,
    flags: Mapping[str, Iterable[Any]] | None = None,
    assignments: Iterable[tuple[str, Any]] = (),
    *,
    seeds: int | None = None,
) -> StudySpec:
    """Return ``spec`` with command-line settings applied: one value fixes, several sweep.

    ``flags`` maps dotted keys to the values given (``--seq-len 8 --seq-len 32``),
    ``assignments`` are ``--set`` pairs (always fixed), ``seeds`` makes seeds 0..n-1 an axis.
    """
    fixed, axes = dict(spec.fixed), dict(spec.axes)

    def put(key: str, values: list) -> None:
        fixed.pop(key, None)
        axes.pop(key, None)
        if len(values) == 1:
            fixed[key] = coerce(key, values[0])
        else:
            axes[key] = _axis(key, values)

    given = {check_key(k): list(v) for k, v in (flags or {}).items()}
    for key, values in given.items():
        put(key, values)
    for key, value in assignments:
        if key in given:
            raise RnnprobeError(f"{key} is given both as a flag and with --set; keep one")
        put(check_key(key), [value])
    if seeds is not None:
        check_count(seeds, "seeds")
        if "seed" in given:
            raise RnnprobeError("give either --seed or --seeds, not both")
        put("seed", list(range(seeds)))
    return StudySpec(spec.name, fixed, axes, spec.description, spec.question)


def _axis(key: str, values: list) -> tuple:
    if not values:
        raise RnnprobeError(f"sweep axis {key} is empty; give at least one value")
    axis = tuple(coerce(key, v) for v in values)
    repeated = sorted({repr(v) for v in axis if axis.count(v) > 1})
    if repeated:
        raise RnnprobeError(f"sweep axis {key} repeats {', '.join(repeated)}")
    return axis


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise RnnprobeError(f"study name {name!r} must be a plain file name")
    return name


def expand(spec: StudySpec) -> list[GridPoint]:
    """Return one grid point per combination of axis values, in axis order, ids unique."""
    keys = list(spec.axes)
    points: dict[str, GridPoint] = {}
    for combo in itertools.product(*spec.axes.values()):
        values = dict(zip(keys, combo, strict=True))
        try:
            config = build_config({**spec.fixed, **values})
        except RnnprobeError as error:
            where = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise RnnprobeError(f"{where}: {error}" if where else str(error)) from None
        run_id = config.run_id()
        if run_id in points:
            raise RnnprobeError(
                f"{points[run_id].values} and {values} give the same run (the device does not "
                "change results); drop that axis"
            )
        points[run_id] = GridPoint(run_id, config, values)
    return list(points.values())


def study_title(name: str) -> str:
    """Return how output names a study: ``study`` for the default name, else ``study 'name'``."""
    return "study" if name == "study" else f"study {name!r}"
