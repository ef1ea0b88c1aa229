"""Reports from synthetic run and study directories written with the real RunStore.

The builders (``write_run``, ``write_study``, in tests/support/records.py) write every
STANDARD_TABLES table with gradients that shrink or grow by a chosen factor per step back in
time, so the expected regime is known by construction.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from rnnprobe.analysis.diagnosis import StudyAnalysis, analyse_study
from rnnprobe.cli.report import report
from rnnprobe.errors import RnnprobeError
from rnnprobe.report.pages import PLOT_TABLES, build_report
from tests.support.records import SCRIPT, check_png, check_report, write_run, write_study


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, StudyAnalysis]:
    """A 4-run study (init_gain 0.5, 2 × seq_len 8, 24) and its analysis, for reading only.

    Drawn once for the tests below, as ``rnnprobe study`` does: OUT/summary.csv, then the
    report in OUT/report from the same analysis (4 ≤ 8 runs: a figure for every run).
    """
    from rnnprobe.cli.study import write_summary

    study = write_study(tmp_path_factory.mktemp("demo") / "s", gains=(0.5, 2.0))
    analysis = analyse_study(study, keep=PLOT_TABLES)
    write_summary(analysis.table, study)
    build_report(study, study / "report", analysis=analysis)
    return study, analysis


def test_study_report_has_valid_figures_and_links(demo):
    out = demo[0] / "report"
    check_report(out)
    names = {p.name for p in out.glob("*.png")}
    assert "study.png" in names
    assert len([n for n in names if n.startswith("run-")]) == 4  # ≤ 8 runs: a figure each
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4
    assert {"model.init_gain", "task.seq_len", "regime_init", "outcome", "loss_ratio",
            "half_life_end"} <= set(summary.columns)  # fmt: skip
    regimes = dict(zip(summary["run_id"], summary["regime_end"], strict=True))
    assert regimes["g0.5-T24"] == "vanishing" and regimes["g2.0-T24"] == "exploding"
    assert regimes["g2.0-T8"] == "chaotic"  # λ₁ = ln 1.3 > 0, but 1.3^8 < 16 over T = 8
    text = (out / "README.md").read_text()
    assert "## Answer" in text and "model.init_gain changes" in text


def test_single_run_report_escapes_text_and_writes_only_under_output(tmp_path):
    run = write_run(
        tmp_path / "run",
        settings={"task.name": "lm", "task.corpus": SCRIPT},
        error=SCRIPT,
        status="failed",
    )
    before = {p for p in tmp_path.rglob("*")}
    out = build_report(run, tmp_path / "out" / "r")
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(out in p.parents or p == out or p in out.parents for p in created)
    check_report(out)
    for name, quote in (("index.html", True), ("README.md", False)):
        text = (out / name).read_text()
        assert SCRIPT not in text and "<script" not in text
        assert html.escape(SCRIPT, quote=quote) in text
    assert {p.name for p in out.glob("*.png")} == {"run.png"}


def test_large_study_shows_figures_only_for_representative_runs(demo, tmp_path):
    out = build_report(demo[0], tmp_path / "out", max_run_figures=2)  # 4 runs > 2
    check_report(out)
    assert len(list(out.glob("run-*.png"))) == 2  # the cap, exactly: best and worst
    readme = (out / "README.md").read_text()
    assert "Other runs (2;" in readme


def test_default_output_is_report_inside_the_run_or_study(tmp_path, monkeypatch):
    run = write_run(tmp_path / "my-run", steps=10)
    study = write_study(tmp_path / "my-study", gains=(1.0,), seq_lens=(8,), steps=4)
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.rglob("*"))
    assert build_report(Path("my-run")) == Path("my-run") / "report"
    assert build_report(study) == study / "report"
    created = set(tmp_path.rglob("*")) - before
    outs = (run / "report", study / "report")
    assert all(any(p == out or out in p.parents for out in outs) for p in created)
    assert (run / "report" / "index.html").is_file()
    assert (study / "report" / "index.html").is_file()


def test_running_run_without_records_reports_so(tmp_path):
    run = write_run(tmp_path / "fresh", tables=(), status="running")
    out = build_report(run, tmp_path / "out")
    text = (out / "README.md").read_text()
    assert "No records yet" in text and "status running" in text
    assert not list(out.glob("*.png"))


def test_run_diverged_at_step_3_reports_divergence(tmp_path):
    run = write_run(tmp_path / "boom", decay=1.4, diverge_at=3, status="diverged")
    out = build_report(run, tmp_path / "out")
    check_report(out)
    text = (out / "README.md").read_text()
    assert "diverged" in text and "step 3" in text


def test_study_without_runs_reports_so(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "study.json").write_text(json.dumps({"name": "empty", "runs": []}))
    out = build_report(tmp_path / "empty", tmp_path / "out")
    assert "no runs" in (out / "README.md").read_text()
    assert (out / "summary.csv").is_file()


def test_study_with_missing_and_unreadable_runs_still_reports(tmp_path):
    study = write_study(tmp_path / "s", gains=(1.0,), seq_lens=(8,), steps=10)
    spec = json.loads((study / "study.json").read_text())
    spec["runs"].append({"id": "pending", "axes": {"model.init_gain": 3.0}, "status": "running"})
    (study / "study.json").write_text(json.dumps(spec))
    spec["runs"].append({"id": "broken", "axes": {"model.init_gain": 4.0}, "status": "done"})
    spec["runs"].append({"id": "gone", "axes": {"model.init_gain": 5.0}, "status": "done"})
    (study / "study.json").write_text(json.dumps(spec))
    broken = study / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    out = build_report(study, tmp_path / "out")
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["run_id"]) == ["g1.0-T8", "pending", "broken", "gone"]
    text = (out / "README.md").read_text()
    assert "unreadable records in" in text and "no readable run directory" in text


@pytest.mark.parametrize("kind", ["missing", "plain_dir", "file"])
def test_path_neither_run_nor_study_is_one_line_error(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "plain_dir":
        path.mkdir()
    elif kind == "file":
        path.write_text("hello")
    with pytest.raises(RnnprobeError):
        build_report(path, tmp_path / "out")
    result = CliRunner().invoke(report, [str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "rnnprobe: error:" in result.output
    assert "Traceback" not in result.output


def test_cli_writes_report(tmp_path):
    run = write_run(tmp_path / "run", steps=10)
    result = CliRunner().invoke(report, [str(run), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "index.html").is_file()


@pytest.mark.chromium
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_index_html_renders_in_headless_chromium(tmp_path):
    out = build_report(write_run(tmp_path / "run", steps=12), tmp_path / "out")
    shot = tmp_path / "shot.png"
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1200,2000", (out / "index.html").resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=600)  # a hang guard
    check_png(shot.read_bytes())
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # not a blank page


@pytest.mark.slow
def test_benchmark_report_of_24_runs_by_2000_steps(tmp_path):
    study = write_study(
        tmp_path / "big", gains=(0.5, 1.0, 2.0), seq_lens=(8, 16, 32, 64, 96, 128, 160, 200),
        steps=2000, hidden=32, layers=2,
    )  # fmt: skip
    start = time.perf_counter()
    out = build_report(study, tmp_path / "out")
    seconds = time.perf_counter() - start
    print(f"report of 24 runs × 2000 steps: {seconds:.1f} s (target: under 60 s)")
    check_report(out)


def test_every_number_shown_twice_is_the_same_number(demo, tmp_path):
    """Terminal table, OUT/summary.csv, the report's summary.csv, its table and its text agree."""
    from rnnprobe.cli.study import format_summary

    study, analysis = demo  # OUT/summary.csv and OUT/report written from this analysis
    terminal = format_summary(analysis)
    # `rnnprobe report` reads the files anew
    again = build_report(study, tmp_path / "again", max_run_figures=0)
    first = (study / "summary.csv").read_text()
    assert first == (study / "report" / "summary.csv").read_text()
    assert first == (again / "summary.csv").read_text()
    csv = pd.read_csv(study / "summary.csv")
    readme = (again / "README.md").read_text()
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in readme.splitlines()
        if line.startswith("| g") and " | done | " in line
    }  # the summary table's rows
    for row in csv.to_dict("records"):
        rid = row["run_id"]
        line = next(x for x in terminal.splitlines() if x.strip().startswith(rid))
        for column in ("loss_ratio", "decay_per_step_init", "decay_per_step_end"):
            value = row[column]
            if not math.isfinite(value):
                continue
            assert f"{value:.4g}" in line.split(), (rid, column)  # the terminal's 4 digits
            assert f" {value:.4g} |" in rows[rid], (rid, column)  # the report's table
    # the diagnosis text quotes the same fits
    text = (study / "report" / "README.md").read_text()
    for value in csv["decay_per_step_init"]:
        assert f"decay ×{value:.4g} per step" in text
    # the answer's loss by configuration, and its decay by init_gain over seq_len, are the CSV's
    answer = "\n".join(analysis.diagnosis.answer)
    for (gain, seq_len), runs in csv.groupby(["model.init_gain", "task.seq_len"]):
        mean = runs["loss_ratio"].mean()
        assert f"init_gain = {gain}, seq_len = {seq_len} ({mean:.3g})" in answer
    effect = next(x for x in answer.splitlines() if "init_gain changes decay per step at" in x)
    for gain, runs in csv.groupby("model.init_gain"):
        assert f" {gain}: {runs['decay_per_step_init'].mean():.3g} ±" in effect


