"""What the everyday commands print: the same words and numbers as the report, and what next."""

from __future__ import annotations

from click.testing import CliRunner

from rnnprobe.analysis.diagnosis import analyse_study
from rnnprobe.cli.main import main
from rnnprobe.cli.study import format_summary
from rnnprobe.report.pages import display_table
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
