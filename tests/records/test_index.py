"""What a path is: a run, a study, or neither; one message for every command that asks."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rnnprobe.cli.main import main
from rnnprobe.records.index import run_or_study


def test_a_folder_of_runs_is_named_with_the_runs_it_holds(tmp_path):
    folder = tmp_path / "train"  # as rnnprobe train fills runs/train
    for name in ("b", "a", "c", "d"):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text("{}")
    (folder / "notes").mkdir()
    expected = (
        f"rnnprobe: error: {folder} is neither a run (no config.json) nor a study (no "
        f"study.json or runs/); it holds 4 runs: give one ({folder / 'a'}, {folder / 'b'}, "
        f"{folder / 'c'}, …)\n"
    )
    for args in (["watch", "--once"], ["report"], ["export", "--tensorboard", "tb"]):
        done = CliRunner().invoke(main, [args[0], str(folder), *args[1:]])
        assert (done.exit_code, done.stderr) == (2, expected), args  # HEAD: three messages
    assert run_or_study(folder / "a") == "run"


def test_missing_and_empty_paths_say_what_they_are(tmp_path):
    with pytest.raises(Exception, match="no such file or directory; give a run or a study"):
        run_or_study(tmp_path / "absent")
    (tmp_path / "runs").mkdir()
    assert run_or_study(tmp_path) == "study"
