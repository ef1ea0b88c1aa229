"""Run record store: round trips, crash safety, checkpoints and resume truncation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnprobe.errors import RnnprobeError
from rnnprobe.records.index import STATUSES, is_run_dir
from rnnprobe.records.schema import STANDARD_TABLES
from rnnprobe.records.store import RunStore, load_run, read_table

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"model": {"hidden_size": 32, "nonlinearity": "tanh"}, "seed": 0, "lr": 0.1}


def step_rows(step: int) -> list[dict]:
    """Return a deterministic 'steps' row for ``step``, as the training loop would."""
    return [{"step": step, "loss": 1.0 / step, "clipped": step % 3 == 0, "lr": 0.1}]


def adjoint_rows(step: int) -> dict:
    """Return deterministic 'adjoints' columns for ``step``: one row per time index."""
    t = np.arange(4)
    return {"step": step, "layer": 0, "t": t, "adjoint_norm": np.exp(-0.1 * step * t)}


def part_names(run: Path, table: str) -> list[str]:
    return sorted(p.name for p in (run / "tables" / table).iterdir())


def test_config_status_and_tables_round_trip_with_dtypes(tmp_path):
    run = tmp_path / "run"
    store = RunStore.create(run, CONFIG)
    store.append(
        "steps",
        [
            {"step": 1, "loss": 2.5, "clipped": True, "note": "a"},
            {"step": 2, "loss": 1.5, "clipped": False, "note": "b"},
        ],
    )
    store.append(
        "hidden",
        {"step": 1, "t": np.arange(3, dtype=np.int32), "mean": np.ones(3, np.float32)},
    )
    store.flush()
    store.set_status("done", step=2)

    loaded = load_run(run)
    assert is_run_dir(run)
    assert loaded.config == CONFIG
    assert loaded.status["status"] == "done" and loaded.status["step"] == 2
    assert loaded.status["error"] is None and "updated" in loaded.status
    steps = loaded.tables["steps"]
    assert steps["step"].tolist() == [1, 2] and steps["note"].tolist() == ["a", "b"]
    assert steps["step"].dtype == np.int64 and steps["loss"].dtype == np.float64
    assert steps["clipped"].dtype == bool
    assert pd.api.types.is_string_dtype(steps["note"])
    hidden = loaded.tables["hidden"]
    assert hidden["t"].dtype == np.int64, "ints are widened to int64"
    assert hidden["mean"].dtype == np.float32, "float32 given stays float32"
    assert hidden["step"].tolist() == [1, 1, 1], "scalars broadcast over the columns"


def test_missing_table_reads_as_empty_frame_with_standard_columns(tmp_path):
    RunStore.create(tmp_path / "run", CONFIG)
    loaded = load_run(tmp_path / "run", tables=["lyapunov"])
    assert loaded.tables["lyapunov"].empty
    assert list(loaded.tables["lyapunov"].columns) == list(STANDARD_TABLES["lyapunov"])
    assert loaded.table("reach").empty and loaded.table("made_up").empty


def test_standard_tables_document_every_column():
    assert {"steps", "adjoints", "hidden", "spectra", "lyapunov", "reach", "events"} <= set(
        STANDARD_TABLES
    )
    for name, columns in STANDARD_TABLES.items():
        assert all(doc.strip() for doc in columns.values())
        assert "step" in columns or name in ("task", "mean_field")


@settings(max_examples=20, deadline=None)
@given(chunks=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=4), max_size=5))
def test_appends_across_flushes_concatenate_in_order(chunks):
    # chunks[i][j]: rows in the j-th append before the i-th flush.
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore.create(Path(tmp) / "run", CONFIG)
        step = 0
        for flush in chunks:
            for n_rows in flush:
                steps = np.arange(step, step + n_rows)
                store.append("steps", {"step": steps, "loss": steps * 0.5})
                step += n_rows
            store.flush()
        table = read_table(Path(tmp) / "run", "steps")
        assert table["step"].tolist() == list(range(step))
        assert table["loss"].tolist() == [s * 0.5 for s in range(step)]
        if chunks:
            assert len(part_names(Path(tmp) / "run", "steps")) == len(chunks)


def test_column_types_settle_so_parts_concatenate(tmp_path):
    store = RunStore.create(tmp_path / "run", CONFIG)
    store.append("events", {"step": 1, "kind": "start", "message": None})
    store.flush()
    store.append("events", {"step": 2, "kind": "nan_loss", "message": "loss is nan"})
    store.append("steps", {"step": 1, "loss": 0.5})
    store.flush()
    store.append("steps", {"step": 2, "loss": 1})  # an int into a float column is fine
    store.flush()
    events = read_table(tmp_path / "run", "events")
    assert events["message"].tolist()[1] == "loss is nan" and events["message"].isna()[0]
    assert read_table(tmp_path / "run", "steps")["loss"].dtype == np.float64

    with pytest.raises(RnnprobeError, match="column 'loss'"):
        store.append("steps", {"step": 3, "loss": "high"})
    with pytest.raises(RnnprobeError, match="has columns"):
        store.append("steps", {"step": 3, "metric": 0.5})
    with pytest.raises(RnnprobeError, match="same columns"):
        store.append("hidden", [{"step": 1}, {"step": 2, "mean": 0.0}])
    with pytest.raises(RnnprobeError, match="not a table"):
        store.append("hidden", {"step": [1, 2], "mean": [0.0]})
    with pytest.raises(RnnprobeError, match="table name"):
        store.append("../escape", {"step": 1})
    with pytest.raises(RnnprobeError, match="status must be one of running, done, "):
        store.set_status("finished", step=3)
    assert set(STATUSES) == {"running", "done", "failed", "diverged", "interrupted"}


def test_dropping_store_without_flush_keeps_flushed_rows_only(tmp_path):
    store = RunStore.create(tmp_path / "run", CONFIG)
    for step in (1, 2):
        store.append("steps", step_rows(step))
    store.flush()
    store.append("steps", step_rows(3))
    del store  # a crash: buffered rows are lost, nothing half-written appears
    assert read_table(tmp_path / "run", "steps")["step"].tolist() == [1, 2]


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from rnnprobe.records.store import RunStore

    store = RunStore.create(sys.argv[1], {"seed": 0})
    for i in range(1_000_000):
        steps = np.arange(i * 100, (i + 1) * 100)
        store.append("steps", {"step": steps, "loss": np.sqrt(steps)})
        store.flush()
    """
)