def test_lines_of_one_point_are_named_not_drawn():
    from rnnprobe.report.pages import lines_to_draw

    inf = math.inf
    frame = pd.DataFrame(
        {
            "floss": ["none", "on", "none", "on", "none", "on"],
            "init": ["default", "default", "identity", "identity", "orthogonal", "orthogonal"],
            "init_half": [0.1, 0.2, 0.3, inf, inf, inf],  # a line, one point, none
            "end_half": [inf, 0.5, inf, inf, 0.4, inf],  # one point at each level of floss
        }
    )
    series = {"init": "init_half", "end": "end_half", "gone": "missing"}
    kept, drawn, notes = lines_to_draw(frame, "floss", "init", series, positive=True)
    assert kept == {"init": "init_half"}
    assert drawn["init_half"].tolist()[:2] == [0.1, 0.2]  # the line
    assert drawn["init_half"][2:4].isna().all()  # identity's lone point, no longer drawn
    assert frame["init_half"][2] == 0.3  # the caller's frame is left alone
    assert notes == [
        "init, init = identity: only floss = none has a value (0.3)",
        "end, init = default: only floss = on has a value (0.5)",
        "end, init = orthogonal: only floss = none has a value (0.4)",
    ]
    kept, _, notes = lines_to_draw(frame[frame["floss"] == "on"], "floss", None, series, True)
    assert kept == {}
    assert notes == [
        "init: only floss = on has a value (0.2, 1 of 3 runs)",
        "end: only floss = on has a value (0.5, 1 of 3 runs)",
    ]


