"""TensorBoard export: the event files, read back, hold the records; bad input is one line."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rnnprobe.cli.export import export
from rnnprobe.records.store import load_run
from rnnprobe.report.export import MISSING_TENSORBOARD, export_tensorboard
from rnnprobe.study.runner import write_index
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run

TINY = {
    "device": "cpu",
    "model.hidden_size": 16,
    "model.layers": 2,
    "task.seq_len": 6,  # copy: T = 26 steps
    "train.batch_size": 8,
    "train.steps": 12,
    "train.eval_every": 5,
    "train.eval_batches": 2,
    "flush_every": 5,
    "checkpoint_every": 100,
    "probes.hidden": "every:3",
    "probes.spectra": "every:4",
    "probes.lyapunov": "every:4",
    "probes.reach": "never",  # not exported
    "probes.products": "never",
}


def read_events(directory: Path):
    """Return an EventAccumulator holding every event under ``directory`` (no sampling)."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    ).EventAccumulator
    events = accumulator(str(directory), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return events.Reload()


def expected_scalars(run) -> dict[str, pd.DataFrame]:
    """Return tag -> (step, value) straight from the record tables: the export's twin."""
    steps, evals, task = run.table("steps"), run.table("evals"), run.table("task")
    baseline = float(task["baseline_loss"].iloc[0])
    metric = str(task["metric"].iloc[0])
    out = {
        "loss/train": steps[["step", "loss"]],
        "loss/validation": evals[["step", "loss"]],
        "loss_ratio/train": steps.assign(r=steps["loss"] / baseline)[["step", "r"]],
        "loss_ratio/validation": evals.assign(r=evals["loss"] / baseline)[["step", "r"]],
        f"metric/{metric}/train": steps[["step", "metric"]],
        f"metric/{metric}/validation": evals[["step", "metric"]],
        "gradient/norm_pre_clip": steps[["step", "grad_norm_pre_clip"]],
        "gradient/norm_post_clip": steps[["step", "grad_norm_post_clip"]],
        "optimizer/lr": steps[["step", "lr"]],
    }
    per_layer = {
        "weights/spectral_radius": (run.table("weights"), "spectral_radius"),
        "weights/sigma_max": (run.table("weights"), "sigma_max"),
        "hidden/saturation": (run.table("health"), "saturation"),  # tanh: no inactive fraction
        "hidden/participation_ratio": (run.table("health"), "participation_ratio"),
        "lyapunov/lambda_1": (run.table("lyapunov").query("index == 0"), "exponent"),
    }
    for prefix, (table, column) in per_layer.items():
        for layer, rows in table.groupby("layer"):
            out[f"{prefix}/layer_{layer}"] = rows[["step", column]]
    adjoints = run.table("adjoints")
    T = int(adjoints["t"].max()) + 1
    for layer, rows in adjoints.groupby("layer"):
        for t in (0, 6, 12, 19, T - 1):  # round(linspace(0, T - 1, 5)) for T = 26
            out[f"adjoint_norm/layer_{layer}/t_{t}"] = rows[rows["t"] == t][
                ["step", "adjoint_norm"]
            ]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "copy-tanh"
    assert train_run(build_config(TINY), path, progress=False).status == "done"
    return path


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tb")
    return export_tensorboard(run_dir, out), read_events(out / "copy-tanh")


def test_scalars_read_back_equal_the_records_at_their_steps(run_dir, exported):
    done, events = exported
    expected = expected_scalars(load_run(run_dir))
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    assert sorted(done.runs[0].scalar_tags) == sorted(expected)
    for tag, frame in expected.items():
        written = events.Scalars(tag)
        assert [e.step for e in written] == frame["step"].tolist(), tag
        values = np.array([e.value for e in written], dtype=np.float32)
        np.testing.assert_array_equal(values, frame.iloc[:, 1].to_numpy(np.float32), err_msg=tag)
    assert done.runs[0].points == sum(len(frame) for frame in expected.values())


def test_adjoint_heatmap_is_one_image_per_layer_at_the_last_step(exported):
    image = pytest.importorskip("PIL.Image")
    done, events = exported
    tags = ["adjoint_norm/layer_0", "adjoint_norm/layer_1"]
    assert sorted(events.Tags()["images"]) == tags == list(done.runs[0].image_tags)
    for tag in tags:
        (written,) = events.Images(tag)
        assert written.step == TINY["train.steps"]
        pixels = np.asarray(image.open(io.BytesIO(written.encoded_image_string)).convert("RGB"))
        assert pixels.shape == (written.height, written.width, 3) and pixels.std() > 0
    (config,) = events.Tensors("config/text_summary")
    assert b'"hidden_size": 16' in config.tensor_proto.string_val[0]


def test_exporting_again_replaces_the_event_files(run_dir, exported):
    before, events = exported
    (again,) = export_tensorboard(run_dir, before.directory).runs
    assert [p.name for p in before.directory.iterdir()] == ["copy-tanh"]
    assert len(list(again.directory.glob("events.out.tfevents.*"))) == 1
    reread = read_events(again.directory)
    assert reread.Tags() == events.Tags()
    for tag in events.Tags()["scalars"]:  # the same points; wall times are the export's
        assert [(e.step, e.value) for e in reread.Scalars(tag)] == [
            (e.step, e.value) for e in events.Scalars(tag)
        ]


def test_study_gives_one_tensorboard_run_per_run_named_by_its_axes(run_dir, tmp_path):
    pytest.importorskip("tensorboard")
    study = tmp_path / "study"
    for seed in (0, 1):
        settings = {"train.steps": 2, "model.layers": 1, "probes.lyapunov": "never"}
        config = build_config({**TINY, **settings, "seed": seed})
        train_run(config, study / "runs" / f"run{seed}", progress=False)
    index = {"name": "tiny", "axes": {"seed": [0, 1, 2]}, "runs": []}
    for seed in (0, 1, 2):  # run2 never started: no records to export
        status = "pending" if seed == 2 else "done"
        index["runs"].append({"id": f"run{seed}", "axes": {"seed": seed}, "status": status})
    write_index(study, index)
    result = CliRunner().invoke(export, [str(study), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    assert result.stderr == "rnnprobe: skipped run2: no records yet (pending)\n"
    assert result.stdout.startswith("wrote 2 runs (")
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["run0_seed=0", "run1_seed=1"]
    events = read_events(tmp_path / "tb" / "run1_seed=1")
    loss = load_run(study / "runs" / "run1").table("steps")["loss"].to_numpy(np.float32)
    assert [np.float32(e.value) for e in events.Scalars("loss/train")] == loss.tolist()


def test_missing_tensorboard_is_one_line_naming_the_extra(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    result = CliRunner().invoke(export, [str(run_dir), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2
    assert result.stderr == f"rnnprobe: error: {MISSING_TENSORBOARD}\n"
    assert MISSING_TENSORBOARD == (
        "rnnprobe export --tensorboard needs the tensorboard package: "
        "pip install 'rnnprobe[tensorboard]'"
    )
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize(
    ("source", "target", "says"),
    [
        ("missing", "tb", "missing: no such file or directory"),
        ("empty", "tb", "is neither a run (no config.json) nor a study"),
        ("file", "tb", "is neither a run (no config.json) nor a study"),
        ("run", "file", "is not a directory"),
        ("run", "file/tb", "cannot write TensorBoard events to"),
    ],
)
def test_bad_paths_exit_2_with_one_line(run_dir, tmp_path, monkeypatch, source, target, says):
    pytest.importorskip("tensorboard")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a directory\n")
    monkeypatch.chdir(tmp_path)
    path = str(run_dir) if source == "run" else source
    result = CliRunner().invoke(export, [path, "--tensorboard", target])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("rnnprobe: error: ")
    assert says in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "tb").exists()


def test_command_module_loads_no_heavy_library():
    """``rnnprobe --help`` imports cli_export: it must not pull torch, pandas or matplotlib."""
    probe = (
        "import sys\n"
        "from rnnprobe.cli.export import export\n"
        "try:\n"
        "    export(['--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "heavy = ('torch', 'pandas', 'pyarrow', 'matplotlib', 'tensorboard')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stderr.splitlines()[-1] == "[]", done.stderr
    assert "--tensorboard DIR" in done.stdout
