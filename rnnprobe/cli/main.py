"""The ``rnnprobe`` command line: thin click commands over the library."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from rnnprobe.cli.options import pop_settings, setting_options
from rnnprobe.errors import RnnprobeError, describe
from rnnprobe.training.config import SCHEDULE_HELP

# torch's OpenMP threads wait for each other by spinning; when other work holds the cores, a
# spinning waiter burns the time slice of the thread it waits for, and a run slows many times
# over (rnnprobe bench --suite busy). Waiters that sleep cost nothing measurable when the machine
# is idle. Set before any command imports torch, so OpenMP reads it; inherited by workers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when present), cpu, cuda or cuda:N.",
)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class RnnprobeGroup(click.Group):
    """Turns every error into one line on stderr: exit 2 for a user mistake, 1 for a failure."""

    def main(self, *args, **kwargs):
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.Abort:
            click.echo("rnnprobe: interrupted", err=True)
            sys.exit(130)
        except _NO_ARGS_IS_HELP as error:
            click.echo(error.format_message())
            sys.exit(0)
        except click.ClickException as error:  # usage errors: unknown option, bad choice
            ctx = getattr(error, "ctx", None)
            command = ctx.command_path if ctx is not None else "rnnprobe"
            click.echo(f"{command}: error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("rnnprobe: interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # one line, never a traceback (unless asked for)
            sys.exit(report_error(error))
        sys.exit(result if isinstance(result, int) else 0)


def report_error(error: Exception) -> int:
    """Print ``error`` as one line on stderr; return its exit status (2 usage, 1 failure)."""
    if os.environ.get("RNNPROBE_TRACEBACK") and not isinstance(error, RnnprobeError):
        raise error
    line, code = describe(error)
    click.echo(f"rnnprobe: error: {line}", err=True)
    return code


@click.group(cls=RnnprobeGroup)
@click.version_option(package_name="rnnprobe")
def main() -> None:
    """See, measure and compare vanishing and exploding gradients in recurrent networks."""


@main.command(
    epilog="Example: rnnprobe bench --seq-len 32 --seq-len 128 --threads 2",
)
@click.option(
    "--seq-len",
    "seq_lens",
    type=int,
    multiple=True,
    default=(32, 128),
    show_default=True,
    help="Time steps T per sequence (repeat for several).",
)
@click.option("--hidden-size", type=int, default=256, show_default=True, help="Units per layer.")
@click.option("--layers", type=int, default=2, show_default=True, help="Stacked RNN layers.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Sequences per step.")
@click.option(
    "--vocab-size", type=int, default=96, show_default=True, help="Tokens, padding included."
)
@click.option("--embedding-dim", type=int, default=64, show_default=True, help="Embedding units.")
@click.option(
    "--nonlinearity", type=click.Choice(["tanh", "relu"]), default="tanh", show_default=True
)
@click.option("--repeats", type=int, default=30, show_default=True, help="Timed step pairs.")
@click.option(
    "--threads", type=int, default=None, help="torch CPU threads [default: torch's, one per core]."
)
@click.option("--no-record", is_flag=True, help="Time the instrumented model without capture.")
@click.option(
    "--suite",
    type=click.Choice(["core", "probes", "train", "all", "busy"]),
    default="core",
    show_default=True,
    help="core: one step vs nn.RNN; probes: the default probe schedule over 200 steps; "
    "train: rnnprobe train's tokens/s with probes on and off; all: those three; busy: the "
    "README copy example beside one CPU-bound process per core, default threads vs --threads.",
)
@DEVICE
def bench(
    seq_lens,
    hidden_size,
    layers,
    batch_size,
    vocab_size,
    embedding_dim,
    nonlinearity,
    repeats,
    threads,
    no_record,
    suite,
    device,
) -> None:
    """Time a training step of rnnprobe's model against torch.nn.RNN; print the ratios."""
    sizes = {
        "--seq-len": min(seq_lens),
        "--repeats": repeats,
        "--hidden-size": hidden_size,
        "--layers": layers,
        "--batch-size": batch_size,
        "--embedding-dim": embedding_dim,
        "--vocab-size": vocab_size - 1,  # id 0 is padding: at least one real token
        "--threads": 1 if threads is None else threads,
    }
    for name, value in sizes.items():
        if value < 1:
            shown = value + 1 if name == "--vocab-size" else value
            least = 2 if name == "--vocab-size" else 1
            raise RnnprobeError(f"{name} must be at least {least}, got {shown}")
    if suite == "busy":
        from rnnprobe.bench.threads import run_busy_threads

        click.echo(run_busy_threads())
        return
    import torch

    from rnnprobe.bench.step import (
        BenchConfig,
        format_result,
        run_bench,
        run_probe_overhead,
        run_train_throughput,
    )
    from rnnprobe.core.device import resolve_device
    from rnnprobe.training.memory import check_fits, estimate_training

    chosen = resolve_device(device)
    for seq_len in seq_lens:
        estimate = estimate_training(
            steps=seq_len,
            batch_size=batch_size,
            hidden_size=hidden_size,
            layers=layers,
            input_size=vocab_size,
            embedding_dim=embedding_dim,
            output_size=vocab_size,
            per_step_outputs=True,
            element_size=4,
        )
        check_fits(estimate, chosen)
    if threads is not None:
        torch.set_num_threads(threads)
    base = BenchConfig(
        vocab_size=vocab_size,
        embedding_dim=embedding_dim,
        hidden_size=hidden_size,
        num_layers=layers,
        batch_size=batch_size,
        nonlinearity=nonlinearity,
        repeats=repeats,
        record=not no_record,
    )
    click.echo(
        f"device {chosen}, {torch.get_num_threads()} threads; vocab {vocab_size}, embedding "
        f"{embedding_dim}, hidden {hidden_size}, {layers} layers, batch {batch_size}, "
        f"{nonlinearity}, {'recording adjoints' if not no_record else 'no capture'}"
    )
    for seq_len in seq_lens:
        config = replace(base, seq_len=seq_len)
        if suite in ("core", "all"):
            click.echo(format_result(run_bench(config, chosen)))
        if suite in ("probes", "all"):
            click.echo(run_probe_overhead(config, chosen))
    if suite in ("train", "all"):
        click.echo(run_train_throughput(str(chosen)))


