"""Explosion early warning, snapshots and replay: the warning comes before the blow-up, a replay
reproduces the recorded step bit for bit, and watching changes nothing about training."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from matplotlib.figure import Figure
from PIL import Image

from rnnprobe.cli.replay import replay
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.store import RunStore, load_run
from rnnprobe.report.plots_replay import plot_step_lyapunov
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run
from rnnprobe.training.warning import SNAPSHOT_KEYS, ExplosionWatch, WarnSpec

TINY = {
    "device": "cpu",
    "model.hidden_size": 8,
    "train.batch_size": 4,
    "train.eval_every": 50,
    "train.eval_batches": 1,
    "flush_every": 5,
    "checkpoint_every": 10,
    "probes.hidden": "every:3",
    "probes.spectra": "every:4",
    "probes.lyapunov": "every:4",
    "probes.reach": "every:5",
    "probes.products": "never",
}
# MSE with an SGD step far past the readout's stability limit: the loss and gradients grow
# tenfold or more per step until, in float32, they overflow at step 13 — a blow-up with a
# run-up to warn in (float64 only overflows after ~200 steps).
EXPLODING = {
    "task.name": "adding",
    "task.seq_len": 8,
    "train.steps": 20,
    "train.optimizer": "sgd",
    "train.lr": 2.0,
    "train.momentum": 0.0,
    "train.max_nonfinite": 2,
    "train.warn": "window=4,lyapunov=off,jacobian=off",
}


def exploding(**settings) -> dict:
    return {**TINY, **EXPLODING, **settings}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The exploding run in float32 (to its end, diverged) and float64 (past its warning),
    trained once for the module."""
    root = tmp_path_factory.mktemp("runs")
    config = build_config(exploding(dtype="float32"))
    assert train_run(config, root / "float32", progress=False).status == "diverged"
    config = build_config(exploding(dtype="float64", **{"train.steps": 8}))
    assert train_run(config, root / "float64", progress=False).status == "done"
    return {"float32": root / "float32", "float64": root / "float64"}


def first_step(events: pd.DataFrame, kind: str) -> int:
    return int(events.loc[events["kind"] == kind, "step"].min())


def comparable(run_dir: Path, drop_warnings: bool = False) -> dict[str, pd.DataFrame]:
    """Return the run's tables without wall-clock seconds and resume events."""
    tables = {}
    for name, df in load_run(run_dir).tables.items():
        if name == "events":
            unwanted = ["resumed", *(["warning"] if drop_warnings else [])]
            df = df[~df["kind"].isin(unwanted)]
        tables[name] = df.drop(columns=[c for c in ("seconds",) if c in df]).reset_index(drop=True)
    return tables