def test_sigkill_mid_loop_leaves_only_complete_parts(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run)], env=env)
    try:
        hang_guard = time.monotonic() + 600  # only a hung writer takes this long
        while not (run / "tables" / "steps").is_dir() or len(part_names(run, "steps")) < 8:
            assert writer.poll() is None, "writer exited early"
            assert time.monotonic() < hang_guard, "writer wrote fewer than 8 parts in 600 s"
            time.sleep(0.01)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()

    visible = [n for n in part_names(run, "steps") if n.startswith("part-")]
    for name in visible:
        assert pq.read_table(run / "tables" / "steps" / name).num_rows == 100
    steps = load_run(run).tables["steps"]["step"]
    assert steps.tolist() == list(range(100 * len(visible)))

    RunStore.open_for_resume(run)
    assert all(n.startswith("part-") for n in part_names(run, "steps")), "temporaries removed"


def test_readers_ignore_temporaries_and_resume_removes_them(tmp_path):
    run = tmp_path / "run"
    store = RunStore.create(run, CONFIG)
    store.append("steps", step_rows(1))
    store.save_checkpoint({"step": 1}, step=1)
    junk = [
        run / "tables" / "steps" / ".part-000001.parquet.tmp-abc",
        run / "checkpoints" / ".step-2.pt.tmp-abc",
        run / ".status.json.tmp-abc",
    ]
    for path in junk:
        path.write_bytes(b"half a file")
    assert read_table(run, "steps")["step"].tolist() == [1]
    assert store.load_latest_checkpoint().step == 1
    RunStore.open_for_resume(run)
    assert not any(path.exists() for path in junk)
    assert read_table(run, "steps")["step"].tolist() == [1]


def test_checkpoint_round_trips_with_weights_only_and_keeps_the_last_n(tmp_path):
    run = tmp_path / "run"
    store = RunStore.create(run, CONFIG, keep_checkpoints=2)
    assert store.load_latest_checkpoint() is None
    for step in (2, 4, 6):
        state = {
            "model": {"weight_hh_l0": torch.full((3, 3), float(step))},
            "rng": torch.get_rng_state(),
            "history": [1.0, 2.0],
            "name": "adam",
        }
        store.save_checkpoint(state, step=step)
    assert sorted(os.listdir(run / "checkpoints")) == ["step-4.pt", "step-6.pt"]
    loaded = store.load_latest_checkpoint()
    assert loaded.step == 6
    torch.testing.assert_close(loaded.state["model"]["weight_hh_l0"], torch.full((3, 3), 6.0))
    assert loaded.state["rng"].dtype == torch.uint8
    assert loaded.state["history"] == [1.0, 2.0] and loaded.state["name"] == "adam"
    raw = torch.load(run / "checkpoints" / "step-6.pt", weights_only=True)
    assert raw["step"] == 6


