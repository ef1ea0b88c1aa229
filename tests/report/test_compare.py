"""Comparison reports of several runs: ``rnnprobe report RUN RUN …``.

Two tiny trained runs (tanh and relu) are compared once for the module; synthetic runs
(``write_run``) cover what training does not give cheaply: runs missing a kind of record,
markup in a setting.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.legend import Legend

from rnnprobe.analysis.runs import SUMMARY_TABLES, summarise_run
from rnnprobe.cli.report import report
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.store import load_run
from rnnprobe.report import plots_study
from rnnprobe.report.compare import build_comparison, differing_settings, run_ids, run_label
from rnnprobe.training.loop import train_run
from tests.support.records import SCRIPT, check_report, write_run, write_study
from tests.support.runs import tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[Path], Path, set[Path]]:
    """Two 30-step runs, tanh and relu, compared by the CLI from their parent directory with
    the default output; returns (that directory, the runs, the output, the files created)."""
    root = tmp_path_factory.mktemp("compare")
    runs = []
    for nonlinearity in ("tanh", "relu"):
        config = tiny(train__steps=30, model__nonlinearity=nonlinearity, probes__reach="every:10")
        runs.append(root / "runs" / config.run_id())
        assert train_run(config, runs[-1], progress=False).status == "done"
    before = set(root.rglob("*"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        relative = [str(p.relative_to(root)) for p in runs]
        result = CliRunner().invoke(report, relative)
    assert result.exit_code == 0, result.output
    out = root / f"compare-{runs[0].name}-2runs"
    return root, runs, out, set(root.rglob("*")) - before


def test_comparison_report_has_valid_figures_and_links(trained):
    _, _, out, _ = trained
    check_report(out)
    assert {p.name for p in out.glob("*.png")} == {"compare.png"}
    text = (out / "README.md").read_text()
    assert "Not drawn" not in text  # both runs have every kind of record


def test_default_output_is_under_the_current_directory_and_nothing_else_is_written(trained):
    root, _, out, created = trained
    assert out.is_dir() and out.parent == root
    assert all(p == out or out in p.parents for p in created)


def test_each_run_is_labelled_by_its_id_and_the_setting_that_differs(trained):
    _, runs, out, _ = trained
    for text in ((out / "README.md").read_text(), (out / "index.html").read_text()):
        for run, nonlinearity in zip(runs, ("tanh", "relu"), strict=True):
            assert f"{run.name}: nonlinearity={nonlinearity}" in text
        assert "they differ in: nonlinearity." in text


def test_summary_csv_has_one_row_per_run_equal_to_summarise_run(trained):
    _, runs, out, _ = trained
    csv = pd.read_csv(out / "summary.csv")
    assert list(csv["run_id"]) == [p.name for p in runs]
    assert list(csv["model.nonlinearity"]) == ["tanh", "relu"]
    for path, row in zip(runs, csv.to_dict("records"), strict=True):
        expected = summarise_run(load_run(path, SUMMARY_TABLES), path.name).row()
        numbers = {k: v for k, v in expected.items() if isinstance(v, float)}
        assert {"loss_ratio", "decay_per_step_init", "lyapunov_max_end"} <= set(numbers)
        for column, value in numbers.items():
            assert row[column] == value or (math.isnan(value) and math.isnan(row[column])), column


@pytest.fixture(scope="module")
def partial(tmp_path_factory) -> tuple[list[Path], Path]:
    """Three synthetic runs: full (with markup in a setting), no reach or Lyapunov records,
    and a 2-step run (λ₁ at two probe steps: too few for a curve)."""
    root = tmp_path_factory.mktemp("partial")
    kinds = tuple(k for k in (*SUMMARY_TABLES, "spectra") if k not in ("reach", "lyapunov"))
    runs = [
        write_run(root / "full", settings={"task.name": "lm", "task.corpus": SCRIPT}),
        write_run(root / "no-reach", tables=kinds, nonlinearity="relu"),
        write_run(root / "short", steps=2, decay=1.1),
    ]
    return runs, build_comparison(runs, root / "out")


def test_runs_without_records_of_a_kind_are_named_in_the_caption(partial):
    _, out = partial
    check_report(out)
    text = (out / "README.md").read_text()
    caption = next(
        line for line in text.splitlines() if line.startswith("*") and "Not drawn" in line
    )
    assert "gradient reach of no-reach (no reach records)" in caption
    assert "λ₁ over training of no-reach (no Lyapunov records); short (too few" in caption


def test_markup_in_a_setting_is_escaped(partial):
    _, out = partial
    for name, quote in (("index.html", True), ("README.md", False)):
        text = (out / name).read_text()
        assert SCRIPT not in text and "<script" not in text
        assert html.escape(f"corpus={SCRIPT}", quote=quote) in text


def test_labels_name_differing_settings_by_short_name_seed_last(tmp_path):
    a = write_run(tmp_path / "a", seq_len=8, seed=0, settings={"train.lr": 0.01})
    b = write_run(tmp_path / "b", seq_len=16, seed=1)
    summaries = [summarise_run(load_run(p, SUMMARY_TABLES)) for p in (a, b)]
    keys = differing_settings(summaries)
    assert keys == ["task.seq_len", "train.lr", "seed"]
    assert run_label(summaries[1], keys) == "b: seq_len=16, lr=0.001, seed=1"
    assert run_label(summaries[0], []) == "a"


def test_run_ids_are_distinct_when_directory_names_clash(tmp_path):
    paths = [tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "z"]
    assert run_ids(paths) == ["x/run", "y/run", "z"]


def test_each_run_keeps_its_colour_in_every_panel_and_legends_hide_no_data():
    """A run missing from a panel does not shift the others' colours; legends sit outside."""
    palette = plots_study.run_colours(["a", "b", "c"])
    assert len({to_rgb(c) for c in palette.values()}) == 3
    t = np.arange(8.0)
    two = np.repeat(["a", "c"], 8)
    adjoints = pd.DataFrame({"run": two, "t": np.tile(t, 2), "adjoint_norm": 0.9 ** np.tile(t, 2)})
    reach = pd.DataFrame({"run": two, "source": 7, "distance": np.tile(t, 2),
                          "norm": 0.8 ** np.tile(t, 2)})  # fmt: skip
    loss = pd.DataFrame({"run": np.repeat(["b", "c"], 8), "step": np.tile(t + 1, 2),
                         "loss_ratio": 1 / np.tile(t + 1, 2), "kind": "batch"})  # fmt: skip
    lyapunov = pd.DataFrame({"run": np.repeat(["b", "c"], 3), "step": [1, 5, 9] * 2,
                             "exponent": [-0.1, -0.2, -0.3, 0.1, 0.0, -0.1]})  # fmt: skip
    fig = Figure(figsize=(24, 4))
    axes = fig.subplots(1, 4)
    plots_study.plot_runs_adjoints(adjoints, palette=palette, ax=axes[0])
    plots_study.plot_runs_reach(reach, palette=palette, ax=axes[1])
    plots_study.plot_runs_loss(loss, palette=palette, ax=axes[2])
    plots_study.plot_runs_lyapunov(lyapunov, palette=palette, ax=axes[3])
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in axes:
        drawn = [line for line in ax.get_lines() if line.get_label() in palette]
        assert len(drawn) == 2
        for line in drawn:
            assert to_rgb(line.get_color()) == to_rgb(palette[line.get_label()])
        right = ax.get_window_extent(renderer).x1
        legends = [a for a in ax.get_children() if isinstance(a, Legend)]
        assert legends and all(g.get_window_extent(renderer).x0 >= right for g in legends)


@pytest.mark.parametrize("bad", ["study", "missing", "not-a-run", "twice"])
def test_bad_path_in_the_list_is_a_one_line_error(tmp_path, bad):
    run = write_run(tmp_path / "run", steps=4, tables=("task", "steps"))
    other = {
        "study": write_study(tmp_path / "study", gains=(1.0,), seq_lens=(8,), steps=4),
        "missing": tmp_path / "nothere",
        "not-a-run": tmp_path,
        "twice": tmp_path / "." / "run",
    }[bad]
    with pytest.raises(RnnprobeError):
        build_comparison([run, other], tmp_path / "out")
    result = CliRunner().invoke(report, [str(run), str(other), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "rnnprobe: error:" in result.output
    assert str(other.name) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_one_path_gives_the_single_run_report_in_the_run_directory(tmp_path):
    run = write_run(tmp_path / "run", steps=10)
    result = CliRunner().invoke(report, [str(run)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (run / "report").glob("*.png")} == {"run.png"}
    assert "comparison" not in (run / "report" / "README.md").read_text()
