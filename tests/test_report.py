"""Reports from synthetic run and study directories written with the real RunStore.

The builders here (``write_run``, ``write_study``) are shared with test_diagnosis and
test_plots: they write every STANDARD_TABLES table with gradients that shrink or grow by a
chosen factor per step back in time, so the expected regime is known by construction.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from rnnprobe.analysis.diagnosis import StudyAnalysis, analyse_study
from rnnprobe.cli.report import report
from rnnprobe.errors import RnnprobeError
from rnnprobe.probes.reach import default_reach_sources
from rnnprobe.records.store import STANDARD_TABLES, RunStore
from rnnprobe.report.pages import PLOT_TABLES, build_report
from rnnprobe.training.config import build_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT = "<script>alert('x')</script>"


def _log_steps(last: int) -> list[int]:
    return sorted({0, *(2**k for k in range(int(math.log2(max(last, 1))) + 1) if 2**k <= last)})


def write_run(
    path: Path,
    *,
    decay: float = 0.97,
    decay_end: float | None = None,
    steps: int = 40,
    seq_len: int = 16,
    layers: int = 1,
    hidden: int = 8,
    nonlinearity: str = "tanh",
    init_gain: float = 1.0,
    clip: str = "none",
    grad_growth: float = 1.0,
    saturation: float = 0.1,
    loss_ratio: float = 0.4,
    diverge_at: int | None = None,
    status: str = "done",
    error: str | None = None,
    settings: dict | None = None,
    tables: tuple[str, ...] | None = None,
    seed: int = 0,
) -> Path:
    """Write a run whose gradients scale by ``decay`` per step back in time; return its path.

    Probes fire at steps 0 (W_hh only), 1, 2, 4, … and the last step, as training's do; with
    ``decay_end`` the factor moves geometrically from ``decay`` at step 1 to it at the end, and
    λ₁ = ln(factor) follows.
    """
    rng = np.random.default_rng(seed)
    config = build_config(
        {
            "task.seq_len": seq_len,
            "model.layers": layers,
            "model.hidden_size": hidden,
            "model.nonlinearity": nonlinearity,
            "model.init_gain": init_gain,
            "train.clip": clip,
            "train.steps": steps,
            "seed": seed,
            **(settings or {}),
        }
    )
    store = RunStore.create(path, config.to_dict())
    wanted = set(STANDARD_TABLES) if tables is None else set(tables)
    n = steps if diverge_at is None else diverge_at
    T, L, H = seq_len, layers, hidden
    relu = nonlinearity == "relu"
    out: dict[str, dict] = {}
    baseline = math.log(8)
    out["task"] = {
        "name": "copy", "kind": "per_step_classification", "metric": "accuracy",
        "seq_len": T, "baseline_loss": baseline, "baseline_metric": 0.125,
        "baseline_description": "uniform guess over 8 symbols", "parameters": 1000,
    }  # fmt: skip
    step = np.arange(1, n + 1)
    loss = baseline * (loss_ratio + (1 - loss_ratio) * np.exp(-step / (steps / 5)))
    loss *= 1 + 0.02 * rng.standard_normal(n)
    grad = np.exp(np.log(grad_growth) * step / steps) * (1 + 0.1 * np.abs(rng.standard_normal(n)))
    if diverge_at is not None:
        loss[-1], grad[-1] = np.nan, np.inf
    post = np.minimum(grad, 1.0) if clip == "norm" else grad
    out["steps"] = {
        "step": step, "loss": loss, "metric": 1 - loss / baseline * 0.8,
        "grad_norm_pre_clip": grad, "grad_norm_post_clip": post, "clipped": post < grad,
        "skipped": ~np.isfinite(grad), "lr": np.full(n, 1e-3), "tokens": step * 32 * T,
        "seconds": step * 0.01,
    }  # fmt: skip
    evals = step[:: max(1, n // 4)]
    out["evals"] = {"step": evals, "loss": loss[evals - 1] * 1.02, "metric": 0.5 + 0 * evals}
    s, l, t = (a.ravel() for a in np.meshgrid(step, np.arange(L), np.arange(T), indexing="ij"))
    norm = decay ** (T - 1 - t) * (1 + 0.05 * rng.standard_normal(len(t)) ** 2)
    ahead = decay ** (T - 2 - t).clip(0)
    out["adjoints"] = {
        "step": s, "layer": l, "t": t, "adjoint_norm": norm, "direct_norm": (t == T - 1) * 1.0,
        "recurrent_norm": np.where(t == T - 1, 0.0, decay * ahead), "grad_w_hh_norm": 0.5 * norm,
        "grad_w_ih_norm": 0.3 * norm,
    }  # fmt: skip
    every10 = np.array(sorted({1, *range(10, n + 1, 10), n}))
    s, l, t = (a.ravel() for a in np.meshgrid(every10, np.arange(L), np.arange(T), indexing="ij"))
    nan = np.full(len(s), np.nan)
    out["hidden"] = {
        "step": s, "layer": l, "t": t, "mean": 0.01 * t, "std": 0.5 + 0 * t, "norm": 2.0 + 0 * t,
        "saturation": nan if relu else saturation + 0 * t, "inactive": 0.4 + 0 * t if relu
        else nan, "mean_phi_prime": 0.6 + 0 * t,
    }  # fmt: skip
    s, l = (a.ravel() for a in np.meshgrid(every10, np.arange(L), indexing="ij"))
    nan = np.full(len(s), np.nan)
    out["health"] = {
        "step": s, "layer": l, "saturation": nan if relu else saturation + 0 * s,
        "inactive": 0.4 + 0 * s if relu else nan, "dead_fraction": 0.05 + 0 * s if relu else nan,
        "mean_phi_prime": 0.6 + 0 * s, "participation_ratio": H * (0.3 + 0.2 * s / steps),
    }  # fmt: skip
    probe = sorted({*_log_steps(n), n})
    weights, spectra, lyapunov, reach = [], [], [], []
    w = rng.standard_normal((H, H)) * init_gain / math.sqrt(H)
    first = decay
    for k in probe:
        if decay_end is not None:
            decay = first * (decay_end / first) ** (max(k - 1, 0) / max(n - 1, 1))
        for layer in range(L):
            eig = np.linalg.eigvals(w * (1 + 0.1 * k / steps))
            sv = np.linalg.svd(w, compute_uv=False)
            weights.append({
                "step": k, "layer": layer, "spectral_radius": float(np.abs(eig).max()),
                "sigma_max": float(sv[0]), "pascanu_bound": float(sv[0]),
                "jacobian_norm": decay * 1.2, "jacobian_mean_log_sv": math.log(decay),
            })  # fmt: skip
            for i, e in enumerate(eig):
                spectra.append(_spectrum(k, layer, "w_hh_eigenvalue", 0, i, e.real, e.imag))
            for i, v in enumerate(sv):
                spectra.append(_spectrum(k, layer, "w_hh_singular", 0, i, v, 0.0))
            for sample in range(3):
                values = np.sort(decay * np.exp(0.3 * rng.standard_normal(H)))[::-1]
                for i, v in enumerate(values):
                    spectra.append(_spectrum(k, layer, "jacobian_singular", sample, i, v, 0.0))
            if k == 0:
                continue
            for i in range(min(H, 6)):
                lyapunov.append({"step": k, "layer": layer, "index": i,
                                 "exponent": math.log(decay) - 0.15 * i})  # fmt: skip
            for source in default_reach_sources(T):
                for tt in range(source + 1):
                    value = decay ** (source - tt) * (1 + 0.05 * rng.random())
                    reach.append({"step": k, "layer": layer, "source": source, "t": tt,
                                  "distance": source - tt, "norm": value})  # fmt: skip
    out["weights"], out["spectra"], out["lyapunov"], out["reach"] = (
        weights,
        spectra,
        lyapunov,
        reach,
    )
    out["mean_field"] = [
        {"layer": layer, "sigma_w2": init_gain**2, "sigma_in2": 0.1, "q_star": 0.5,
         "chi": (first * 1.02) ** 2, "predicted_decay": first * 1.02,
         "predicted_half_life": math.log(2) / -math.log(first * 1.02) if first * 1.02 < 1
         else math.inf}
        for layer in range(L)
    ]  # fmt: skip
    if diverge_at is not None:
        out["events"] = {"step": n, "kind": "diverged", "message": "loss is nan"}
    for name, rows in out.items():
        if name in wanted:
            store.append(name, rows)
    store.flush()
    store.set_status(status, n if wanted else 0, error)
    return path


def _spectrum(step, layer, quantity, sample, index, value, imag) -> dict:
    return {"step": step, "layer": layer, "quantity": quantity, "sample": sample,
            "index": index, "value": float(value), "imag": float(imag)}  # fmt: skip


# (init_gain, seq_len) -> gradient factor per step of the synthetic study
def _study_decay(gain: float) -> float:
    return {0.5: 0.5, 1.0: 0.98, 2.0: 1.3}[gain]


def write_study(
    path: Path, *, gains=(0.5, 1.0, 2.0), seq_lens=(8, 24), steps: int = 30, name: str = "demo",
    hidden: int = 8, layers: int = 1, **run_options,
) -> Path:  # fmt: skip
    """Write study.json and one run per (init_gain, seq_len); return the study directory."""
    entries = []
    for gain in gains:
        for seq_len in seq_lens:
            rid = f"g{gain}-T{seq_len}"
            decay = _study_decay(gain)
            ratio = {0.5: 0.6 + 0.4 * min(1, seq_len / 24), 1.0: 0.3, 2.0: 0.9}[gain]
            write_run(
                path / "runs" / rid, decay=decay, seq_len=seq_len, init_gain=gain, steps=steps,
                loss_ratio=ratio, grad_growth=1000.0 if gain == 2.0 else 1.0, hidden=hidden,
                layers=layers, saturation=0.7 if gain == 2.0 else 0.1, **run_options,
            )  # fmt: skip
            axes = {"model.init_gain": gain, "task.seq_len": seq_len}
            entries.append({"id": rid, "axes": axes, "status": "done", "error": None})
    spec = {
        "name": name, "axes": {"model.init_gain": list(gains), "task.seq_len": list(seq_lens)},
        "runs": entries,
    }  # fmt: skip
    (path / "study.json").write_text(json.dumps(spec, indent=2))
    return path


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.sources += [v for k, v in attrs if k in ("src", "href") and v]


def _check_png(data: bytes) -> None:
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    with Image.open(io.BytesIO(data)) as image:
        image.verify()


def _check_report(out: Path) -> None:
    """Every PNG is valid; every image that index.html and README.md reference resolves."""
    pngs = sorted(out.glob("*.png"))
    assert pngs
    for png in pngs:
        _check_png(png.read_bytes())
    page = (out / "index.html").read_text()
    links = _Links()
    links.feed(page)
    assert links.sources and all(s.startswith("data:image/png;base64,") for s in links.sources)
    for source in links.sources:
        _check_png(base64.b64decode(source.partition(",")[2]))
    assert "could not draw" not in page
    readme = (out / "README.md").read_text()
    targets = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert sorted(targets) == sorted(p.name for p in pngs)
    assert all((out / t).is_file() for t in targets)
    assert len(links.sources) == len(targets)
    assert "could not draw" not in readme


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
    _check_report(out)
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
        tmp_path / "run", settings={"task.corpus": SCRIPT}, error=SCRIPT, status="failed"
    )
    before = {p for p in tmp_path.rglob("*")}
    out = build_report(run, tmp_path / "out" / "r")
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(out in p.parents or p == out or p in out.parents for p in created)
    _check_report(out)
    for name, quote in (("index.html", True), ("README.md", False)):
        text = (out / name).read_text()
        assert SCRIPT not in text and "<script" not in text
        assert html.escape(SCRIPT, quote=quote) in text
    assert {p.name for p in out.glob("*.png")} == {"run.png"}


def test_large_study_shows_figures_only_for_representative_runs(demo, tmp_path):
    out = build_report(demo[0], tmp_path / "out", max_run_figures=2)  # 4 runs > 2
    _check_report(out)
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
    _check_report(out)
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
    _check_png(shot.read_bytes())
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
    _check_report(out)


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
