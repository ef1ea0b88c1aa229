"""What the everyday commands print: the same words and numbers as the report, and what next."""

from __future__ import annotations

import re

from click.testing import CliRunner

from rnnprobe.analysis.diagnosis import analyse_study
from rnnprobe.cli.main import main
from rnnprobe.cli.study import format_summary
from rnnprobe.records.store import load_run
from rnnprobe.report.pages import display_table
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run
from tests.support.records import write_run, write_study


def test_study_terminal_table_shows_a_half_life_as_the_report_table_does(tmp_path):
    study = write_study(tmp_path / "s", gains=(0.5, 2.0), seq_lens=(8,), steps=12)
    analysis = analyse_study(study)  # gain 2.0: the gradient grows by ×1.3 per step back
    shown = display_table(analysis.shown)  # what the report's table writes
    terminal = format_summary(analysis).splitlines()
    for row in shown.to_dict("records"):
        line = next(x for x in terminal if x.strip().startswith(row["run_id"]))
        assert line.split() == " ".join(row.values()).split()
    grows = next(x for x in terminal if x.strip().startswith("g2.0"))
    assert "grows" in grows.split() and "inf" not in grows.split()


def test_export_counts_one_heatmap_in_the_singular(tmp_path):
    run = write_run(tmp_path / "r", steps=12)  # one layer: one heatmap
    result = CliRunner().invoke(main, ["export", str(run), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    assert "wrote 1 run (" in result.output and "scalars, 1 heatmap) to" in result.output


def test_train_closing_lines_name_the_early_warning_and_the_replay_commands(tmp_path):
    """An exploding run (tests/report/test_replay.py's) warns, then goes non-finite: the closing
    lines say so and give the commands to replay both steps and to report the run."""
    run = tmp_path / "boom"
    settings = {
        "task": "adding", "seq-len": "8", "steps": "20", "optimizer": "sgd", "lr": "2.0",
        "momentum": "0.0", "max-nonfinite": "2", "warn": "window=4,lyapunov=off,jacobian=off",
        "hidden-size": "8", "batch-size": "4", "eval-every": "50", "eval-batches": "1",
        "device": "cpu", "hidden": "never", "spectra": "never", "lyapunov": "never",
        "reach": "never", "weight-grads": "never",
    }  # fmt: skip
    args = [f"--{key}={value}" for key, value in settings.items()]
    result = CliRunner().invoke(main, ["train", *args, "--out", str(run), "--no-progress"])
    assert result.exit_code == 1, result.output  # diverged
    events = load_run(run).table("events")
    warned = int(events.loc[events["kind"] == "warning", "step"].iloc[0])
    nonfinite = int(events.loc[events["kind"] == "nonfinite", "step"].min())
    lines = result.stdout.splitlines()
    assert any(x.startswith(f"Early warning at step {warned}: ") for x in lines), lines
    for step, kind in ((warned, "warning"), (nonfinite, "nonfinite")):
        command = f"rnnprobe replay {run / 'snapshots' / f'{step}-{kind}.pt'}"
        assert f"Replay step {step} ({kind}): {command}" in lines
    assert lines[-1] == f"Figures and the full diagnosis: rnnprobe report {run}"


def test_fixed_points_line_counts_each_category_in_words(tmp_path):
    config = build_config(
        {"task.seq_len": 3, "model.hidden_size": 8, "train.steps": 4, "train.batch_size": 4,
         "train.eval_every": 4, "train.eval_batches": 1, "device": "cpu", "checkpoint_every": 4,
         "probes.hidden": "never", "probes.spectra": "never", "probes.lyapunov": "never",
         "probes.reach": "never"}
    )  # fmt: skip
    run = train_run(config, tmp_path / "r", progress=False).run_dir
    args = [str(run), "--starts", "4", "--batches", "1", "--out", str(tmp_path / "fp")]
    result = CliRunner().invoke(main, ["fixed-points", *args])
    assert result.exit_code == 0, result.output
    counts = re.search(r"checkpoint at step 4: (.*) from 4 starts", result.stdout)
    assert counts is not None, result.stdout
    pairs = re.findall(r"(\d+) ([a-z ]+)", counts[1])  # in CATEGORIES' order
    words = [("stable", "stable"), ("saddle", "saddles"), ("source", "sources")]
    words.append(("slow point", "slow points"))
    assert len(pairs) == 4, counts[1]
    expected = [w[n != "1"] for w, (n, _) in zip(words, pairs, strict=True)]
    assert [noun for _, noun in pairs] == expected
