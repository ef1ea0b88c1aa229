"""Run record store: writes and reads one training run's files, atomically and incrementally.

A run directory holds::

    config.json                         the complete resolved config
    status.json                         {"status", "step", "error", "updated", "pid", "host",
                                         "process_start"}: the writer and its heartbeat
    .rnnprobe.lock                      held (flock) by the one process writing the run
    tables/<table>/part-000000.parquet  tidy rows, one part per flush, read in sequence order
    checkpoints/step-<step>.pt          the last ``keep_checkpoints`` training states
    snapshots/<step>-<kind>.pt          the states of the first warning and the first non-finite
                                        step, for ``rnnprobe replay`` (training/warning.py)

Every file appears by ``os.replace`` of a fsynced temporary in the same directory, so a kill -9
loses at most the rows appended since the last :meth:`RunStore.flush` and never leaves a
half-written file under a name a reader looks at. Temporary names start with ``.`` and contain
``.tmp-``; readers ignore them and :meth:`RunStore.open_for_resume` deletes them.

Resume contract: :meth:`RunStore.save_checkpoint` flushes every table and stores each table's
next part number inside the checkpoint; :meth:`RunStore.open_for_resume` deletes the parts
numbered at or after those counters, so rerunning the steps after the checkpoint reproduces the
records of an uninterrupted run. It resumes from the newest checkpoint that loads and whose
parts all read back; damaged newer checkpoints are renamed ``*.damaged`` and listed in
``store.recovered``.

The tables' columns are documented in :mod:`rnnprobe.records.schema`; ``status.json`` and the
study index are read and written by :mod:`rnnprobe.records.index`. A damaged file raises
:class:`RecordError` naming it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rnnprobe.errors import RecordError, RnnprobeError, check_choice, check_count, shorten
from rnnprobe.records.index import (
    HEARTBEAT_SECONDS,
    STATUSES,
    TMP_MARK,
    is_run_dir,
    read_config_file,
    read_status,
    write_atomic,
    write_atomic_with,
)
from rnnprobe.records.lock import LOCK_NAME, process_identity
from rnnprobe.records.schema import STANDARD_TABLES

__all__ = [
    "Checkpoint",
    "Run",
    "RunStore",
    "load_run",
    "read_table",
]


Rows: TypeAlias = Sequence[Mapping[str, Any]] | Mapping[str, Any] | pd.DataFrame

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PART_NAME = re.compile(r"^part-(\d{6,})\.parquet$")
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")


@dataclass
class Checkpoint:
    """A training state saved by :meth:`RunStore.save_checkpoint`."""

    step: int
    state: dict
    table_parts: dict[str, int]  # table -> number of parts that existed when it was saved
    path: Path | None = None


@dataclass
class Run:
    """One run's records as read from disk."""

    path: Path
    config: dict
    status: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame:
        """Return the named table, or an empty one if the run never wrote it."""
        if name not in self.tables:
            return _empty_table(name)
        return self.tables[name]


def check_run_dir(path: Path) -> None:
    """Raise a one-line error unless ``path`` is a run directory: missing, or not a run."""
    if not path.exists():
        raise RnnprobeError(f"{path}: no such file or directory")
    if not is_run_dir(path):
        raise RnnprobeError(f"{path} is not an rnnprobe run directory (no config.json)")


def load_run(path: str | os.PathLike, tables: Iterable[str] | None = None) -> Run:
    """Return the run at ``path`` with ``tables`` (default: all it wrote) read eagerly."""
    path = Path(path)
    check_run_dir(path)
    config = read_config_file(path / "config.json")
    names = _table_names(path) if tables is None else list(tables)
    return Run(path, config, read_status(path), {name: read_table(path, name) for name in names})


def read_table(path: str | os.PathLike, name: str) -> pd.DataFrame:
    """Return the named table of the run at ``path``: its parts concatenated in order.

    Raises :class:`RecordError` naming the part when one is damaged.
    """
    parts = _part_files(Path(path) / "tables" / _check_table_name(name))
    if not parts:
        return _empty_table(name)
    tables = [_read_part(p) for p in parts.values()]
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def _read_part(part: Path) -> pa.Table:
    try:
        return pq.read_table(part)
    except (pa.ArrowException, OSError) as error:
        reason = " ".join(str(error).split())[:200]
        raise RecordError(f"{part} is damaged ({reason})") from None


