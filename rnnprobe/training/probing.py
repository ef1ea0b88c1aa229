"""The probing of a training run: which probes fire at a step, and their rows.

The loop asks :meth:`Probing.firing` before a step (the capture records what the fired probes
need) and :func:`~rnnprobe.training.step.train_step` calls :meth:`Probing.record_step` after
its backward passes, before the update. Each probe's result knows its rows (``row_blocks``, the
schema in ``records.schema``); this class files them.

Adjoint records come from the BPTT capture (every backward pass of the step, each segment's
time offset added). Hidden-state statistics run on the captured layer outputs of the whole
batch (segments joined); Jacobian spectra, Lyapunov exponents and finite-time exponents
(``products``) on a sub-batch of them; W_hh's spectrum on the weights. All values stay on the
device until ``PendingRows.drain``.
"""

from __future__ import annotations

import numpy as np
import torch

from rnnprobe.core.capture import BackwardRecord
from rnnprobe.core.models import ElmanRNN
from rnnprobe.data.tasks import Batch
from rnnprobe.nonlinearity import derivative_from_output
from rnnprobe.probes._rows import RowBlock
from rnnprobe.probes.hidden_stats import hidden_state_stats
from rnnprobe.probes.jacobian import jacobian_spectrum, recurrent_weight_spectrum
from rnnprobe.probes.lyapunov import lyapunov_exponents
from rnnprobe.probes.mean_field import mean_field_from_weights
from rnnprobe.probes.products import product_spectrum
from rnnprobe.probes.reach import reach_row_blocks
from rnnprobe.probes.schedule import Schedule
from rnnprobe.probes.truncation_bias import truncation_bias
from rnnprobe.records.pending import PendingRows
from rnnprobe.seeds import derived_seed
from rnnprobe.training.batch import run_batch
from rnnprobe.training.config import PROBES, ProbeConfig
from rnnprobe.training.setup import RunParts

STATE_PROBES = frozenset({"hidden", "spectra", "lyapunov", "products"})  # use layer outputs