def test_checkpoint_interrupted_mid_write_leaves_the_previous_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    store = RunStore.create(run, CONFIG)
    store.save_checkpoint({"w": torch.ones(2)}, step=1)

    def save_half(obj, f):
        f.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half)
    with pytest.raises(KeyboardInterrupt):
        store.save_checkpoint({"w": torch.zeros(2)}, step=2)
    assert os.listdir(run / "checkpoints") == ["step-1.pt"]
    assert store.load_latest_checkpoint().step == 1


def train(store: RunStore, start: int, stop: int, checkpoint_at: tuple[int, ...]) -> None:
    """Run steps ``start..stop``: a fake training loop that flushes every other step."""
    for step in range(start, stop + 1):
        store.append("steps", step_rows(step))
        if step % 4 == 0:
            store.append("adjoints", adjoint_rows(step))
        if step == 9:
            store.append("events", {"step": step, "kind": "spike", "message": "loss spike"})
        if step in checkpoint_at:
            store.save_checkpoint({"step": step, "w": torch.full((2,), float(step))}, step)
        elif step % 2 == 0:
            store.flush()


def test_resume_truncates_parts_after_checkpoint_and_matches_uninterrupted_run(tmp_path):
    uninterrupted = RunStore.create(tmp_path / "whole", CONFIG)
    train(uninterrupted, 1, 10, checkpoint_at=(3, 6))
    uninterrupted.flush()

    crashed = RunStore.create(tmp_path / "crashed", CONFIG)
    train(crashed, 1, 10, checkpoint_at=(3, 6))
    crashed.append("steps", step_rows(11))  # never flushed: lost in the crash
    del crashed

    resumed = RunStore.open_for_resume(tmp_path / "crashed")
    checkpoint = resumed.checkpoint
    assert checkpoint.step == 6 and checkpoint.state["step"] == 6
    assert read_table(tmp_path / "crashed", "steps")["step"].tolist() == list(range(1, 7))
    assert read_table(tmp_path / "crashed", "adjoints")["step"].unique().tolist() == [4]
    assert read_table(tmp_path / "crashed", "events").empty

    train(resumed, checkpoint.step + 1, 10, checkpoint_at=(3, 6))
    resumed.flush()
    whole, again = load_run(tmp_path / "whole"), load_run(tmp_path / "crashed")
    assert set(whole.tables) == set(again.tables) == {"steps", "adjoints", "events"}
    for name in whole.tables:
        pd.testing.assert_frame_equal(whole.tables[name], again.tables[name])


def test_resume_without_checkpoint_starts_tables_over(tmp_path):
    store = RunStore.create(tmp_path / "run", CONFIG)
    train(store, 1, 4, checkpoint_at=())
    resumed = RunStore.open_for_resume(tmp_path / "run")
    assert resumed.checkpoint is None
    assert read_table(tmp_path / "run", "steps").empty
    train(resumed, 1, 2, checkpoint_at=())
    assert part_names(tmp_path / "run", "steps") == ["part-000000.parquet"]


def test_not_a_run_directory_is_a_one_line_error(tmp_path):
    (tmp_path / "plain").mkdir()
    for path, says in ((tmp_path / "plain", "is not an rnnprobe run directory"),
                       (tmp_path / "absent", "absent: no such file or directory")):  # fmt: skip
        assert not is_run_dir(path)
        with pytest.raises(RnnprobeError, match=says):
            load_run(path)
        with pytest.raises(RnnprobeError, match=says):
            RunStore.open_for_resume(path)


def test_create_refuses_non_empty_non_run_dir_unless_overwrite(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(RnnprobeError, match="not empty and not a run"):
        RunStore.create(busy, CONFIG)
    assert sorted(os.listdir(busy)) == ["notes.txt"], "nothing written when refused"

    store = RunStore.create(busy, CONFIG, overwrite=True)
    store.append("steps", step_rows(1))
    store.flush()
    with pytest.raises(RnnprobeError, match="holds a run"):
        RunStore.create(busy, {"seed": 1})
    RunStore.create(busy, {"seed": 1}, overwrite=True)
    assert load_run(busy).config == {"seed": 1}
    assert load_run(busy).tables == {}, "old run's tables are gone"
    assert (busy / "notes.txt").read_text() == "mine", "foreign files are left alone"


def test_create_rejects_a_file_path_and_unserialisable_config(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RnnprobeError, match="not a directory"):
        RunStore.create(tmp_path / "file", CONFIG)
    with pytest.raises(RnnprobeError, match="JSON"):
        RunStore.create(tmp_path / "run", {"tensor": torch.ones(1)})
    assert not is_run_dir(tmp_path / "run")
    RunStore.create(tmp_path / "empty", CONFIG)  # an empty directory is fine
    assert json.loads((tmp_path / "empty" / "config.json").read_text()) == CONFIG
