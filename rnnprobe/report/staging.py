"""A report directory that holds a whole report or what it held before, never half of one.

A report's files are written into a staging folder inside the output directory
(``OUT/.report.tmp-…``; readers skip names holding ``.tmp-``) and moved to their names with
``os.replace`` only once every page and figure has been rendered: the figures first, then
``summary.csv``, ``README.md`` and ``index.html`` last. Each move is atomic, so a file under a
report's name is always whole.

When rendering stops early (Ctrl-C, an error), the staging folder is removed, and the output
directory too when this call created it and nothing else has been put there: an interrupted
first report leaves no empty or partial directory that looks finished, and an interrupted
re-render leaves the previous report's files as they were. Nothing outside the output
directory is removed (a parent folder that ``-o`` created stays, empty), nor any file this call
did not write. A staging folder names its writer (``.owner.json``: pid, host, process start);
one whose writer has died (kill -9, a crash) is removed by the next report into that directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnprobe.records.index import TMP_MARK
from rnnprobe.records.lock import process_identity, writer_alive

__all__ = ["staged_output"]

LAST = ("summary.csv", "README.md", "index.html")  # moved in after the figures, in this order
PREFIX = f".report{TMP_MARK}"
OWNER = ".owner.json"  # in a staging folder: who writes it (never moved into the output)


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a staging folder to write ``out``'s files into; move them into ``out`` at the end.

    Creates ``out`` (and its parents) when missing. On an exception, including
    ``KeyboardInterrupt``, undoes what this call did to ``out`` (module docstring) and re-raises.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=PREFIX))
    (staging / OWNER).write_text(json.dumps(process_identity()))
    added: list[Path] = []  # files moved into out under names it did not hold before
    try:
        yield staging
        names = [n for n in os.listdir(staging) if n != OWNER]
        names.sort(key=lambda n: (LAST.index(n) if n in LAST else -1, n))
        for name in names:
            target = out / name
            new = not target.exists()
            os.replace(staging / name, target)
            if new:
                added.append(target)
    except BaseException:
        for target in added:
            target.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # only when empty: what others put there stays
                out.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _remove_abandoned(out: Path) -> None:
    """Remove the staging folders in ``out`` whose writer has died on this host."""
    for folder in out.glob(f"{PREFIX}*"):
        try:
            owner = json.loads((folder / OWNER).read_text())
        except (OSError, ValueError):
            continue  # being set up this moment, or not ours: leave it
        if isinstance(owner, dict) and writer_alive(owner) is False:
            shutil.rmtree(folder, ignore_errors=True)
