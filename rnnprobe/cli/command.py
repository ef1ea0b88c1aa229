"""The command line's one error handler, shared by the group and every command.

``rnnprobe <command>`` runs through :class:`RnnprobeGroup`; ``python -m rnnprobe.cli.<command>``
(and ``CliRunner().invoke(command, …)``) runs one :class:`RnnprobeCommand` alone. Both take
their ``main`` from :class:`RnnprobeCommand`, so either way an error is one line on stderr:

- exit 2 for a usage error (an unknown option, a bad choice) or a user's mistake
  (``RnnprobeError``, a path that cannot be used), as ``<command path>: error: …`` for the
  former and ``rnnprobe: error: …`` for the latter (see :func:`rnnprobe.errors.describe`);
- exit 1 for a failure (damaged records, an unforeseen exception: an internal error);
- exit 130, ``rnnprobe: interrupted``, for Ctrl-C.

Commands raise; none catches an exception only to print it. ``RNNPROBE_TRACEBACK=1`` shows
the traceback of an unforeseen exception instead of its line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from rnnprobe.errors import RnnprobeError, describe

__all__ = ["RnnprobeCommand", "RnnprobeGroup", "report_error"]

# torch's OpenMP threads wait for each other by spinning; when other work holds the cores, a
# spinning waiter burns the time slice of the thread it waits for, and a run slows many times
# over (rnnprobe bench --suite busy). Waiters that sleep at once pay a wake-up in every parallel
# region instead, and a scan runs one small product per step: so they spin a little first, about
# the gap between two steps' products (GNU OpenMP's spin count; 20,000 made an idle machine's
# steps 25-35 % faster than none, 2,000 or 200,000 less so: rnnprobe bench). Set before any
# command imports torch, so OpenMP reads them; inherited by workers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class RnnprobeCommand(click.Command):
    """A click command whose ``main`` turns every error into one line and an exit status."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command as a program: exit 0, or one line on stderr and exit 2, 1 or 130.

        ``standalone_mode=False`` leaves errors to the caller, as click does.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except (click.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            click.echo("rnnprobe: interrupted", err=True)
            sys.exit(130)
        except _NO_ARGS_IS_HELP as error:  # a bare group: its help, exit 0
            click.echo(error.format_message())
            sys.exit(0)
        except click.ClickException as error:  # usage errors: unknown option, bad choice
            ctx = getattr(error, "ctx", None)
            command = ctx.command_path if ctx is not None else "rnnprobe"
            click.echo(f"{command}: error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except Exception as error:  # one line, never a traceback (unless asked for)
            sys.exit(report_error(error))
        sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


class RnnprobeGroup(RnnprobeCommand, click.Group):
    """The ``rnnprobe`` group: its ``main`` and its commands' are :class:`RnnprobeCommand`'s."""

    command_class = RnnprobeCommand


def report_error(error: Exception) -> int:
    """Print ``error`` as one line on stderr; return its exit status (2 usage, 1 failure).

    With ``RNNPROBE_TRACEBACK`` set, an exception other than ``RnnprobeError`` is raised
    again instead, to show its traceback.
    """
    if os.environ.get("RNNPROBE_TRACEBACK", "0") != "0" and not isinstance(error, RnnprobeError):
        raise error
    line, code = describe(error)
    click.echo(f"rnnprobe: error: {line}", err=True)
    return code
