"""The exception types for problems a user can act on, and their one-line rendering.

``RnnprobeError`` is a mistake in the user's input (an option, a path, a spec): exit 2.
``RecordError`` is a damaged or unusable record on disk that could not be recovered: exit 1.
:func:`describe` turns any exception into the line and exit status the CLI shows.

:func:`check_count` and :func:`check_choice` check a value the user gave, in one message
style for every option, setting and argument:

- ``"{what} must be at least {minimum}, got {value}"``: a whole number below its least value;
- ``"{what} must be an integer, got {value!r}"``: not a whole number (a bool, a float, a str);
- ``"{what} must be one of a, b, c, got {value!r}"``: a value outside its choices.

``what`` names the thing as the user wrote it: the flag (``--jobs``), the setting key
(``train.optimizer``) or the argument (``batch_size``). This module imports no torch or pandas.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

__all__ = ["RecordError", "RnnprobeError", "check_choice", "check_count", "describe"]


class RnnprobeError(ValueError):
    """A problem with the user's input (a path, an option, a shape), stated in one line."""

    exit_code = 2


class RecordError(RnnprobeError):
    """A run's or a study's files are damaged beyond what can be recovered; names the path."""

    exit_code = 1


def check_count(value: object, what: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer of at least ``minimum``, else raise RnnprobeError.

    A bool is not an integer here (``True`` is no count). The message names ``what``: for an
    integer below ``minimum``, ``"--jobs must be at least 1, got 0"``; for anything else,
    ``"batch_size must be an integer, got 2.5"``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise RnnprobeError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise RnnprobeError(f"{what} must be at least {minimum}, got {value}")
    return value


def check_choice(value: object, choices: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise RnnprobeError listing them.

    The message names ``what``: ``"--executor must be one of local, ray, got 'slurm'"``.
    """
    allowed = tuple(choices)
    if not isinstance(value, str) or value not in allowed:
        raise RnnprobeError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return value


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


def shorten(text: str, limit: int = 120) -> str:
    """Return ``text`` on one line, cut at a word boundary to at most ``limit`` characters
    (then ending "…")."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    return line[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:(") + "…"


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
