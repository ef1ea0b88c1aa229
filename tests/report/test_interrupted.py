"""A report cut short (Ctrl-C, an error) leaves its output as it was: no half report.

Figures are stubbed (``_render`` returns a few bytes) so that each test takes moments; the
interruption is raised where the figures are drawn or where the last page is rendered, after
the old code had already written index.html.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rnnprobe.cli.report import report
from rnnprobe.report import pages
from tests.support.records import write_run

FAKE_PNG = b"\x89PNG\r\n\x1a\nnew"
OLD = {
    "index.html": b"<p>old report</p>",
    "README.md": b"# old report",
    "summary.csv": b"run_id\nold\n",
    "run.png": b"\x89PNG\r\n\x1a\nold",
    "notes.txt": b"the user's own notes",
}


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def interrupt(monkeypatch, where: str, error: BaseException) -> None:
    """Stub the figures; raise ``error`` when drawing them or when writing README.md."""

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pages, "_render", lambda *args: (FAKE_PNG, []))
    if where == "figure":
        monkeypatch.setattr(pages, "_render", fail)
    else:
        monkeypatch.setattr(pages.Page, "markdown", fail)


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return [write_run(tmp_path / name, steps=6, tables=("task", "steps")) for name in "ab"]


@pytest.mark.parametrize("compare", [False, True], ids=["run", "comparison"])
@pytest.mark.parametrize("where", ["figure", "last page"])
def test_an_interrupted_first_report_leaves_no_output_directory(
    runs, tmp_path, monkeypatch, compare, where
):
    out = tmp_path / "reports" / "r"
    before = files(tmp_path)
    interrupt(monkeypatch, where, KeyboardInterrupt())
    result = CliRunner().invoke(report, [*map(str, runs[: 1 + compare]), "-o", str(out)])
    assert result.exit_code == 130, result.output
    assert result.output.split() == ["rnnprobe:", "interrupted"]  # after click's blank line
    assert not out.exists()  # the old code left index.html (or an empty directory) here
    assert files(tmp_path) == before  # nothing else removed or added


def test_an_interrupted_default_report_leaves_the_run_as_it_was(runs, monkeypatch):
    before = sorted(runs[0].rglob("*"))
    interrupt(monkeypatch, "figure", KeyboardInterrupt())
    assert CliRunner().invoke(report, [str(runs[0])]).exit_code == 130
    assert sorted(runs[0].rglob("*")) == before  # no empty RUN/report


@pytest.mark.parametrize(
    ("error", "code"), [(KeyboardInterrupt(), 130), (RuntimeError("broken"), 1)]
)
def test_an_interrupted_re_render_keeps_the_old_report_whole(
    runs, tmp_path, monkeypatch, error, code
):
    out = tmp_path / "out"
    out.mkdir()
    for name, data in OLD.items():
        (out / name).write_bytes(data)
    interrupt(monkeypatch, "last page", error)
    result = CliRunner().invoke(report, [str(runs[0]), "-o", str(out)])
    assert result.exit_code == code, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert files(out) == OLD  # no page, figure or temporary of the cut render; notes kept
    assert sorted(p.name for p in out.iterdir()) == sorted(OLD)

    monkeypatch.undo()
    monkeypatch.setattr(pages, "_render", lambda *args: (FAKE_PNG, []))
    assert CliRunner().invoke(report, [str(runs[0]), "-o", str(out)]).exit_code == 0
    rendered = files(out)
    assert sorted(rendered) == sorted(OLD)  # the same names, now the new report's
    assert rendered["run.png"] == FAKE_PNG and b"old report" not in rendered["index.html"]
    assert rendered["notes.txt"] == OLD["notes.txt"]