def test_a_configuration_keeps_its_style_in_every_panel():
    from types import SimpleNamespace

    from rnnprobe.report.pages import _configurations

    runs = [
        SimpleNamespace(settings={"task.seq_len": t, "train.clip": c, "seed": s})
        for c in ("none", "norm")
        for t in (100, 10)
        for s in (0, 1)
    ]
    study = SimpleNamespace(study=SimpleNamespace(runs=runs))
    hue = {"none": "C0", "norm": "C1"}  # the colours the panels against seq_len give clip
    configs = _configurations(study, "task.seq_len", ["train.clip"], hue)
    assert configs.title == "seq_len, clip"
    assert configs.styles == {  # the hue's colour, a dash pattern per seq_len
        "10, none": {"color": "C0", "linestyle": "-"},
        "10, norm": {"color": "C1", "linestyle": "-"},
        "100, none": {"color": "C0", "linestyle": "--"},
        "100, norm": {"color": "C1", "linestyle": "--"},
    }
    # at init the clip setting is not there yet: one curve per seq_len, its first style
    assert configs.init_styles == {"10": configs.styles["10, none"],
                                   "100": configs.styles["100, none"]}  # fmt: skip
    assert [configs.label(r) for r in configs.runs[:2]] == ["10, none", "10, none"]  # seeds
    alone = _configurations(study, "task.seq_len", [], {})  # no hue: ordered colours
    assert [s["linestyle"] for s in alone.styles.values()] == ["-", "-"]
    assert len({tuple(s["color"]) for s in alone.styles.values()}) == 2


def test_a_run_without_a_lyapunov_curve_is_named_not_drawn(tmp_path, monkeypatch):
    study = write_study(tmp_path / "s", gains=(0.5, 1.0, 2.0), seq_lens=(8,), steps=30)
    shutil.rmtree(study / "runs" / "g2.0-T8")  # blows up after its first probes
    write_run(study / "runs" / "g2.0-T8", decay=1.4, seq_len=8, init_gain=2.0, steps=30,
              diverge_at=1, status="diverged")  # fmt: skip
    from rnnprobe.report import plots_study

    titles, draw = [], plots_study.plot_measure_vs_axis

    def recorded(*args, **kwargs):
        titles.append(kwargs["title"])
        return draw(*args, **kwargs)

    monkeypatch.setattr(plots_study, "plot_measure_vs_axis", recorded)
    text = (build_report(study, tmp_path / "out") / "README.md").read_text()
    assert "steps trained (a diverged run: until it stopped)" in titles  # how long each lasted
    assert "λ₁ over training leaves out init_gain = 2.0: λ₁ at step" in text
    # its end values are in the summary table, not in the panels whose caption names step 30
    assert "end values leave out the 1 diverged runs: their last probe step" in text