class RunStore:
    """Writer for one run directory; use :meth:`create` or :meth:`open_for_resume`."""

    def __init__(self, path: Path, *, keep_checkpoints: int = 2) -> None:
        self.path = path
        self.keep_checkpoints = check_count(keep_checkpoints, "keep_checkpoints")
        self.checkpoint: Checkpoint | None = None  # the one resumed from, if any
        self._next_part: dict[str, int] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self._pending: dict[str, list[pa.Table]] = {}
        self.recovered: list[str] = []  # checkpoints passed over on resume, and why
        self._status: dict[str, Any] = {}
        self._status_written = 0.0

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        config: Mapping[str, Any],
        *,
        overwrite: bool = False,
        keep_checkpoints: int = 2,
    ) -> RunStore:
        """Return a store for a new run at ``path`` with ``config.json`` and a running status.

        An existing run, or a non-empty directory, is refused unless ``overwrite``; then only
        the store's own files are removed and anything else in the directory is left alone.
        """
        path = Path(path)
        payload = _config_json(config)  # before touching the disk, so a bad config leaves none
        if path.exists() and not path.is_dir():
            raise RnnprobeError(f"{path} exists and is not a directory")
        if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()):
            if not overwrite:
                if is_run_dir(path):
                    raise RnnprobeError(
                        f"{path} holds a run; continue it with --resume {path}, "
                        "or choose another directory"
                    )
                raise RnnprobeError(f"{path} is not empty and not a run; choose another directory")
            _remove_store_files(path)
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, keep_checkpoints=keep_checkpoints)
        store.set_status("running", step=0)
        # config.json last: its presence is what marks a complete run directory.
        write_atomic(path / "config.json", payload)
        return store

    @classmethod
    def open_for_resume(
        cls,
        path: str | os.PathLike,
        *,
        keep_checkpoints: int = 2,
        map_location: str | torch.device = "cpu",
    ) -> RunStore:
        """Return a store continuing the run at ``path`` from its newest sound checkpoint.

        Sound: it loads (``weights_only``) and every table part it counts reads back. Newer
        checkpoints that are not sound are renamed ``*.damaged`` and described in
        ``store.recovered``. Then deletes temporaries and every table part written after that
        checkpoint (all parts if there is none); the checkpoint is ``store.checkpoint``. Raises
        :class:`RecordError` when checkpoints exist but none is sound.
        """
        path = Path(path)
        check_run_dir(path)
        store = cls(path, keep_checkpoints=keep_checkpoints)
        _remove_temporaries(path)
        store.checkpoint = store.load_latest_checkpoint(
            map_location=map_location, check=store._parts_sound
        )
        for reason in store.recovered:
            damaged = path / "checkpoints" / reason.partition(":")[0]
            if damaged.is_file():
                damaged.rename(damaged.with_name(damaged.name + ".damaged"))
        kept = store.checkpoint.table_parts if store.checkpoint else {}
        for name in sorted(set(_table_names(path)) | set(kept)):
            parts = _part_files(path / "tables" / name)
            keep = kept.get(name, 0)
            for seq, part in parts.items():
                if seq >= keep:
                    part.unlink()
            store._next_part[name] = keep
        return store

    def _parts_sound(self, checkpoint: Checkpoint) -> str | None:
        """Return why the parts ``checkpoint`` counts are not all readable, or None."""
        for name, keep in checkpoint.table_parts.items():
            parts = _part_files(self.path / "tables" / name)
            for seq in range(keep):
                if seq not in parts:
                    return f"table {name!r} lost part {seq}"
                try:
                    _read_part(parts[seq])
                except RecordError:
                    return f"table part {name}/{parts[seq].name} is damaged"
        return None

    @property
    def config(self) -> dict:
        """Return the run's config as stored in ``config.json``."""
        return read_config_file(self.path / "config.json")

    def set_status(self, status: str, step: int, error: str | None = None) -> None:
        """Write ``status.json`` atomically with the current time."""
        check_choice(status, STATUSES, "status")
        self._status = {"status": status, "step": int(step), "error": error}
        self._write_status()

    def heartbeat(self) -> None:
        """Rewrite the status with the current time, at most every ``HEARTBEAT_SECONDS``."""
        if self._status and time.monotonic() - self._status_written > HEARTBEAT_SECONDS:
            self._write_status()

    def _write_status(self) -> None:
        record = {
            **self._status,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            **process_identity(),
        }
        write_atomic(self.path / "status.json", json.dumps(record, indent=2).encode())
        self._status_written = time.monotonic()

    def append(self, table: str, rows: Rows) -> None:
        """Buffer rows for ``table``: a list of dicts, or a dict of columns (scalars broadcast).

        Every row of a table must have the same columns; the first append fixes them.
        """
        piece = _to_arrow(_check_table_name(table), rows)
        if piece.num_rows == 0:
            return
        schema = self._schema(table)
        if schema is not None:
            piece = _conform(table, piece, schema)
        self._schemas[table] = piece.schema
        self._pending.setdefault(table, []).append(piece)

    def flush(self) -> None:
        """Write each table's buffered rows as one new Parquet part."""
        for table, pieces in self._pending.items():
            if not pieces:
                continue
            # Earlier pieces may hold all-null columns that later ones gave a type.
            data = pa.concat_tables(pieces, promote_options="permissive").cast(self._schemas[table])
            directory = self.path / "tables" / table
            directory.mkdir(parents=True, exist_ok=True)
            seq = self._next_part.get(table, 0)
            write_atomic_with(directory / _part(seq), partial(pq.write_table, data))
            self._next_part[table] = seq + 1
            pieces.clear()

    def save_checkpoint(self, state: dict, step: int) -> Path:
        """Return the path of a new checkpoint of ``state`` at ``step``, flushing tables first.

        ``state`` must hold only tensors, dicts, lists, ints, floats, bools and strings, so
        that it loads with ``weights_only=True``. Keeps the newest ``keep_checkpoints``.
        """
        self.flush()
        directory = self.path / "checkpoints"
        directory.mkdir(exist_ok=True)
        record = {"step": int(step), "state": state, "table_parts": dict(self._next_part)}
        target = directory / f"step-{int(step)}.pt"
        write_atomic_with(target, lambda f: torch.save(record, f))
        for old in list(_checkpoint_files(directory).values())[: -self.keep_checkpoints]:
            old.unlink()
        return target

    def load_latest_checkpoint(
        self,
        map_location: str | torch.device = "cpu",
        check: Callable[[Checkpoint], str | None] | None = None,
    ) -> Checkpoint | None:
        """Return the newest checkpoint that loads (and passes ``check``), or None if none exist.

        Each newer one passed over is described in ``self.recovered`` ("step-20.pt: …").
        Raises :class:`RecordError` when checkpoints exist but none loads.
        """
        files = _checkpoint_files(self.path / "checkpoints")
        self.recovered = []
        for file in reversed(files.values()):
            try:
                checkpoint = load_checkpoint(file, map_location)
                problem = check(checkpoint) if check is not None else None
            except RecordError as error:
                problem = str(error).removeprefix(f"{file}: ")  # the file is named once
            if problem is None:
                return checkpoint
            self.recovered.append(f"{file.name}: {problem}")
        if files:
            raise RecordError(
                f"no checkpoint in {self.path / 'checkpoints'} can be used "
                f"({'; '.join(self.recovered)}); start the run again in another directory"
            )
        return None

    def close(self) -> None:
        """Flush buffered rows; the store may still be used afterwards."""
        self.flush()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _schema(self, table: str) -> pa.Schema | None:
        # After a resume the schema lives on disk; types only ever settle, so the last part
        # written has the final word.
        written = self._next_part.get(table, 0)
        if table not in self._schemas and written > 0:
            part = self.path / "tables" / table / _part(written - 1)
            self._schemas[table] = pq.read_schema(part).remove_metadata()
        return self._schemas.get(table)