class Probing:
    """A run's probing: decides which probes fire at a step and files their rows (pending on
    the device until the next flush); ``generator`` draws their samples."""

    def __init__(self, config: ProbeConfig, rnn: ElmanRNN, seed: int) -> None:
        self.config, self.rnn = config, rnn
        self.schedules = {name: Schedule.parse(getattr(config, name)) for name in PROBES}
        self.generator = torch.Generator().manual_seed(derived_seed(seed, "probes"))
        self.rows = PendingRows()

    def firing(self, step: int, final_step: int | None = None) -> set[str]:
        """Return the names of the probes that fire at ``step`` (1-based).

        Besides its schedule, every probe that is not ``never`` fires at step 1 (the initial
        weights: records are taken before the update) and at ``final_step``, so each run has
        an init and an end phase to compare.
        """
        edge = step == 1 or step == final_step
        return {
            name
            for name, s in self.schedules.items()
            if s.fires(step - 1) or (edge and s.kind != "never")
        }

    def file(self, blocks: list[RowBlock]) -> None:
        """File a probe's row blocks as they are (they move to the host at the next flush)."""
        for block in blocks:
            self.rows.add(block.table, keep=block.keep, **block.columns)

    def record_step(
        self,
        step: int,
        fired: set[str],
        records: list[BackwardRecord],
        offsets: list[int],
        batch: Batch,
        finite: bool,
    ) -> None:
        """File the records of the ``fired`` probes of ``step`` from its backward passes.

        The state probes run only on a finite step, on the layer outputs of the whole batch
        (segments joined), before the update.
        """
        if "adjoints" in fired or "reach" in fired:
            self.record_backward(step, records, offsets, batch.lengths)
        if finite and fired & STATE_PROBES and records and records[0].states is not None:
            states = [torch.cat(layer) for layer in zip(*(r.states for r in records), strict=True)]
            self.record_states(step, states, fired, batch.lengths)

    def record_backward(
        self,
        step: int,
        records: list[BackwardRecord],
        offsets: list[int],
        lengths: torch.Tensor | None = None,
    ) -> None:
        """File adjoint (and reach) rows of each backward pass of ``step``.

        ``lengths`` (B,) of a padded batch: each step's means take only the sequences still
        real there (``sequences`` counts them; NaN where there are none).
        """
        nan = float("nan")
        for record, offset in zip(records, offsets, strict=True):
            for layer, r in enumerate(record.layers):
                T, B = r.adjoint_norm.shape
                real = real_steps(lengths, offset, T)
                sequences = real.sum(1) if real is not None else B
                self.rows.add(
                    "adjoints",
                    step=step,
                    layer=layer,
                    t=np.arange(offset, offset + T),
                    sequences=sequences,
                    adjoint_norm=real_mean(r.adjoint_norm, real),
                    direct_norm=real_mean(r.direct_norm, real),
                    recurrent_norm=real_mean(r.recurrent_norm, real),
                    grad_w_hh_norm=nan if r.grad_w_hh_norm is None else r.grad_w_hh_norm,
                    grad_w_ih_norm=nan if r.grad_w_ih_norm is None else r.grad_w_ih_norm,
                )
            if record.reach is not None:
                self.file(reach_row_blocks(record.reach, record.reach_sources, offset, step))

    def record_truncation_bias(
        self, step: int, parts: RunParts, batch: Batch, h0: torch.Tensor | None
    ) -> None:
        """Record the truncated gradients (now in ``.grad``) against full BPTT of the batch.

        One more forward and backward over the whole sequence, outside the capture (it
        records nothing else), then the truncated gradients go back for the update.
        """
        named = [(n, p) for n, p in parts.model.named_parameters() if p.grad is not None]
        truncated = {n: p.grad for n, p in named if p.grad is not None}  # all of them
        for _, p in named:
            p.grad = None
        run_batch(parts.model, parts.task, batch, [(0, batch.inputs.shape[1])], h0)
        full = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in named}
        self.file(truncation_bias(truncated, full).row_blocks(step))
        for name, p in named:
            p.grad = truncated[name]

    def record_states(
        self,
        step: int,
        states: list[torch.Tensor],
        fired: set[str],
        lengths: torch.Tensor | None = None,
    ) -> None:
        """File hidden-state statistics, spectra and Lyapunov exponents of layer outputs.

        ``lengths`` (B,) of a padded batch limits the hidden-state statistics to real steps.
        """
        nonlinearity, cfg = self.rnn.nonlinearity, self.config
        for layer, h in enumerate(states):  # h (T, B, H)
            if "hidden" in fired:
                self._record_hidden(step, layer, h, real_steps(lengths, 0, h.shape[0]))
            sub = h[:, : cfg.sub_batch]
            # Spectra and QR in float64: eigh of a float32 Gram matrix can fail to converge.
            phi_prime = derivative_from_output(sub, nonlinearity).to(torch.float64)
            w_hh = self.rnn.layer_weights(layer)[1].detach()
            if "spectra" in fired:
                self._record_spectra(step, layer, phi_prime, w_hh)
            if "products" in fired:
                try:
                    self._record_products(step, layer, phi_prime, w_hh.to(torch.float64))
                except torch.linalg.LinAlgError as error:  # e.g. rank lost to dead ReLU units
                    message = f"products probe, layer {layer}: {str(error).splitlines()[0]}"
                    self.rows.add("events", step=step, kind="probe_failed", message=message)
            if "lyapunov" in fired:
                k = min(cfg.top_k, w_hh.shape[0])
                warmup = min(cfg.warmup, phi_prime.shape[0] - 1)
                spectrum = lyapunov_exponents(
                    phi_prime, w_hh.to(torch.float64), k=k, warmup=warmup, seed=step
                )
                self.file(spectrum.row_blocks(step, layer))

    def _record_products(
        self, step: int, layer: int, phi_prime: torch.Tensor, w_hh: torch.Tensor
    ) -> None:
        k = min(self.config.top_k, w_hh.shape[0])
        self.file(product_spectrum(phi_prime, w_hh, k=k).row_blocks(step, layer))

    def _record_hidden(
        self, step: int, layer: int, h: torch.Tensor, real: torch.Tensor | None
    ) -> None:
        stats = hidden_state_stats(h, self.rnn.nonlinearity, real=real)
        self.file(stats.row_blocks(step, layer, batch=h.shape[1]))

    def _record_spectra(
        self, step: int, layer: int, phi_prime: torch.Tensor, w_hh: torch.Tensor
    ) -> None:
        T, B, H = phi_prime.shape
        count = self.config.jacobian_samples
        t = torch.randint(0, T, (count,), generator=self.generator)
        b = torch.randint(0, B, (count,), generator=self.generator)
        k = min(self.config.top_k, H)
        jac = jacobian_spectrum(phi_prime, w_hh.to(torch.float64), t, b, k=k)
        self.file(jac.row_blocks(step, layer))
        norm, mean_log = jac.spectral_norm.mean(), jac.mean_log_singular_value.mean()
        self.file(recurrent_weight_spectrum(w_hh.detach()).row_blocks(step, layer, norm, mean_log))

    def record_init(self, input_second_moment: float) -> None:
        """File W_hh spectra at initialisation and the mean-field prediction per layer.

        ``input_second_moment`` is E[x²] of layer 0's inputs; a deeper layer's is the E[h²]
        = (q* − σ_in²)/σ_w² that the fixed point of the layer below implies.
        """
        second_moment = input_second_moment
        for layer in range(self.rnn.num_layers):
            w_ih, w_hh = (w.detach().double() for w in self.rnn.layer_weights(layer))
            self.file(recurrent_weight_spectrum(w_hh).row_blocks(0, layer))  # step 0: init
            bias = None
            if self.rnn.bias:
                b_ih, b_hh = (getattr(self.rnn, f"bias_{n}_l{layer}") for n in ("ih", "hh"))
                bias = (b_ih + b_hh).detach().double()
            field = mean_field_from_weights(
                w_hh, self.rnn.nonlinearity, w_ih, bias, input_second_moment=second_moment
            )
            self.file(field.row_blocks(layer))
            if field.sigma_w2 > 0:
                second_moment = max(field.q_star - field.sigma_in2, 0.0) / field.sigma_w2


def real_steps(lengths: torch.Tensor | None, offset: int, steps: int) -> torch.Tensor | None:
    """Return (steps, B) bool, True where step ``offset + t`` of sequence b is real (None: all)."""
    if lengths is None:
        return None
    t = torch.arange(offset, offset + steps, device=lengths.device)
    return t[:, None] < lengths[None, :]


def real_mean(values: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Return the mean of ``values`` (T, B) over the real sequences of each step, (T,)."""
    if real is None:
        return values.mean(1)
    return (values * real).sum(1) / real.sum(1)
