"""A staging folder left by a report that was killed is removed by the next report there."""

from __future__ import annotations

import json
import subprocess
import sys

from rnnprobe.records.lock import process_identity
from rnnprobe.report.staging import OWNER, PREFIX, staged_output

IDENTITY = (
    "import json; from rnnprobe.records.lock import process_identity as p; print(json.dumps(p()))"
)


def staging_folder(out, name: str, owner: dict | None):
    folder = out / f"{PREFIX}{name}"
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("half a page")
    if owner is not None:
        (folder / OWNER).write_text(json.dumps(owner))
    return folder


def test_a_dead_writers_staging_folder_goes_and_the_others_stay(tmp_path):
    done = subprocess.run([sys.executable, "-c", IDENTITY], capture_output=True, check=True)
    dead = staging_folder(tmp_path, "dead", json.loads(done.stdout))  # that process has ended
    alive = staging_folder(tmp_path, "alive", process_identity())  # a report running now
    unknown = staging_folder(tmp_path, "unknown", None)  # no owner file yet: being set up
    with staged_output(tmp_path) as staging:
        (staging / "README.md").write_text("# report")
    assert not dead.exists()  # HEAD: kill -9 left it there for good
    assert alive.is_dir() and unknown.is_dir()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["README.md", alive.name, unknown.name])  # no owner file moved in
