"""The ``rnnprobe`` command line: thin click commands over the library."""

from __future__ import annotations

import sys
from dataclasses import replace

import click
import torch

from rnnprobe.errors import RnnprobeError

DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when present), cpu, cuda or cuda:N.",
)


class RnnprobeGroup(click.Group):
    """Turns a user mistake (RnnprobeError) into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RnnprobeError as error:
            click.echo(f"rnnprobe: error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("rnnprobe: interrupted", err=True)
            sys.exit(130)


@click.group(cls=RnnprobeGroup)
@click.version_option(package_name="rnnprobe")
def main() -> None:
    """See, measure and compare vanishing and exploding gradients in recurrent networks."""


@main.command(
    epilog="Example: rnnprobe bench --seq-len 32 --seq-len 128 --threads 2",
)
@click.option("--seq-len", "seq_lens", type=int, multiple=True, default=(32, 128), show_default=True)
@click.option("--hidden-size", type=int, default=256, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--vocab-size", type=int, default=96, show_default=True)
@click.option("--embedding-dim", type=int, default=64, show_default=True)
@click.option("--nonlinearity", type=click.Choice(["tanh", "relu"]), default="tanh")
@click.option("--repeats", type=int, default=30, show_default=True, help="Timed step pairs.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
@click.option("--no-record", is_flag=True, help="Time the instrumented model without capture.")
@DEVICE
def bench(seq_lens, hidden_size, layers, batch_size, vocab_size, embedding_dim, nonlinearity,
          repeats, threads, no_record, device) -> None:
    """Time a training step of rnnprobe's model against torch.nn.RNN; print the ratios."""
    from rnnprobe.bench import BenchConfig, format_result, run_bench
    from rnnprobe.device import resolve_device

    chosen = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    for name, value in (("--seq-len", min(seq_lens)), ("--repeats", repeats)):
        if value < 1:
            raise RnnprobeError(f"{name} must be at least 1, got {value}")
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
        click.echo(format_result(run_bench(replace(base, seq_len=seq_len), chosen)))


if __name__ == "__main__":
    main()
