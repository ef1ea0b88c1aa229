"""The task names a run accepts: the built-in tasks, then those registered from Python.

Torch-free, so the command line lists and checks them without loading torch;
:func:`rnnprobe.data.tasks.register_task` adds a name here.
"""

from __future__ import annotations

__all__ = ["BUILT_IN_TASKS", "add_task_name", "task_names"]

BUILT_IN_TASKS = ("lm", "copy", "adding", "recall", "classify")
_registered: list[str] = []


def task_names() -> tuple[str, ...]:
    """Return the built-in task names, then the registered ones in registration order."""
    return (*BUILT_IN_TASKS, *_registered)


def add_task_name(name: str) -> None:
    """Accept ``name`` as a task from now on (a registered task's name)."""
    if name not in task_names():
        _registered.append(name)
