"""The few lines ``rnnprobe train`` prints at the end of a run."""

from __future__ import annotations

from pathlib import Path

from rnnprobe.analysis import run_summary
from rnnprobe.store import load_run


def format_run_summary(run_dir: str | Path) -> str:
    """Return status, final loss against the task's baseline, gradient decay and the run dir."""
    summary = run_summary(load_run(run_dir))
    lines = [f"run {summary['status']} after {summary['steps']} steps: {run_dir}"]
    loss, baseline = summary["final_loss"], summary["baseline_loss"]
    lines.append(
        f"final training loss {loss:.4f} vs baseline {baseline:.4f} "
        f"(ratio {summary['loss_ratio']:.3f})"
    )
    if summary.get("final_valid_loss") == summary.get("final_valid_loss"):  # not NaN
        lines.append(f"validation loss {summary['final_valid_loss']:.4f}")
    decay, half_life = summary["decay_per_step"], summary["half_life"]
    if decay == decay:
        lines.append(
            f"gradient decay per step {decay:.3f} (half-life {half_life:.1f} steps; "
            f"sequence length {summary['seq_len']})"
        )
    return "\n".join(lines)