def test_log_panels_average_geometrically_and_mark_points_with_fewer_seeds():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from rnnprobe.report.plots_study import plot_measure_vs_axis

    frame = pd.DataFrame({"x": [1, 1, 2, 2], "seed": [0, 1, 0, 1],
                          "half": [1.0, 100.0, 4.0, math.inf]})  # fmt: skip
    ax = Figure().subplots()
    plot_measure_vs_axis(frame, x="x", series={"init": "half"}, log=True, ax=ax)
    line = ax.get_lines()[0]
    assert line.get_ydata().tolist() == pytest.approx([10.0, 4.0])  # not 50.5
    labels = ax.get_legend_handles_labels()[1]
    assert "hollow marker: fewer seeds" in labels  # x = 2 has one finite seed of two
    ax = Figure().subplots()
    plot_measure_vs_axis(frame.assign(half=[1.0, 2.0, 3.0, 4.0]), x="x",
                         series={"init": "half"}, ax=ax)  # fmt: skip
    assert ax.get_lines()[0].get_ydata().tolist() == pytest.approx([1.5, 3.5])
    assert "hollow marker: fewer seeds" not in ax.get_legend_handles_labels()[1]


def test_a_series_the_same_for_every_hue_level_is_drawn_once():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from rnnprobe.report.plots_study import plot_measure_vs_axis

    frame = pd.DataFrame({"T": [5, 5, 10, 10], "bptt": ["4", "full", "4", "full"],
                          "init": [-0.05, -0.05, -0.04, -0.04],  # one network per T
                          "end": [0.01, 0.03, 0.02, 0.04]})  # fmt: skip
    ax = Figure().subplots()
    plot_measure_vs_axis(frame, x="T", hue="bptt", series={"init": "init", "end": "end"}, ax=ax)
    labels = ax.get_legend_handles_labels()[1]
    assert "init, every bptt" in labels and "init, 4" not in labels
    assert {"end, 4", "end, full"} <= set(labels)


def test_a_series_with_missing_values_is_compared_across_hue_levels():
    from rnnprobe.report.plots_study import _alike

    frame = pd.DataFrame({"x": ["a", "a", "a", "b", "b", "b"], "hue": ["1", "2", "3"] * 2,
                          "v": [0.5, 0.5, 0.7, math.nan, math.nan, math.nan]})  # fmt: skip
    assert _alike(frame, "x", "hue", "v", ["1", "2", "3"]) == [["1", "2"], ["3"]]
    frame["v"] = [0.5, 0.5, 0.5, math.nan, 1.0, math.nan]
    assert _alike(frame, "x", "hue", "v", ["1", "2", "3"]) == [["1", "3"], ["2"]]


def test_the_summary_table_says_a_growing_gradient_grows():
    from rnnprobe.report.pages import display_table

    summary = pd.DataFrame({"decay_per_step_end": [0.5, 1.5, 1.0],
                            "half_life_end": [1.0, math.inf, math.inf],
                            "half_life_over_seq_len_end": [0.1, math.inf, math.inf]})  # fmt: skip
    shown = display_table(summary)
    assert shown["half_life_end"].tolist() == ["1", "grows", "∞"]
    assert shown["half_life_over_seq_len_end"].tolist() == ["0.1", "grows", "∞"]
    flat = display_table(summary.assign(decay_shape_end=["exponential", "flat", "flat"]))
    assert flat["half_life_end"].tolist() == ["1", "flat", "flat"]  # as the Answer says
    full = summary.assign(decay_shape_end=["exponential", "flat", "flat"])  # the whole table
    shown = display_table(summary[["half_life_end"]], full)  # what a report shows of it
    assert shown["half_life_end"].tolist() == ["1", "flat", "flat"]  # HEAD: 'grows' and '∞'


