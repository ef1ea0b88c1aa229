"""The schema of a run's tables: every column of every table the training loop writes.

``STANDARD_TABLES[table][column]`` says what the column holds and its type; one row per
(step, layer, …) key. Each probe's rows (``row_blocks`` of its result, in ``rnnprobe.probes``)
fill exactly these columns, a test checks it; the analysis reads them by these names.
"""

from __future__ import annotations

__all__ = ["STANDARD_TABLES"]

# The tables the training loop writes, column -> meaning; one row per (step, layer, ...) key.
STANDARD_TABLES: dict[str, dict[str, str]] = {
    "task": {
        "name": "task name: lm, copy, adding, recall, classify or a registered one (str)",
        "kind": "lm, per_step_classification, many_to_one_classification or regression (str)",
        "metric": "the task metric: bpc, perplexity, accuracy or mse (str)",
        "seq_len": "steps T the network runs per sequence (int)",
        "baseline_loss": "loss of the memoryless / chance baseline, nats or MSE (float)",
        "baseline_metric": "the metric of that baseline (float)",
        "baseline_description": "one line naming the baseline (str)",
        "parameters": "trainable parameters of the model (int)",
    },
    "steps": {
        "step": "optimizer step, counted from 1 (int)",
        "loss": "training loss of the batch: nats per target, or MSE (float)",
        "metric": "task metric of the batch: accuracy, bits per character, perplexity, MSE",
        "grad_norm_pre_clip": "global gradient 2-norm before clipping (float)",
        "grad_norm_post_clip": "global gradient 2-norm after clipping (float)",
        "clipped": "whether clipping changed the gradient (bool)",
        "skipped": "whether the update was skipped for a non-finite loss or gradient (bool)",
        "lr": "learning rate used for the step (float)",
        "tokens": "input steps seen so far, this batch included (int)",
        "seconds": "wall-clock seconds of training so far (float; not reproducible)",
    },
    "evals": {
        "step": "optimizer step after which the validation ran (int)",
        "loss": "validation loss: nats per target, or MSE (float)",
        "metric": "validation metric (float)",
    },
    "classes": {
        "step": "0: recorded before training (int)",
        "class": "class id, the target value (int)",
        "name": "class name: the file stem or the label column's value (str)",
        "train_examples": "examples of the class in the training split (int)",
        "valid_examples": "examples of the class in the validation split (int)",
        "truncated": "examples of the class cut to the longest kept length T (int)",
        "dropped": "examples of the class left empty by preprocessing, not used (int)",
        "mean_length": "mean tokens per example of the class, before truncation (float)",
    },
    "confusion": {
        "step": "optimizer step after which the validation ran (int)",
        "true": "true class id (int)",
        "predicted": "predicted class id: the argmax of the outputs (int)",
        "count": "validation sequences with that true and predicted class; zeros kept (int)",
    },
    "adjoints": {
        "step": "optimizer step (int)",
        "layer": "layer index, 0 = closest to the input (int)",
        "t": "time step within the batch's sequence (int)",
        "sequences": "sequences real (not padding) at step t; the means below are over them",
        "adjoint_norm": "batch mean of per-sample ‖δ_t‖ = ‖∂L/∂h_t‖, all paths (float)",
        "direct_norm": "batch mean ‖ε_t‖: the part from the layer above or the head (float)",
        "recurrent_norm": "batch mean ‖δ_t − ε_t‖: the part through h_{t+1} (float)",
        "grad_w_hh_norm": "‖g_tᵀ h_{t-1}‖_F: step t's share of ∇W_hh; NaN off its schedule",
        "grad_w_ih_norm": "‖g_tᵀ x_t‖_F: step t's share of ∇W_ih; NaN off its schedule",
    },
    "hidden": {
        "step": "optimizer step (int)",
        "layer": "layer index (int)",
        "t": "time step (int)",
        "sequences": "sequences real (not padding) at step t; the statistics are over them",
        "mean": "mean of h_t over batch and units (float)",
        "std": "standard deviation of h_t over batch and units (float)",
        "norm": "batch mean ‖h_t‖ (float)",
        "saturation": "tanh: fraction of units with φ'(a) < threshold; NaN for ReLU (float)",
        "inactive": "ReLU: fraction of units with h = 0; NaN for tanh (float)",
        "mean_phi_prime": "mean of φ'(a_t) over batch and units (float)",
    },
    "health": {
        "step": "optimizer step (int)",
        "layer": "layer index (int)",
        "saturation": "tanh: mean saturated fraction over t; NaN for ReLU (float)",
        "inactive": "ReLU: mean inactive fraction over t; NaN for tanh (float)",
        "dead_fraction": "ReLU: fraction of units never active in the batch; NaN for tanh",
        "mean_phi_prime": "mean φ' over batch, units and steps (float)",
        "participation_ratio": "effective dimensionality of h, in [1, H] (float)",
    },
    "weights": {
        "step": "optimizer step, 0 = at initialisation (int)",
        "layer": "layer index (int)",
        "spectral_radius": "ρ(W_hh), largest eigenvalue modulus (float)",
        "sigma_max": "σ_max(W_hh) (float)",
        "pascanu_bound": "σ_max·γ, γ = max|φ'|; < 1 guarantees vanishing gradients (float)",
        "jacobian_norm": "mean over sampled (t, b) of ‖J_t‖₂, J_t = diag(φ'(a_t)) W_hh (float)",
        "jacobian_mean_log_sv": "mean over samples of the mean ln σ_i(J_t) (float)",
    },
    "spectra": {
        "step": "optimizer step, 0 = at initialisation (int)",
        "layer": "layer index (int)",
        "quantity": "w_hh_eigenvalue, w_hh_singular or jacobian_singular (str)",
        "sample": "sampled (t, b) Jacobian number; 0 for W_hh (int)",
        "index": "rank, 0 = largest: singular values by size, eigenvalues by modulus (int)",
        "value": "singular value, or the eigenvalue's real part (float)",
        "imag": "the eigenvalue's imaginary part; 0 for singular values (float)",
    },
    "lyapunov": {
        "step": "optimizer step (int)",
        "layer": "layer index (int)",
        "index": "QR index of the exponent, not sorted: descending only once converged (int)",
        "exponent": "Lyapunov exponent, natural log per time step, batch mean (float)",
    },
    "truncation": {
        "step": "optimizer step of a truncated-BPTT run (int)",
        "tensor": "parameter name (as in the state dict), or total: all as one vector (str)",
        "cosine": "cosine of the truncated and the full-BPTT gradient of the batch (float)",
        "norm_ratio": "‖truncated‖ / ‖full‖ (float)",
        "dropped": (
            "‖full − truncated‖ / ‖full‖: the cut paths' gradient relative to the full one (a "
            "ratio of norms, not a share: above 1 where the two parts oppose) (float)"
        ),
    },
    "floss": {
        "step": "optimizer step; −P … −1: the P pre-flossing updates before step 1 (int)",
        "layer": "layer index (int)",
        "index": "QR index, not sorted: descending only once converged; K rows per layer (int)",
        "exponent": "λ_i measured before the update: ln per time step, batch mean (float)",
        "penalty": "Σ_i λ_i² of the layer, the same on each of its rows (float)",
    },
    "ftle": {
        "step": "optimizer step (int)",
        "layer": "layer index (int)",
        "window": "k: steps in the product J_{t+k}⋯J_{t+1}, from the sequence start (int)",
        "index": "rank, 0 = largest (int)",
        "exponent": "ln σ_i(product) / k, batch mean: a finite-time Lyapunov exponent (float)",
        "converged": "whether the factored orthogonal iteration converged (bool)",
    },
    "reach": {
        "step": "optimizer step (int)",
        "layer": "layer index (int)",
        "source": "time step s of the loss term ℓ_s (int)",
        "t": "time step of the hidden state it reaches, t ≤ s (int)",
        "distance": "s − t (int)",
        "norm": "mean over the sub-batch of ‖∂ℓ_s/∂h_t‖ (float)",
    },
    "mean_field": {
        "layer": "layer index (int)",
        "sigma_w2": "σ_w² = H·Var(W_hh) at initialisation (float)",
        "sigma_in2": "input and bias variance feeding the pre-activation (float)",
        "q_star": "mean-field fixed-point pre-activation variance q* (float)",
        "chi": "χ = σ_w² E[φ'(√q* z)²] (float)",
        "predicted_decay": "√χ: predicted gradient factor per step (float)",
        "predicted_half_life": "ln 2 / −ln √χ steps; inf when √χ ≥ 1 (float)",
    },
    "events": {
        "step": "optimizer step (int)",
        "kind": "nonfinite, diverged, resumed, recovered, interrupted, probe_failed, graph_failed "
        "or warning (str)",
        "message": "one human-readable line (str)",
    },
}
