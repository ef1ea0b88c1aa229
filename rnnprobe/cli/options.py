"""Click options for every run setting, defined once from ``config.FIELDS``.

``--hidden-size 64`` sets ``model.hidden_size``; the flag is the key's last part (``--name``
for the task's name is ``--task``). ``rnnprobe train`` takes each flag once, ``rnnprobe study``
takes any flag several times and sweeps over the values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from rnnprobe.training.config import FIELDS, SCHEDULES, field_type, setting_choices

_FLAG_NAMES = {"task.name": "task", "probes.warmup": "lyapunov-warmup"}


def flag_name(key: str) -> str:
    """Return the command-line flag (without dashes) of setting ``key``."""
    return _FLAG_NAMES.get(key, key.rpartition(".")[2].replace("_", "-"))


def param_name(key: str) -> str:
    return "setting__" + key.replace(".", "__")


def setting_options(*, multiple: bool) -> Callable[[Callable], Callable]:
    """Return a decorator adding one ``--flag`` per setting (repeatable when ``multiple``)."""

    def decorate(command: Callable) -> Callable:
        for key, f in reversed(FIELDS.items()):
            kind = field_type(key)
            choices = setting_choices(key)
            click_type: Any = click.Choice(choices) if choices else kind
            if kind is bool:
                click_type = click.BOOL
            help_text = f"{f.metadata.get('help', '')} [{key}, default: {f.default}]"
            command = click.option(
                f"--{flag_name(key)}",
                param_name(key),
                type=click_type,
                multiple=multiple,
                default=() if multiple else None,
                metavar="SCHEDULE" if key in SCHEDULES else None,
                help=help_text,
            )(command)
        return command

    return decorate


def pop_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the setting options from ``kwargs``; return ``{key: value}`` of those given."""
    given = {}
    for key in FIELDS:
        value = kwargs.pop(param_name(key), None)
        if value not in (None, ()):
            given[key] = value
    return given