def test_a_series_with_values_at_one_level_names_the_lines_that_have_them():
    from rnnprobe.report.pages import lines_to_draw

    frame = pd.DataFrame({"T": [5, 10, 5, 10, 10], "bptt": ["4", "4", "8", "8", "8"],
                          "end": [math.inf, math.inf, math.inf, 1.37, math.inf]})  # fmt: skip
    kept, _, notes = lines_to_draw(frame, "T", "bptt", {"end": "end"}, positive=True)
    assert kept == {}  # the hue level with its axis: 'end, 8' did not say 8 was a bptt
    assert notes == ["end, bptt = 8: only T = 10 has a value (1.37, 1 of 2 runs)"]


def test_values_at_one_level_for_every_hue_level_are_not_pooled_into_one_mean():
    from rnnprobe.report.pages import lines_to_draw

    # flossing's init half-life / T: only floss = none has one, 0.02 from the default init and
    # 0.18 from the identity init; one note said 0.061 for all four lines, a mean of neither
    frame = pd.DataFrame({"floss": ["none"] * 4 + ["on"] * 4,
                          "init": ["default", "default", "identity", "identity"] * 2,
                          "half": [0.02, 0.02, 0.18, 0.18] + [math.inf] * 4})  # fmt: skip
    kept, _, notes = lines_to_draw(frame, "floss", "init", {"init": "half"}, positive=True)
    assert kept == {}
    assert notes == ["init, init = default: only floss = none has a value (0.02)",
                     "init, init = identity: only floss = none has a value (0.18)"]  # fmt: skip
    same = frame.assign(half=[0.02] * 4 + [math.inf] * 4)  # alike: one note, no level named
    assert lines_to_draw(same, "floss", "init", {"init": "half"}, positive=True)[2] == [
        "init: only floss = none has a value (0.02)"
    ]


def test_the_caption_says_what_the_bold_and_faint_lambda_curves_are(tmp_path):
    # λ₁ over training draws each configuration's seed mean bold and each run faint; the
    # caption said what bold and faint are in the reach panels only
    entries = []
    for gain in (0.5, 2.0):
        for seed in (0, 1):
            write_run(tmp_path / "s" / "runs" / f"g{gain}-s{seed}", decay=0.6 if gain < 1 else 1.2,
                      seq_len=8, init_gain=gain, steps=30, seed=seed)  # fmt: skip
            axes = {"model.init_gain": gain, "seed": seed}
            entries.append({"id": f"g{gain}-s{seed}", "axes": axes, "status": "done"})
    spec = {"name": "seeds", "axes": {"model.init_gain": [0.5, 2.0], "seed": [0, 1]},
            "runs": entries}  # fmt: skip
    (tmp_path / "s" / "study.json").write_text(json.dumps(spec))
    text = (build_report(tmp_path / "s", tmp_path / "out") / "README.md").read_text()
    caption = next(line for line in text.splitlines() if line.startswith("*measures"))
    assert "λ₁ over training: bold, the mean over a configuration's seeds; faint, each run" in (
        caption
    )
    one = write_study(tmp_path / "one", gains=(0.5, 2.0), seq_lens=(8,))  # a run each: no note
    text = (build_report(one, tmp_path / "out1") / "README.md").read_text()
    assert "λ₁ over training: bold" not in text


def test_the_loss_heatmap_names_the_step_its_loss_is_from(tmp_path, monkeypatch):
    # its neighbour said 'loss / baseline at the end (step 30)'; the heatmap of the same
    # numbers said 'loss / baseline (seed mean)', of no step
    from rnnprobe.report import plots_study

    titles, draw = [], plots_study.plot_phase_diagram

    def recorded(*args, **kwargs):
        ax = draw(*args, **kwargs)
        titles.append(ax.get_title())
        return ax

    monkeypatch.setattr(plots_study, "plot_phase_diagram", recorded)
    build_report(write_study(tmp_path / "s", gains=(0.5, 1.0)), tmp_path / "out")
    assert titles == ["loss / baseline at the end (step 30), seed mean"]


def test_the_mean_field_scatter_takes_the_hue_colours_of_the_other_panels():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    from rnnprobe.report.plots_gradients import plot_decay_vs_mean_field

    frame = pd.DataFrame({"decay_per_step_init": [0.4, 0.55], "predicted_decay": [0.41, 0.57],
                          "model.nonlinearity": ["relu", "tanh"]})  # fmt: skip
    ax = Figure().subplots()
    palette = {"relu": (0.0, 0.0, 1.0), "tanh": (1.0, 0.5, 0.0)}
    plot_decay_vs_mean_field(frame, hue="model.nonlinearity", palette=palette, ax=ax)
    faces = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
    assert faces == [to_rgba(palette["relu"])[:3], to_rgba(palette["tanh"])[:3]]