def assert_same_tables(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


@pytest.mark.parametrize("sign", ["loss", "grad"])
def test_warning_comes_before_the_first_non_finite_step_with_both_snapshots(tmp_path, sign):
    off = "grad" if sign == "loss" else "loss"
    warn = f"window=4,{off}=off,lyapunov=off,jacobian=off"
    result = train_run(build_config(exploding(**{"train.warn": warn})), tmp_path, progress=False)
    assert result.status == "diverged"
    run = load_run(tmp_path)
    events, steps = run.table("events"), run.table("steps")
    warning, nonfinite = first_step(events, "warning"), first_step(events, "nonfinite")
    assert warning < nonfinite
    assert (events["kind"] == "warning").sum() == 1  # the first warning only
    message = events.loc[events["kind"] == "warning", "message"].iloc[0]
    expected = {"loss": "loss spike: ", "grad": "gradient norm rising: median "}[sign]
    assert message.startswith(expected) and f"snapshots/{warning}-warning.pt" in message
    snapshots = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert snapshots == sorted([f"{warning}-warning.pt", f"{nonfinite}-nonfinite.pt"])
    for kind, step in (("warning", warning), ("nonfinite", nonfinite)):
        snapshot = torch.load(tmp_path / "snapshots" / f"{step}-{kind}.pt", weights_only=True)
        assert set(SNAPSHOT_KEYS) <= snapshot.keys() and snapshot["step"] == step
        row = steps[steps["step"] == step].iloc[0]
        assert snapshot["recorded"]["grad_norm_pre_clip"] == pytest.approx(
            row["grad_norm_pre_clip"], nan_ok=True
        )
    weights = torch.load(tmp_path / "snapshots" / f"{nonfinite}-nonfinite.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights["model"].values())  # before the update


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_replay_reproduces_the_recorded_step_bit_for_bit(runs, tmp_path, dtype):
    snapshot = next((runs[dtype] / "snapshots").glob("*-warning.pt"))
    step = int(snapshot.stem.split("-")[0])
    done = CliRunner().invoke(replay, [str(snapshot), "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"step {step} (warning): reproduced bit for bit (loss ")
    readme = (tmp_path / "README.md").read_text()
    assert "Reproduced bit for bit" in readme and "Where the gradient came from" in readme
    row = load_run(runs[dtype]).table("steps").set_index("step").loc[step]
    for what, column in (("loss", "loss"), ("pre-clip gradient norm", "grad_norm_pre_clip")):
        value = float(row[column])
        assert f"| {what} vs the run's steps table | {value!r} | {value!r} | yes |" in readme
    assert "| gradients: replay 1 vs replay 2 | 6 tensors | identical | yes |" in readme
    assert (tmp_path / "index.html").is_file()
    figures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert figures == ["dynamics.png", "gradient.png", "run.png", "units.png"]
    for name in figures:
        assert f"]({name})" in readme
        with Image.open(tmp_path / name) as image:
            image.load()
            assert image.size[0] > 400


def test_watching_does_not_change_training(runs, tmp_path):
    result = train_run(
        build_config(exploding(dtype="float32", **{"train.warn": "none"})), tmp_path, progress=False
    )
    assert result.status == "diverged" and not (tmp_path / "snapshots").exists()
    watched, unwatched = comparable(runs["float32"], drop_warnings=True), comparable(tmp_path)
    assert_same_tables(watched, unwatched)
    assert watched["steps"]["skipped"].any()  # the blow-up happened in both


def test_a_resumed_run_keeps_its_warning_and_snapshots(runs, tmp_path):
    resumed = tmp_path / "run"
    shutil.copytree(runs["float32"], resumed)
    checkpoints = sorted((resumed / "checkpoints").glob("step-*.pt"), key=lambda p: int(p.stem[5:]))
    assert checkpoints[0].name == "step-10.pt" and len(checkpoints) == 2
    checkpoints[-1].unlink()  # as if killed after step 10: past the warning, before the NaN
    nonfinite = next((resumed / "snapshots").glob("*-nonfinite.pt"))
    before = torch.load(nonfinite, weights_only=True)
    nonfinite.unlink()
    RunStore(resumed).set_status("interrupted", 10)
    config = build_config(exploding(dtype="float32"))
    assert train_run(config, resumed, resume=True, progress=False).status == "diverged"
    assert_same_tables(comparable(runs["float32"]), comparable(resumed))
    after = torch.load(nonfinite, weights_only=True)
    for name, tensor in before["model"].items():
        assert torch.equal(tensor, after["model"][name])


def test_the_watch_warns_at_the_same_step_whenever_a_flush_reads_the_probes():
    spec = WarnSpec(lyapunov=0.1, grad=None, loss=None)
    rows = {"step": [7], "layer": [0], "index": [0], "exponent": [0.5]}
    early, late = ExplosionWatch(spec, (5, 10)), ExplosionWatch(spec, (5, 10))
    early.observe_probes("lyapunov", rows)  # an interrupt's flush right after step 7
    for step in range(8, 12):
        if step == 10:
            late.observe_probes("lyapunov", rows)  # the scheduled flush after step 10
        restored = ExplosionWatch(spec, (5, 10))
        restored.load_state(early.state())  # a checkpoint in between changes nothing
        early = restored
        said = early.observe(step, True, 1.0, 1.0), late.observe(step, True, 1.0, 1.0)
        assert said[0] == said[1]
        assert (said[0] is not None) == (step == 11)
    assert said[0].startswith("λ₁ 0.5 nats per time step > 0.1 (layer 0, Lyapunov probe at step 7")


def test_warn_settings_parse_and_bad_ones_are_one_line_errors():
    assert WarnSpec.parse("on") == WarnSpec()
    assert WarnSpec.parse("none") is None
    assert WarnSpec.parse("grad=5, window=10,lyapunov=off") == WarnSpec(
        window=10, grad=5.0, lyapunov=None
    )
    for bad in ("grad=1", "window=1", "loss=x", "jacobian=0", "bogus=3", "grad", "lyapunov=inf"):
        with pytest.raises(RnnprobeError) as error:
            build_config({"train.warn": bad})
        assert str(error.value).startswith("train.warn = ") and "\n" not in str(error.value)


def test_a_non_finite_step_replays_and_a_changed_record_is_reported_with_exit_1(runs, tmp_path):
    snapshot = next((runs["float32"] / "snapshots").glob("*-nonfinite.pt"))
    record = torch.load(snapshot, weights_only=True)
    norm = record["recorded"]["grad_norm_pre_clip"]
    assert not math.isfinite(norm)
    record["recorded"]["loss"] = 1.0  # outside its run, a snapshot checks its own numbers
    torch.save(record, tmp_path / "13-nonfinite.pt")
    failed = CliRunner().invoke(replay, [str(tmp_path / "13-nonfinite.pt")])
    assert failed.exit_code == 1
    assert failed.stderr.count("\n") == 1
    assert "was not reproduced (loss vs the value the snapshot recorded: 1.0 vs" in failed.stderr
    readme = (tmp_path / "13-nonfinite-replay" / "README.md").read_text()
    assert "NOT reproduced" in readme and "the first non-finite step (loss" in readme
    assert "gradients: replay 1 vs replay 2 | 6 tensors | identical | yes |" in readme
    shown = repr(norm)  # a NaN or inf norm matches itself: the step is reproduced but the loss
    assert (
        f"| pre-clip gradient norm vs the value the snapshot recorded | {shown} | {shown} | yes"
        in readme
    )


def damaged(kind: str, snapshot: Path, target: Path) -> Path:
    """Write a damaged or foreign snapshot of ``kind`` at ``target``; return it."""
    data = snapshot.read_bytes()
    if kind == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif kind == "noise":
        target.write_bytes(bytes(range(256)) * 8)
    elif kind == "text":
        target.write_text("garbage")
    elif kind == "incomplete":
        record = torch.load(snapshot, weights_only=True)
        del record["batch"]
        torch.save(record, target)
    elif kind == "pickled object":
        record = torch.load(snapshot, weights_only=True)
        torch.save({**record, "reason": Path("x")}, target)
    elif kind == "tensor":
        torch.save(torch.zeros(3), target)
    elif kind == "checkpoint":
        shutil.copy(next((snapshot.parents[1] / "checkpoints").glob("*.pt")), target)
    return target


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("truncated", 1),
        ("noise", 2),  # no torch.save archive: not a snapshot (a truncated one is damaged)
        ("text", 2),
        ("incomplete", 1),
        ("pickled object", 1),
        ("tensor", 2),
        ("checkpoint", 2),
        ("missing", 2),
    ],
)
def test_a_damaged_or_foreign_snapshot_is_one_line_and_an_exit_status(runs, tmp_path, kind, code):
    snapshot = next((runs["float32"] / "snapshots").glob("*-warning.pt"))
    path = damaged(kind, snapshot, tmp_path / "5-warning.pt")
    done = CliRunner().invoke(replay, [str(path)])
    assert done.exit_code == code, done.output
    assert done.stderr.startswith("rnnprobe: error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.output and str(path) in done.stderr


def test_the_replay_lyapunov_panel_names_qr_order_and_counts_minus_infinity():
    rows = pd.DataFrame({"step": 7, "layer": 0, "index": range(4),
                         "exponent": [-0.3, 0.2, -math.inf, -math.inf]})  # fmt: skip
    ax = plot_step_lyapunov(rows, ax=Figure().subplots())
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "QR index" in ax.get_xlabel() and "step 7: 2 exponents\n= −∞" in texts
    # index 1 above index 0: not λ₁ (index 0) − 10 but the largest − 10 bounds the axis
    deep = rows.assign(exponent=[-0.3, 0.2, -20.0, -25.0])
    ax = plot_step_lyapunov(deep, ax=Figure().subplots())
    assert ax.get_title().endswith("(down to 10 below the largest)")
    assert ax.get_ylim()[0] == pytest.approx(0.2 - 10)
    dead = rows.assign(exponent=[-math.inf] * 4)
    ax = plot_step_lyapunov(dead, ax=Figure().subplots())
    assert ax.get_ylabel() == "exponent at index i (nats per time step)"
    assert "every exponent = −∞" in " ".join(t.get_text() for t in ax.texts)


def test_a_gross_loss_jump_warns_before_the_window_fills():
    from rnnprobe.training.warning import ExplosionWatch

    spec = WarnSpec.parse("window=20,lyapunov=off,jacobian=off")
    watch = ExplosionWatch(spec, (50,))
    assert watch.observe(1, True, 2.52, 1.0) is None
    sign = watch.observe(2, True, 1.33e7, 1.0)  # --lr 1e6: the loss at step 2
    assert sign is not None and "loss spike: 1.33e+07" in sign and "in its first 20 steps" in sign
    calm = ExplosionWatch(spec, (50,))  # early noise, 5× over the mean: under 16×
    assert all(calm.observe(s, True, v, 1.0) is None for s, v in enumerate([2.0, 10.0, 3.0], 1))


def test_a_replay_cut_short_leaves_no_output_directory(runs, tmp_path, monkeypatch):
    from rnnprobe.report import plots_replay

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    snapshot = next((runs["float64"] / "snapshots").glob("*-warning.pt"))
    out = tmp_path / "replay"
    monkeypatch.setattr(plots_replay, "figure_png", interrupted)
    done = CliRunner().invoke(replay, [str(snapshot), "--out", str(out)])
    assert done.exit_code == 130, done.output
    assert not out.exists()  # the old code left an empty folder, or some of the figures
