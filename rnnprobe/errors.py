"""The exception types for problems a user can act on, and their one-line rendering.

``RnnprobeError`` is a mistake in the user's input (an option, a path, a spec): exit 2.
``RecordError`` is a damaged or unusable record on disk that could not be recovered: exit 1.
:func:`describe` turns any exception into the line and exit status the CLI shows.
"""

from __future__ import annotations

import errno

__all__ = ["RecordError", "RnnprobeError", "describe"]


class RnnprobeError(ValueError):
    """A problem with the user's input (a path, an option, a shape), stated in one line."""

    exit_code = 2


class RecordError(RnnprobeError):
    """A run's or a study's files are damaged beyond what can be recovered; names the path."""

    exit_code = 1


# Filesystem errors a user fixes by choosing another path: usage errors, like a bad option.
_PATH_ERRORS = (
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENAMETOOLONG,
)


def describe(error: BaseException) -> tuple[str, int]:
    """Return ``(one line, exit status)`` for ``error`` as the CLI reports it.

    Unforeseen exceptions are reported as an internal error (a bug to report), still on one
    line; ``RNNPROBE_TRACEBACK=1`` makes the CLI show the traceback instead.
    """
    if isinstance(error, RnnprobeError):
        return _one_line(str(error)), error.exit_code
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        first = _one_line(str(error)).split(". ")[0]
        return f"out of memory: {first}; use a smaller model, batch or sequence", 1
    if isinstance(error, OSError):
        where = error.filename if error.filename is not None else "a file"
        reason = error.strerror or type(error).__name__
        code = 2 if error.errno in _PATH_ERRORS else 1
        return f"cannot use {where}: {reason}", code
    text = _one_line(str(error)) or "no message"
    return (
        f"internal error: {type(error).__name__}: {text} (a bug in rnnprobe; "
        "RNNPROBE_TRACEBACK=1 shows the traceback)",
        1,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
