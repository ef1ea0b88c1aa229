"""The ``rnnprobe`` command line: thin click commands over the library.

The group and every command report errors through one handler, :mod:`rnnprobe.cli.command`.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from rnnprobe.cli.command import RnnprobeGroup, report_error
from rnnprobe.cli.options import pop_settings, setting_option, setting_options, threads_option
from rnnprobe.errors import RnnprobeError, check_count
from rnnprobe.training.config import SCHEDULE_HELP

__all__ = ["main", "report_error"]


@click.group(cls=RnnprobeGroup)
@click.version_option(package_name="rnnprobe")
def main() -> None:
    """See, measure and compare vanishing and exploding gradients in recurrent networks."""


@main.command(
    epilog="Example: rnnprobe bench --seq-len 32 --seq-len 128 --threads 2",
)
@setting_option(
    "task.seq_len",
    "seq_lens",
    multiple=True,
    default=(32, 128),
    help="time steps T per sequence (repeat for several)",
)
@setting_option("model.hidden_size", default=256)
@setting_option("model.layers", default=2)
@setting_option("train.batch_size", default=32)
@click.option(
    "--vocab-size", type=int, default=96, show_default=True, help="Tokens, padding included."
)
@setting_option("model.embedding_dim", default=64)
@setting_option("model.nonlinearity", default="tanh")
@click.option("--repeats", type=int, default=30, show_default=True, help="Timed step pairs.")
@threads_option("torch's, one per core")
@click.option("--no-record", is_flag=True, help="Time the instrumented model without capture.")
@click.option(
    "--suite",
    type=click.Choice(["core", "probes", "train", "all", "busy"]),
    default="core",
    show_default=True,
    help="core: one step vs nn.RNN and the GEMM floor; probes: the default probe schedule "
    "over 200 steps, and each probe's cost per firing; train: rnnprobe train's tokens/s with "
    "probes on and off (two runs taking turns, 3 rounds); all: those three; busy: the README "
    "copy example beside one CPU-bound process per core, default threads vs --threads.",
)
@setting_option("device", default="auto")
def bench(
    seq_lens: tuple[int, ...],
    hidden_size: int,
    layers: int,
    batch_size: int,
    vocab_size: int,
    embedding_dim: int,
    nonlinearity: str,
    repeats: int,
    threads: int | None,
    no_record: bool,
    suite: str,
    device: str,
) -> None:
    """Time a training step of rnnprobe's model against torch.nn.RNN; print the ratios."""
    for seq_len in seq_lens:
        check_count(seq_len, "--seq-len")
    check_count(repeats, "--repeats")
    check_count(hidden_size, "--hidden-size")
    check_count(layers, "--layers")
    check_count(batch_size, "--batch-size")
    check_count(embedding_dim, "--embedding-dim")
    check_count(vocab_size, "--vocab-size", 2)  # id 0 is padding: at least one real token
    if threads is not None:
        check_count(threads, "--threads")
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
    from rnnprobe.core import fused
    from rnnprobe.training import graphs

    scans = "fused (Triton)" if fused.wanted(torch.empty(0, device=chosen)) else "eager"
    replay = (
        ", passes replayed as a CUDA graph" if graphs.wanted() and chosen.type == "cuda" else ""
    )
    click.echo(
        f"device {chosen}, {torch.get_num_threads()} threads; vocab {vocab_size}, embedding "
        f"{embedding_dim}, hidden {hidden_size}, {layers} layers, batch {batch_size}, "
        f"{nonlinearity}, {'recording adjoints' if not no_record else 'no capture'}; "
        f"{scans} scans{replay}"
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
    "-o",
    "--out",
    type=click.Path(file_okay=False),
    help="Run directory [default: runs/train/<run id>].",
)
@click.option("--resume", "resume_dir", type=click.Path(), help="Continue the run in this dir.")
@click.option(
    "--set", "assignments", multiple=True, metavar="KEY=VALUE", help="e.g. train.lr=0.01."
)
@threads_option("OMP_NUM_THREADS, else the cores not busy at the start")
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="A progress bar on stderr."
)
def train(
    out: str | None,
    resume_dir: str | None,
    assignments: tuple[str, ...],
    threads: int | None,
    progress: bool,
    **kwargs: Any,
) -> None:
    """Train one RNN with every probe recording; write its records to a run directory."""
    from rnnprobe.core.threads import default_threads, snapshot
    from rnnprobe.training.config import build_config, flag_name, parse_assignment

    started = snapshot()  # with the one after torch's import: the cores other work leaves free
    if threads is not None:
        check_count(threads, "--threads")
    settings = pop_settings(kwargs)
    for key, value in (parse_assignment(text) for text in assignments):
        if key in settings and settings[key] != value:
            raise RnnprobeError(
                f"{key} is given twice: --{flag_name(key)} {settings[key]} and --set {key}={value}"
            )
        settings[key] = value
    if resume_dir is not None and settings:
        raise RnnprobeError("--resume continues a run as configured; drop the other options")
    config = None if resume_dir is not None else build_config(settings)  # usage errors: no torch
    import torch

    from rnnprobe.records.index import read_status
    from rnnprobe.report.terminal import format_run_summary
    from rnnprobe.training.callbacks import ResumeHint
    from rnnprobe.training.loop import resume_config, train_run

    threads = threads if threads is not None else default_threads(started, snapshot())
    if threads is not None:
        torch.set_num_threads(threads)
    run_dir: str
    finished = False  # a resumed run that had already finished: nothing is trained
    if resume_dir is not None:
        config, run_dir = resume_config(resume_dir), resume_dir
        finished = read_status(run_dir).get("status") == "done"  # (diverged: said below)
    else:
        assert config is not None  # built above
        run_dir = out or f"runs/train/{config.run_id()}"
    hint = [ResumeHint()] if progress else []  # names the directory once the run has started
    try:
        result = train_run(
            config, run_dir, resume=resume_dir is not None, progress=progress, callbacks=hint
        )
    except KeyboardInterrupt:
        if Path(run_dir, "config.json").exists():
            click.echo(
                f"rnnprobe: interrupted; continue with: rnnprobe train --resume {run_dir}", err=True
            )
            sys.exit(130)
        raise
    if finished:
        click.echo(f"rnnprobe: {run_dir} had already finished: nothing to train", err=True)
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
def sample(run_dir: str, prime: str, length: int, temperature: float, seed: int) -> None:
    """Generate text from a language-model run's last checkpoint, printed as it is drawn."""
    from rnnprobe.training.sampling import sample_pieces

    pieces = sample_pieces(run_dir, prime, length=length, temperature=temperature, seed=seed)
    for piece in pieces:  # the prime, then each token: click.echo flushes every one
        click.echo(piece, nl=False)
    click.echo()  # Ctrl-C: what was printed stays; 'rnnprobe: interrupted', exit 130


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
