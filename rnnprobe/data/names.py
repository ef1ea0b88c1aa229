"""The names the data layer accepts: tasks (built-in, then registered from Python),
tokenisation levels, character sets and LM batch sampling.

Torch-free, so the command line lists and checks them without loading torch; the modules
that implement them (``corpus``, ``tasks``) take their lists from here, and
:func:`rnnprobe.data.tasks.register_task` adds a task name.
"""

from __future__ import annotations

__all__ = ["BUILT_IN_TASKS", "CHARSETS", "LEVELS", "SAMPLINGS", "add_task_name", "task_names"]

BUILT_IN_TASKS = ("lm", "copy", "adding", "recall", "classify")
LEVELS = ("char", "word")  # tokenisation
CHARSETS = ("all", "ascii", "letters-space")  # character filters (corpus.preprocess_text)
SAMPLINGS = ("random", "sequential")  # LM batches: random windows or carried-on streams
_registered: list[str] = []


def task_names() -> tuple[str, ...]:
    """Return the built-in task names, then the registered ones in registration order."""
    return (*BUILT_IN_TASKS, *_registered)


def add_task_name(name: str) -> None:
    """Accept ``name`` as a task from now on (a registered task's name)."""
    if name not in task_names():
        _registered.append(name)
