"""A run's one seed, and the seed of each generator derived from it.

``seed`` itself seeds the weights (``torch.manual_seed``) and the training batches; each other
generator gets ``seed + OFFSETS[name]`` modulo 2⁶⁴, so the streams differ and a checkpoint can
restore each. One draw is not a run's: the Lyapunov probe starts its QR from a frame seeded by
the step number, the same for every run seed at that step.
"""

from __future__ import annotations

__all__ = ["OFFSETS", "SEED_LIMIT", "derived_seed"]

SEED_LIMIT = 2**64  # torch's generators take seeds in [0, 2⁶⁴)

OFFSETS = {
    "probes": 1,  # the Jacobians the spectra probe samples
    "cuts": 2,  # random BPTT truncation points
    "evals": 3,  # the validation batches
    "split": 4,  # the train/validation split of a labelled text folder
    "pre_floss": 5,  # the batches of pre-flossing updates
    "floss_frame": 6,  # the fixed frame Q_0 of gradient flossing
}


def derived_seed(seed: int, stream: str) -> int:
    """Return the seed of the run's generator named ``stream`` (a key of ``OFFSETS``)."""
    return (seed + OFFSETS[stream]) % SEED_LIMIT
