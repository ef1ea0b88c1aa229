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
did not write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnprobe.records.index import TMP_MARK

__all__ = ["staged_output"]

LAST = ("summary.csv", "README.md", "index.html")  # moved in after the figures, in this order


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a staging folder to write ``out``'s files into; move them into ``out`` at the end.

    Creates ``out`` (and its parents) when missing. On an exception, including
    ``KeyboardInterrupt``, undoes what this call did to ``out`` (module docstring) and re-raises.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".report{TMP_MARK}"))
    added: list[Path] = []  # files moved into out under names it did not hold before
    try:
        yield staging
        names = sorted(os.listdir(staging), key=lambda n: (LAST.index(n) if n in LAST else -1, n))
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
