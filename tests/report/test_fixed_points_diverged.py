"""``rnnprobe fixed-points`` on a run that diverged: it says so, and which checkpoint it read.

The run explodes from its first step (ReLU, W_hh at gain 6, SGD at lr 50), every update is
skipped and it stops, diverged, at step 2 with its initial weights in the checkpoint of step 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rnnprobe import build_config, train_run
from rnnprobe.cli.fixed_points import fixed_points
from rnnprobe.report.fixed_points import divergence_note
from tests.support.runs import CHECKPOINTED

SETTINGS = {**CHECKPOINTED, "model.layers": 1, "task.seq_len": 40}
EXPLODING = {
    "model.nonlinearity": "relu",
    "model.init": "gaussian",
    "model.init_gain": 6.0,
    "train.optimizer": "sgd",
    "train.lr": 50.0,
    "train.momentum": 0.0,
    "train.max_nonfinite": 2,
}


@pytest.fixture(scope="module")
def diverged(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("diverged") / "run"
    result = train_run(build_config({**SETTINGS, **EXPLODING}), path, progress=False)
    assert (result.status, result.steps_done) == ("diverged", 2)
    return path


def find(run: Path, out: Path):
    return CliRunner().invoke(fixed_points, [str(run), "--starts", "8", "--out", str(out)])


def test_a_diverged_run_is_named_with_the_step_of_its_checkpoint(diverged, tmp_path):
    done = find(diverged, tmp_path / "out")
    assert done.exit_code == 0, done.output
    assert done.stderr == (
        "rnnprobe: warning: the run diverged at step 2 (first non-finite loss or gradient at "
        "step 1); these fixed points are of its checkpoint at step 2\n"
    )
    assert done.stdout.startswith("layer 0, input zero, checkpoint at step 2: ")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["diverged_at"], summary["first_nonfinite_step"]) == (2, 1)
    assert "Note: The run diverged at step 2" in (tmp_path / "out" / "README.md").read_text()


def test_a_run_that_did_not_diverge_gets_no_warning(tmp_path):
    run = tmp_path / "run"
    assert train_run(build_config({**SETTINGS, "train.steps": 4}), run, progress=False)
    done = find(run, tmp_path / "out")
    assert done.exit_code == 0, done.output
    assert done.stderr == ""
    assert done.stdout.startswith("layer 0, input zero, checkpoint at step 4: ")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["diverged_at"] is None


def test_weights_that_are_not_finite_are_refused_in_one_line(diverged, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(diverged, run)
    (file,) = (run / "checkpoints").glob("step-*.pt")
    record = torch.load(file, weights_only=True)
    weights = record["state"]["model"]
    (name,) = [n for n in weights if n.endswith("weight_hh_l0")]
    weights[name][0, 0] = float("nan")
    torch.save(record, file)
    done = find(run, tmp_path / "out")
    assert done.exit_code == 2, done.output
    assert done.stderr == (
        f"rnnprobe: error: {file}: the weights at step 2 are not finite ({name}); the run "
        "diverged at step 2: they have no fixed points to find\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("steps", "says"),
    [
        ((None, None, 40), None),
        ((30, 27, 20), "at step 30 (first non-finite loss or gradient at step 27); these fixed "
         "points are of its checkpoint at step 20, taken before it diverged"),
        ((30, None, 30), "at step 30; these fixed points are of its checkpoint at step 30"),
    ],
)  # fmt: skip
def test_the_note_says_whether_the_checkpoint_came_before_the_divergence(steps, says):
    keys = ("diverged_at", "first_nonfinite_step", "checkpoint_step")
    note = divergence_note(dict(zip(keys, steps, strict=True)))
    assert note == (None if says is None else f"the run diverged {says}")


def test_fixed_points_cut_short_leave_no_output_or_the_old_one_whole(
    diverged, tmp_path, monkeypatch
):
    from rnnprobe.report import fixed_points as report_fixed_points

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(report_fixed_points, "figure_png", interrupted)
    done = find(diverged, out)
    assert done.exit_code == 130, done.output
    assert not out.exists()  # the old code left the tables and summary.json behind
    monkeypatch.undo()
    assert find(diverged, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(report_fixed_points, "readme", interrupted)
    assert find(diverged, out).exit_code == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
