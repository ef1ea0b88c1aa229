"""Click options for every run setting, defined once from ``config.FIELDS``.

``--hidden-size 64`` sets ``model.hidden_size``; the flag is the key's last part (``--name``
for the task's name is ``--task``: :func:`rnnprobe.training.config.flag_name`). A setting's
flag, type, choices and help come from its config field: ``rnnprobe train`` takes each flag
once, ``rnnprobe study`` takes any flag several times and sweeps over the values, and
``rnnprobe bench`` takes the flags of the settings it shares with a run (:func:`setting_option`)
with defaults of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from rnnprobe.training.config import FIELDS, SCHEDULES, field_type, flag_name, setting_choices

__all__ = [
    "flag_name",
    "param_name",
    "pop_settings",
    "setting_option",
    "setting_options",
    "threads_option",
]

Decorator = Callable[[Callable], Callable]


def param_name(key: str) -> str:
    """Return the function argument that ``setting_options`` gives setting ``key``."""
    return "setting__" + key.replace(".", "__")


def _option(key: str, param: str, **attrs: Any) -> Decorator:
    """Return the ``--flag`` of setting ``key`` with its type and choices, as ``param``."""
    choices = setting_choices(key)
    kind = field_type(key)
    click_type: Any = click.BOOL if kind is bool else click.Choice(choices) if choices else kind
    metavar = "SCHEDULE" if key in SCHEDULES else None
    return click.option(f"--{flag_name(key)}", param, type=click_type, metavar=metavar, **attrs)


def setting_options(*, multiple: bool) -> Decorator:
    """Return a decorator adding one ``--flag`` per setting (repeatable when ``multiple``).

    A flag not given is left out of :func:`pop_settings`' result: the run's default holds.
    """

    def decorate(command: Callable) -> Callable:
        for key, f in reversed(FIELDS.items()):
            command = _option(
                key,
                param_name(key),
                multiple=multiple,
                default=() if multiple else None,
                help=f"{f.metadata.get('help', '')} [{key}, default: {f.default}]",
            )(command)
        return command

    return decorate


def setting_option(
    key: str,
    param: str | None = None,
    *,
    default: Any,
    multiple: bool = False,
    help: str | None = None,
) -> Decorator:
    """Return the ``--flag`` of setting ``key`` for a command with its own ``default``.

    Flag, type, choices and help are the setting's (``help`` replaces the help where the
    command reads the setting differently); ``param`` names the function argument
    [default: the flag's, ``hidden_size`` for ``--hidden-size``].
    """
    return _option(
        key,
        param or flag_name(key).replace("-", "_"),
        multiple=multiple,
        default=default,
        show_default=True,
        help=help if help is not None else FIELDS[key].metadata.get("help", ""),
    )


def threads_option(default: str) -> Decorator:
    """Return ``--threads``: torch's CPU threads, ``default`` saying what happens without it."""
    return click.option(
        "--threads", type=int, default=None, help=f"torch CPU threads [default: {default}]."
    )


def pop_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the setting options from ``kwargs``; return ``{key: value}`` of those given."""
    given = {}
    for key in FIELDS:
        value = kwargs.pop(param_name(key), None)
        if value not in (None, ()):
            given[key] = value
    return given