def test_the_mean_field_scatter_is_coloured_only_by_axes_that_change_the_initial_network():
    from rnnprobe.report.pages import mean_field_colour

    # the sweep axis sets the weights: its levels colour the points
    assert mean_field_colour("model.init", ["train.clip"], "train.clip") == "model.init"
    # the hue sets them (seq_len: nonlinearity beside T): the hue's colours
    nonlinearity = ["model.nonlinearity"]
    assert mean_field_colour("task.seq_len", nonlinearity, "model.nonlinearity") == (
        "model.nonlinearity"
    )
    # flossing: a hue of (init, clip) has runs that share one network, whose points coincide
    both = ["model.init", "train.clip"]
    assert mean_field_colour("train.floss", both, "init, clip") is None
    assert mean_field_colour("task.seq_len", [], None) is None
    assert mean_field_colour("train.lr", ["train.clip"], "train.clip") is None


def test_the_caption_pairs_task_seq_len_with_t_only_where_they_differ():
    from rnnprobe.report.pages import seq_len_note

    # lm_text: T is task.seq_len, read back as floats beside the spec's integers
    same = pd.DataFrame({"task.seq_len": [16, 64], "seq_len": [16.0, 64.0]})
    assert seq_len_note(same) is None
    copy = pd.DataFrame({"task.seq_len": [10, 10, 20], "seq_len": [30.0, float("nan"), 40.0]})
    assert (
        seq_len_note(copy)
        == "T, the steps each sequence runs, is not task.seq_len: 10 → 30, 20 → 40"
    )


def test_the_mean_field_scatter_over_many_gains_takes_the_reach_panels_colours():
    from types import SimpleNamespace

    from rnnprobe.report.pages import _configurations

    gains = (0.5, 0.75, 1.0, 1.25, 1.375, 1.5, 1.75, 2.0, 2.5, 3.0)  # init_gain's ten levels
    runs = [SimpleNamespace(settings={"model.init_gain": g, "seed": 0}) for g in gains]
    configs = _configurations(SimpleNamespace(study=SimpleNamespace(runs=runs)),
                              "model.init_gain", [], {})  # fmt: skip
    # the scatter's palette: one colour per gain, each the colour of that gain's reach line
    assert list(configs.x_colours) == [str(g) for g in gains]
    assert len({tuple(c) for c in configs.x_colours.values()}) == len(gains)
    assert all(configs.styles[str(g)]["color"] == configs.x_colours[str(g)] for g in gains)


def test_figures_keep_their_colours_when_compressed():
    import io

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from PIL import Image

    from rnnprobe.report.pages import DPI, PNG_TOLERANCE, _png_bytes

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.imshow(np.linspace(0, 1, 400).reshape(20, 20), cmap="viridis")  # a heatmap's ramp
    ax.plot([0, 19], [0, 19], color="C1")  # beside a line in a palette colour
    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=DPI, bbox_inches="tight")  # as _png_bytes saves it
    original = np.asarray(Image.open(raw).convert("RGB"), np.int16)
    kept = np.asarray(Image.open(io.BytesIO(_png_bytes(fig))).convert("RGB"), np.int16)
    assert np.abs(kept - original).max() <= PNG_TOLERANCE  # viridis' yellow stays yellow


def test_a_legend_outside_the_last_column_is_not_cut_off_the_figure():
    import io

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from PIL import Image

    from rnnprobe.report.pages import DPI, _png_bytes
    from rnnprobe.report.plots import legend_outside

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="C0", label="a label far longer than the room right of the axes")
    legend_outside(ax)
    legend = ax.get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().x1 > fig.bbox.x1  # the old PNG cut it off here
    png = Image.open(io.BytesIO(_png_bytes(fig)))
    # in inches: from the axes' left edge to the legend's right edge, all in the image
    drawn = (legend.get_window_extent().x1 - ax.get_window_extent().x0) / fig.dpi
    assert png.size[0] / DPI >= drawn > 4  # the figure is 4 in wide
    assert np.asarray(png.convert("L")).min() < 128


def test_a_hue_of_several_axes_names_each_in_a_lone_values_note():
    from rnnprobe.report.pages import _hue_text

    assert _hue_text("init, clip", "default, none") == "init = default, clip = none"
    assert _hue_text("train.bptt", "16") == "bptt = 16"
    assert _hue_text("init, clip", "odd") == "odd" and _hue_text(None, "x") == "x"