@main.command(
    epilog=f"""Examples:

\b
  rnnprobe train --task copy --seq-len 5 --nonlinearity relu --init identity --steps 1500
  rnnprobe train --task lm --hidden-size 256 --seq-len 64 --batch-size 64 --lr 3e-3 \\
      --clip norm --steps 1000          # Python's standard library as the corpus
  rnnprobe train --task lm --corpus my_text.txt --level word
  rnnprobe train --resume runs/train/3f2a9c01de

{SCHEDULE_HELP}""",
)
@setting_options(multiple=False)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Run directory [default: runs/train/<run id>]."
)
@click.option("--resume", "resume_dir", type=click.Path(), help="Continue the run in this dir.")
@click.option(
    "--set", "assignments", multiple=True, metavar="KEY=VALUE", help="e.g. train.lr=0.01."
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="torch CPU threads [default: OMP_NUM_THREADS, else the cores not busy at the start].",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="A progress bar on stderr."
)
def train(out, resume_dir, assignments, threads, progress, **kwargs) -> None:
    """Train one RNN with every probe recording; write its records to a run directory."""
    from rnnprobe.core.threads import default_threads, snapshot
    from rnnprobe.training.config import build_config, parse_assignment

    started = snapshot()  # with the one after torch's import: the cores other work leaves free
    settings = pop_settings(kwargs)
    settings.update(parse_assignment(text) for text in assignments)
    if resume_dir is not None and settings:
        raise RnnprobeError("--resume continues a run as configured; drop the other options")
    config = None if resume_dir is not None else build_config(settings)  # usage errors: no torch
    import torch

    from rnnprobe.report.terminal import format_run_summary
    from rnnprobe.training.loop import resume_config, train_run

    threads = threads if threads is not None else default_threads(started, snapshot())
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    if config is None:
        config = resume_config(resume_dir)
        run_dir = resume_dir
    else:
        run_dir = out or f"runs/train/{config.run_id()}"
    try:
        result = train_run(config, run_dir, resume=resume_dir is not None, progress=progress)
    except KeyboardInterrupt:
        if Path(run_dir, "config.json").exists():
            click.echo(
                f"rnnprobe: interrupted; continue with: rnnprobe train --resume {run_dir}", err=True
            )
            sys.exit(130)
        raise
    click.echo(format_run_summary(result.run_dir))
    if result.status != "done":
        click.echo(f"rnnprobe: run {result.status}: {result.message}", err=True)
        sys.exit(1)


@main.command(
    epilog="""Examples:

\b
  rnnprobe sample runs/train/3f2a9c01de --prime "def " --length 200
  rnnprobe sample runs/train/3f2a9c01de --temperature 0.5 --seed 7""",
)
@click.argument("run_dir", type=click.Path())
@click.option("--prime", default="\n", show_default="a newline", help="Text the sample continues.")
@click.option(
    "--length",
    type=int,
    default=400,
    show_default=True,
    help="Tokens (characters or words) to add.",
)
@click.option(
    "--temperature",
    type=float,
    default=0.8,
    show_default=True,
    help="Divides the logits: below 1 sharper and more repetitive, above 1 more random.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the draws, in [0, 2⁶⁴)."
)
def sample(run_dir, prime, length, temperature, seed) -> None:
    """Generate text from a language-model run's last checkpoint."""
    from rnnprobe.training.sampling import sample_text

    click.echo(sample_text(run_dir, prime, length=length, temperature=temperature, seed=seed))


def _register_commands() -> None:
    from rnnprobe.cli.export import export
    from rnnprobe.cli.fixed_points import fixed_points
    from rnnprobe.cli.replay import replay
    from rnnprobe.cli.report import report
    from rnnprobe.cli.study import study
    from rnnprobe.cli.watch import watch

    main.add_command(study)
    main.add_command(report)
    main.add_command(watch)
    main.add_command(export)
    main.add_command(fixed_points)
    main.add_command(replay)


_register_commands()

if __name__ == "__main__":
    main()