def load_checkpoint(file: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Return the checkpoint saved in ``file``, loaded with ``weights_only=True``.

    Raises :class:`RecordError` ("FILE: why") when it is damaged or holds anything but
    tensors and plain data (torch refuses to unpickle it, and so does rnnprobe).
    """
    try:
        record = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise RecordError(
            f"{file}: holds objects other than tensors and plain data, which rnnprobe never "
            "unpickles"
        ) from None
    except Exception as error:  # torch.load fails in many ways on a damaged file
        reason = shorten(str(error)) or type(error).__name__
        raise RecordError(f"{file}: is damaged or not a checkpoint ({reason})") from None
    try:
        return Checkpoint(
            int(record["step"]), dict(record["state"]), dict(record["table_parts"]), file
        )
    except (KeyError, TypeError, ValueError):
        raise RecordError(f"{file}: is not an rnnprobe checkpoint") from None


def _part(seq: int) -> str:
    return f"part-{seq:06d}.parquet"


def _to_arrow(table: str, rows: Rows) -> pa.Table:
    """Return ``rows`` as an Arrow table with int64 ints, float32/64 floats and strings."""
    if not isinstance(rows, Mapping | pd.DataFrame):
        rows = [{k: _plain(v) for k, v in r.items()} for r in rows]
        if any(r.keys() != rows[0].keys() for r in rows):
            raise RnnprobeError(f"rows for table {table!r} do not all have the same columns")
    elif isinstance(rows, Mapping):
        rows = {k: _plain(v) for k, v in rows.items()}
        if all(np.ndim(v) == 0 for v in rows.values()):
            rows = {k: [v] for k, v in rows.items()}  # a dict of scalars is one row
    try:
        data = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    except (ValueError, TypeError, pa.ArrowException) as err:
        raise RnnprobeError(f"rows for table {table!r} are not a table: {err}") from None
    fields = [pa.field(f.name, _standard_type(f.type)) for f in data.schema]
    return data.cast(pa.schema(fields))


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _standard_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_integer(kind):
        return pa.int64()
    if pa.types.is_float16(kind):
        return pa.float32()
    if pa.types.is_large_string(kind):
        return pa.string()
    return kind


def _conform(table: str, data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``data`` in the column order and types of ``schema``, so all parts concatenate.

    Allowed changes: ints into a float column, one float width into the other, nulls into
    any column, and a so-far all-null column taking its first real type.
    """
    if sorted(data.column_names) != sorted(schema.names):
        raise RnnprobeError(
            f"table {table!r} has columns {schema.names} but got {data.column_names}"
        )
    data = data.select(schema.names)
    fields = []
    for old, new in zip(schema, data.schema, strict=True):
        if pa.types.is_null(old.type):
            fields.append(new)
        elif new.type == old.type or pa.types.is_null(new.type) or _widens(new.type, old.type):
            fields.append(old)
        else:
            raise RnnprobeError(
                f"table {table!r} column {old.name!r} holds {old.type} but got {new.type}"
            )
    return data.cast(pa.schema(fields))


def _widens(new: pa.DataType, old: pa.DataType) -> bool:
    return pa.types.is_floating(old) and (pa.types.is_integer(new) or pa.types.is_floating(new))


def _check_table_name(name: str) -> str:
    if not _TABLE_NAME.match(name):
        raise RnnprobeError(f"table name {name!r} must be lowercase letters, digits and _")
    return name


def _empty_table(name: str) -> pd.DataFrame:
    return pd.DataFrame(columns=list(STANDARD_TABLES.get(name, {})))


def _table_names(path: Path) -> list[str]:
    tables = path / "tables"
    if not tables.is_dir():
        return []
    return sorted(p.name for p in tables.iterdir() if p.is_dir() and _TABLE_NAME.match(p.name))


def _numbered_files(directory: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    if not directory.is_dir():
        return {}
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := pattern.match(p.name))}
    return dict(sorted(found.items()))


def _part_files(directory: Path) -> dict[int, Path]:
    return _numbered_files(directory, _PART_NAME)


def _checkpoint_files(directory: Path) -> dict[int, Path]:
    return _numbered_files(directory, _CHECKPOINT_NAME)


def _config_json(config: Mapping[str, Any]) -> bytes:
    if not isinstance(config, Mapping):
        raise RnnprobeError(f"a run config must be a dict, got {type(config).__name__}")
    try:
        return json.dumps(dict(config), indent=2, sort_keys=True).encode()
    except (TypeError, ValueError) as err:
        raise RnnprobeError(f"the run config cannot be written as JSON: {err}") from None


def _remove_temporaries(path: Path) -> None:
    # Only where the store writes, so foreign files in the directory are never touched.
    directories = [path, path / "checkpoints", path / "snapshots", *(path / "tables").glob("*")]
    for directory in directories:
        for tmp in directory.glob(f".*{TMP_MARK}*"):
            if tmp.is_file():
                tmp.unlink()


def _remove_store_files(path: Path) -> None:
    for name in ("config.json", "status.json", "tables", "checkpoints"):
        entry = path / name
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()
    _remove_temporaries(path)
