"""Studies: spec parsing, grid expansion with stable ids, resume after interrupts, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import rnnprobe.training.loop
from rnnprobe.analysis.diagnosis import analyse_study
from rnnprobe.cli.study import study
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.store import read_table
from rnnprobe.study.executors import InProcessExecutor
from rnnprobe.study.runner import read_index, run_study
from rnnprobe.study.spec import expand, load_spec, override, spec_from_dict
from rnnprobe.training.config import build_config
from tests.support.processes import finish, go, start_pausing, wait_for_pause
from tests.support.runs import TINY_SETTINGS, tiny_spec

STUDIES = Path(__file__).resolve().parents[2] / "studies"
WALL_CLOCK = ["seconds"]
TINY_FLAGS = {  # a flag given twice is an axis, so tests never repeat these
    "--device": "cpu",
    "--hidden-size": "8",
    "--embedding-dim": "4",
    "--batch-size": "4",
    "--eval-batches": "1",
    "--reach": "every:5",
    "--spectra": "never",
    "--lyapunov": "every:5",
    "--hidden": "every:5",
}
TINY = [part for flag in TINY_FLAGS.items() for part in flag]


def invoke(*args: str):
    return CliRunner().invoke(study, [*args, "--jobs", "1", "--no-report"])


def comparable(out: Path) -> pd.DataFrame:
    return analyse_study(out).table.drop(columns=WALL_CLOCK)


def mtimes(run_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


# -- specs and grids ---------------------------------------------------------------------


def test_grid_is_the_product_of_axes_in_order():
    spec = tiny_spec(**{"task.seq_len": (3, 5, 7), "model.nonlinearity": ("tanh", "relu")})
    points = expand(spec)
    assert [tuple(p.values.values()) for p in points] == [
        (3, "tanh"),
        (3, "relu"),
        (5, "tanh"),
        (5, "relu"),
        (7, "tanh"),
        (7, "relu"),
    ]
    assert points[3].config.task.seq_len == 5 and points[3].config.model.nonlinearity == "relu"
    assert all(p.config.model.hidden_size == 8 for p in points)
    assert len({p.run_id for p in points}) == 6
    assert [p.run_id for p in expand(spec)] == [p.run_id for p in points]


@given(
    hidden=st.integers(1, 512),
    lr=st.floats(1e-6, 1.0),
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    seed=st.integers(0, 2**31),
)
def test_run_id_depends_on_settings_only(hidden, lr, nonlinearity, seed):
    settings = {
        "model.hidden_size": hidden,
        "train.lr": lr,
        "model.nonlinearity": nonlinearity,
        "seed": seed,
    }
    same = build_config(settings).run_id()
    assert build_config(dict(reversed(settings.items()))).run_id() == same
    assert build_config({**settings, "device": "cpu"}).run_id() == same  # device: no effect
    assert build_config({**settings, "seed": seed + 1}).run_id() != same
    assert build_config({**settings, "model.hidden_size": hidden + 1}).run_id() != same


def test_spec_file_gives_fixed_settings_axes_and_seeds(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        '# Question: a test\nname = "s"\nseeds = 2\ndtype = "float64"\n'
        '[model]\nhidden_size = 8\n[sweep]\n"task.seq_len" = [3, 5]\n'
        "train.lr = [0.1, 1]\n"  # unquoted dotted keys work too; ints coerced to float
    )
    spec = load_spec(path)
    assert spec.fixed == {"dtype": "float64", "model.hidden_size": 8}
    assert spec.axes == {"task.seq_len": (3, 5), "train.lr": (0.1, 1.0), "seed": (0, 1)}
    assert len(expand(spec)) == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[model]\nhiden_size = 8",
            "unknown setting 'model.hiden_size'; did you mean model.hidden_size?",
        ),
        ("stepz = 8", "unknown key 'stepz'; valid: name, question, description, seeds, [sweep]"),
        ("[optim]\nlr = 1", "unknown key 'optim'"),
        ('[sweep]\n"model.widht" = [1, 2]', "unknown setting 'model.widht'"),
        ("[train]\nsteps = 'many'", "train.steps must be int, got str 'many'"),
        ("[sweep]\n\"train.steps\" = [10, 'x']", "train.steps must be int"),
        ('[sweep]\n"train.steps" = []', "sweep axis train.steps is empty"),
        ('[sweep]\n"train.steps" = 10', "sweep train.steps must be a list"),
        ('[sweep]\n"train.steps" = [10, 10]', "repeats 10"),
        ('[train]\nsteps = 5\n[sweep]\n"train.steps" = [1, 2]', "both fixed and swept"),
        ("seeds = 0", "seeds must be at least 1, got 0"),
        ("name = 3", "name must be a string"),
        ("name = '../x'", "must be a plain file name"),
        ("[model\n", "is not valid TOML"),
    ],
)
def test_bad_spec_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RnnprobeError) as error:
        expand(load_spec(path))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_invalid_value_names_the_grid_point():
    spec = tiny_spec(**{"model.nonlinearity": ("tanh", "relu"), "train.lr": (0.1, -1.0)})
    with pytest.raises(
        RnnprobeError, match=r"^model.nonlinearity='tanh', train.lr=-1.0: --lr must be positive"
    ):
        expand(spec)


def test_command_line_overrides_the_spec():
    spec = spec_from_dict(
        {"name": "x", "train": {"steps": 100}, "sweep": {"task.seq_len": [3, 5]}, "seeds": 3}
    )
    spec = override(
        spec,
        {"task.seq_len": (9,), "model.nonlinearity": ("tanh", "relu")},
        [("train.steps", 7)],
        seeds=None,
    )
    assert spec.fixed == {"train.steps": 7, "task.seq_len": 9}  # a flag given once fixes
    assert spec.axes == {"seed": (0, 1, 2), "model.nonlinearity": ("tanh", "relu")}
    assert override(spec, {"seed": (4,)}).axes == {"model.nonlinearity": ("tanh", "relu")}
    with pytest.raises(RnnprobeError, match="both as a flag and with --set"):
        override(spec, {"train.steps": (1,)}, [("train.steps", 2)])


def test_same_run_twice_is_refused():
    with pytest.raises(RnnprobeError, match="give the same run"):
        expand(tiny_spec(device=("cpu", "auto")))


def test_every_canonical_spec_loads_and_expands():
    paths = sorted(STUDIES.glob("*.toml"))
    names = {p.stem for p in paths}
    assert {
        "seq_len",
        "init_gain",
        "clipping",
        "truncation",
        "irnn_adding",
        "lm_text",
        "smoke",
    } <= names
    for path in paths:
        spec = load_spec(path)
        assert spec.question.endswith("?"), f"{path.name} states no question"
        assert spec.name == path.stem and spec.description
        points = expand(spec)
        assert 1 < len(points) <= 40
        assert all(p.config.train.steps <= 2000 for p in points)
    assert len(expand(load_spec(STUDIES / "smoke.toml"))) <= 4


# -- running, resume, failures -----------------------------------------------------------


def test_study_runs_every_point_and_rerun_skips_finished_runs(tmp_path):
    out = tmp_path / "study"
    result = run_study(tiny_spec(), out, InProcessExecutor(progress=False), echo=lambda s: None)
    assert not result.interrupted and result.statuses == {"done": 2}
    index = read_index(out)
    assert index["name"] == "tiny" and index["axes"] == {"task.seq_len": [3, 5]}
    assert [r["axes"] for r in index["runs"]] == [{"task.seq_len": 3}, {"task.seq_len": 5}]
    assert all(r["status"] == "done" and r["error"] is None for r in index["runs"])
    before = {r["id"]: mtimes(out / "runs" / r["id"]) for r in index["runs"]}
    lines = []
    run_study(tiny_spec(), out, InProcessExecutor(progress=False), echo=lines.append)
    assert "2 finished, 0 to run" in lines[0]
    assert {r["id"]: mtimes(out / "runs" / r["id"]) for r in index["runs"]} == before


def test_run_without_status_resumes_and_summary_matches(tmp_path):
    spec, quiet = tiny_spec(), {"echo": lambda s: None}
    run_study(spec, tmp_path / "whole", InProcessExecutor(progress=False), **quiet)
    out = tmp_path / "cut"
    run_study(spec, out, InProcessExecutor(progress=False), **quiet)
    first, second = (r["id"] for r in read_index(out)["runs"])
    before = mtimes(out / "runs" / first)
    (out / "runs" / second / "status.json").unlink()  # as if killed before the status write
    assert run_study(spec, out, InProcessExecutor(progress=False), **quiet).statuses == {"done": 2}
    assert mtimes(out / "runs" / first) == before
    pd.testing.assert_frame_equal(comparable(out), comparable(tmp_path / "whole"))


def test_failing_run_does_not_stop_the_others_and_is_retried(tmp_path, monkeypatch):
    real = rnnprobe.training.loop.train_run

    def flaky(config, run_dir, **kwargs):
        if config.task.seq_len == 3:
            real(config, run_dir, **{**kwargs, "resume": False})  # leaves a finished run
            raise FloatingPointError("boom\nsecond line")
        return real(config, run_dir, **kwargs)

    monkeypatch.setattr(rnnprobe.training.loop, "train_run", flaky)
    spec = tiny_spec(**{"task.seq_len": (3, 5, 7)})
    lines = []
    result = run_study(spec, tmp_path, InProcessExecutor(progress=False), echo=lines.append)
    assert result.statuses == {"failed": 1, "done": 2} and result.failed == 1
    failed = read_index(tmp_path)["runs"][0]
    assert failed["status"] == "failed"
    assert failed["error"] == "FloatingPointError: boom second line"
    assert any("failed" in line and "boom" in line for line in lines)
    monkeypatch.setattr(rnnprobe.training.loop, "train_run", real)
    result = run_study(spec, tmp_path, InProcessExecutor(progress=False), echo=lines.append)
    assert result.statuses == {"done": 3}  # retried from scratch
    events = read_table(tmp_path / "runs" / failed["id"], "events")
    assert "resumed" not in set(events["kind"])  # a fresh start, not a resume


def test_user_error_inside_a_run_is_recorded_as_failed(tmp_path, monkeypatch):
    def refuse(config, run_dir, **kwargs):
        raise RnnprobeError("corpus not found")

    monkeypatch.setattr(rnnprobe.training.loop, "train_run", refuse)
    result = run_study(tiny_spec(), tmp_path, InProcessExecutor(progress=False), echo=print)
    assert result.statuses == {"failed": 2}
    assert {r["error"] for r in read_index(tmp_path)["runs"]} == {"corpus not found"}


def test_out_dir_holding_a_different_study_is_refused_unless_force_new(tmp_path):
    quiet = {"echo": lambda s: None}
    run_study(tiny_spec(), tmp_path, InProcessExecutor(progress=False), **quiet)
    shared = read_index(tmp_path)["runs"][0]["id"]
    before = mtimes(tmp_path / "runs" / shared)
    bigger = tiny_spec(**{"task.seq_len": (3, 4)})
    with pytest.raises(RnnprobeError, match=r"holds a different study 'tiny'.*--force-new"):
        run_study(bigger, tmp_path, InProcessExecutor(progress=False), **quiet)
    result = run_study(bigger, tmp_path, InProcessExecutor(progress=False), force_new=True, **quiet)
    assert result.statuses == {"done": 2}
    assert mtimes(tmp_path / "runs" / shared) == before  # the run both share is reused
    assert read_index(tmp_path)["axes"] == {"task.seq_len": [3, 4]}


# -- the command line --------------------------------------------------------------------


def test_cli_sweeps_repeated_flags_and_writes_summary(tmp_path):
    out = tmp_path / "s"
    sweep = ["--seq-len", "3", "--seq-len", "5", "--nonlinearity", "tanh", "--nonlinearity", "relu"]
    result = invoke(*TINY, "--steps", "5", "--eval-every", "5", *sweep, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "[4/4]" in result.output and "all finished" in result.output
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and set(summary["status"]) == {"done"}
    assert {"task.seq_len", "model.nonlinearity", "decay_per_step_end", "loss_ratio"} <= set(
        summary
    )
    assert len(pd.read_parquet(out / "summary.parquet")) == 4
    assert "model.nonlinearity" in result.output and "half_life_end" in result.output


def test_cli_runs_a_spec_file_with_set_and_default_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(
        str(STUDIES / "smoke.toml"), "--set", "train.steps=4", "--set", "task.seq_len=3"
    )
    assert result.exit_code == 0, result.output
    index = read_index(tmp_path / "runs" / "smoke")
    assert index["fixed"]["train.steps"] == 4 and index["axes"] == {
        "model.nonlinearity": ["tanh", "relu"]
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.steps=__import__('os')"], "is not a literal of type int"),
        (["--set", "model.widht=3"], "unknown setting 'model.widht'"),
        (["--set", "train.steps"], "--set needs key=value"),
        (["--seeds", "0"], "seeds must be at least 1, got 0"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--address", "h:1"], "--address needs --executor ray"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["missing.toml"], "no study spec at missing.toml"),
        (["--executor", "ray", "--address", "127.0.0.1:1"], "cannot reach Ray at 127.0.0.1:1"),
        # data and devices no rerun can fix: refused before any run starts, not failed runs
        (["--task", "lm", "--corpus", "missing.txt"], "missing.txt"),
        (["--task", "lm", "--max-chars", "2000", "--seq-len", "8", "--seq-len", "5000"],
         "task.seq_len=5000: seq_len 5000 is too long for corpus stdlib"),
        (["--device", "cuda:99"], "cuda"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(study, args)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


# -- interrupts, in a real process -------------------------------------------------------


STUDY_RUNS = {"--steps": "20", "--flush-every": "5", "--checkpoint-every": "10",
              "--eval-every": "20"}  # fmt: skip
STUDY_ARGS = [*TINY, *(p for f in STUDY_RUNS.items() for p in f), "--seq-len", "3",
              "--seq-len", "4", "--seq-len", "5"]  # fmt: skip


def start_study(out: Path, run: int, step: int, gated: bool = False) -> subprocess.Popen:
    """Start the 3-run study in a fresh process that pauses in its ``run``-th run at ``step``.

    It pauses after that step's checkpoint and waits for the test (see tests/support/processes.py).
    """
    args = [*STUDY_ARGS, "--jobs", "1", "--no-report", "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return start_pausing("rnnprobe.cli.study", run, step, args, gated, env=env)


def test_sigint_then_sigkill_then_rerun_gives_the_uninterrupted_summary(tmp_path, started):
    out = tmp_path / "cut"
    started.append(process := start_study(out, 2, 10))  # in run 2, after its checkpoint 10
    # the second process does its imports meanwhile; it resumes run 2 and stops in run 3
    started.append(second := start_study(out, 2, 10, gated=True))
    whole = invoke(*STUDY_ARGS, "--out", str(tmp_path / "whole"))  # here, meanwhile
    assert whole.exit_code == 0, whole.output
    wait_for_pause(process)
    runs = read_index(out)["runs"]
    assert [r["status"] for r in runs] == ["done", "running", "pending"]
    first = runs[0]["id"]
    before = mtimes(out / "runs" / first)
    process.send_signal(signal.SIGINT)
    code, _, stderr = finish(process)
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("rnnprobe: study interrupted with")
    assert "Traceback" not in stderr
    statuses = [r["status"] for r in read_index(out)["runs"]]
    assert statuses[:2] == ["done", "interrupted"] and "running" not in statuses

    go(second)  # resumes run 2 from its checkpoint; killed in run 3, after its checkpoint 10
    wait_for_pause(second)
    assert [r["status"] for r in read_index(out)["runs"]] == ["done", "done", "running"]
    second.send_signal(signal.SIGKILL)
    assert finish(second)[0] == -signal.SIGKILL

    rerun = invoke(*STUDY_ARGS, "--out", str(out))  # in this process: the same command
    assert rerun.exit_code == 0, rerun.output
    assert "2 finished, 1 to run" in rerun.stdout.splitlines()[0]
    assert mtimes(out / "runs" / first) == before  # never recomputed nor rewritten
    pd.testing.assert_frame_equal(comparable(out), comparable(tmp_path / "whole"))
    assert all(r["status"] == "done" for r in read_index(out)["runs"])


def test_an_interrupted_last_run_is_not_called_all_finished(tmp_path):
    from rnnprobe.study.executors import RunOutcome
    from rnnprobe.study.runner import _Progress

    lines: list[str] = []
    progress = _Progress(2, 1, lines.append, tmp_path)
    progress.finished(RunOutcome("r2", "interrupted", 7, "", 1.0), {"seed": 1})
    assert lines[-1].endswith("; study interrupted") and "all finished" not in lines[-1]


def test_ray_missing_is_refused_before_the_study_writes(tmp_path, monkeypatch):
    import importlib

    from rnnprobe.study import executors

    real = importlib.import_module

    def no_ray(name, *args):
        if name == "ray":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_ray)
    with pytest.raises(RnnprobeError, match="--executor ray needs Ray"):
        executors.RayExecutor()


def test_a_study_without_axes_prints_its_progress_without_a_stray_space(tmp_path):
    from rnnprobe.study.spec import StudySpec

    spec = StudySpec("one", {**TINY_SETTINGS, "train.steps": 2}, {})
    lines: list[str] = []
    run_study(spec, tmp_path, InProcessExecutor(progress=False), echo=lines.append)
    (line,) = [x for x in lines if x.startswith("[1/1] ")]
    run_id = line.split()[1].rstrip(":")
    assert line.startswith(f"[1/1] {run_id}: done at step 2 in "), line  # HEAD: 'id : done'
