"""Stacked Elman RNNs with ``torch.nn.RNN``'s parameters and call contract, and two heads.

Parameters are named and shaped exactly as in ``torch.nn.RNN`` (``weight_ih_l{k}`` (H, I or H),
``weight_hh_l{k}`` (H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (H,)), so a state dict moves
either way. The backward pass is the instrumented BPTT of ``bptt.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnprobe.bptt import ElmanStackFunction, RecorderSlot
from rnnprobe.cell import check_nonlinearity
from rnnprobe.errors import RnnprobeError


class ElmanRNN(nn.Module):
    """A drop-in for ``torch.nn.RNN`` (no dropout, unidirectional) with an exact, recorded BPTT.

    ``output, h_n = rnn(x, h0)`` with x (T, B, I) — (B, T, I) if ``batch_first`` — or unbatched
    (T, I); h0 and h_n (L, B, H) (or (L, H) unbatched); output (T, B, H) (or (B, T, H)).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if value < 1:
                raise RnnprobeError(f"{name} must be at least 1, got {value}")
        if num_layers < 1:
            raise RnnprobeError(f"num_layers must be at least 1, got {num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.nonlinearity = check_nonlinearity(nonlinearity)
        self.bias, self.batch_first = bias, batch_first
        self.recorder_slot = RecorderSlot()
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size
            self.register_parameter(
                f"weight_ih_l{layer}", nn.Parameter(torch.empty(hidden_size, layer_input))
            )
            self.register_parameter(
                f"weight_hh_l{layer}", nn.Parameter(torch.empty(hidden_size, hidden_size))
            )
            if bias:
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(hidden_size)))
                self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(hidden_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default: every parameter ~ U(-1/√H, 1/√H)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (W_ih, W_hh) of ``layer``."""
        return getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")

    def flat_weights(self) -> list[torch.Tensor]:
        """Return the parameters in ``torch.nn.RNN`` order: per layer W_ih, W_hh[, b_ih, b_hh]."""
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        return [getattr(self, f"{n}_l{k}") for k in range(self.num_layers) for n in names]

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output, h_n); see the class docstring for shapes."""
        unbatched = x.dim() == 2
        if x.dim() not in (2, 3):
            raise RnnprobeError(
                f"ElmanRNN expects input of rank 2 (T, I) or 3, got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.input_size:
            raise RnnprobeError(
                f"input size {x.shape[-1]} does not match the RNN's input_size {self.input_size}"
            )
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape  # time, batch, input size
        if T == 0 or B == 0:
            raise RnnprobeError(f"empty input of shape {tuple(x.shape)}: need T ≥ 1 and B ≥ 1")
        expected = (self.num_layers, B, self.hidden_size)
        if h0 is None:
            h0 = x.new_zeros(expected)
        elif unbatched:
            h0 = h0.unsqueeze(1)
        if tuple(h0.shape) != expected:
            shown = (expected[0], expected[2]) if unbatched else expected
            raise RnnprobeError(f"h0 must have shape {shown}, got {tuple(h0.shape)}")
        output, h_n = ElmanStackFunction.apply(
            x.contiguous(),
            h0.contiguous(),
            self.recorder_slot,
            self.nonlinearity,
            self.bias,
            *self.flat_weights(),
        )
        if unbatched:
            return output.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n

    @classmethod
    def from_torch(cls, rnn: nn.RNN) -> ElmanRNN:
        """Return an ElmanRNN with ``rnn``'s configuration and a copy of its weights."""
        if rnn.bidirectional or rnn.proj_size or rnn.dropout:
            raise RnnprobeError("only unidirectional nn.RNN without dropout or proj_size converts")
        model = cls(
            rnn.input_size,
            rnn.hidden_size,
            rnn.num_layers,
            rnn.nonlinearity,
            rnn.bias,
            rnn.batch_first,
        )
        model.to(next(rnn.parameters())).load_state_dict(rnn.state_dict())
        return model

    def to_torch(self) -> nn.RNN:
        """Return an equivalent ``torch.nn.RNN`` holding a copy of these weights."""
        rnn = nn.RNN(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            nonlinearity=self.nonlinearity,
            bias=self.bias,
            batch_first=self.batch_first,
        )
        rnn.to(next(self.parameters())).load_state_dict(self.state_dict())
        return rnn

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"nonlinearity={self.nonlinearity!r}, bias={self.bias}, batch_first={self.batch_first}"
        )


def make_rnn(
    kind: str, input_size: int, hidden_size: int, num_layers: int, nonlinearity: str
) -> nn.Module:
    """Return an instrumented ``ElmanRNN`` (kind "elman") or a plain ``nn.RNN`` ("torch")."""
    if kind == "elman":
        return ElmanRNN(input_size, hidden_size, num_layers, nonlinearity)
    if kind == "torch":
        return nn.RNN(input_size, hidden_size, num_layers, nonlinearity=nonlinearity)
    raise RnnprobeError(f"unknown rnn kind {kind!r}; choose elman or torch")


class RNNLanguageModel(nn.Module):
    """Embedding (with ``padding_idx``) → stacked RNN → linear head over the vocabulary.

    Token tensors are batch-first (B, T); the RNN runs time-major inside.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        padding_idx: int | None = 0,
        rnn: str = "elman",
    ) -> None:
        super().__init__()
        self.vocab_size, self.padding_idx = vocab_size, padding_idx
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.rnn = make_rnn(rnn, embedding_dim, hidden_size, num_layers, nonlinearity)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(
        self, tokens: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return logits (T, B, V), time-major, and h_n (L, B, H) for tokens (B, T)."""
        output, h_n = self.rnn(self.embedding(tokens.t()), h0)
        return self.head(output), h_n

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mean cross-entropy over non-padding targets, h_n); inputs, targets (B, T)."""
        logits, h_n = self(inputs, h0)
        ignore = -100 if self.padding_idx is None else self.padding_idx
        loss = F.cross_entropy(
            logits.reshape(-1, self.vocab_size), targets.t().reshape(-1), ignore_index=ignore
        )
        return loss, h_n

    def next_token_loss(self, tokens: torch.Tensor, h0: torch.Tensor | None = None):
        """Return ``loss(tokens[:, :-1], tokens[:, 1:], h0)``: predict each next token."""
        if tokens.shape[1] < 2:
            raise RnnprobeError("next-token loss needs sequences of at least 2 tokens")
        return self.loss(tokens[:, :-1], tokens[:, 1:], h0)


class RNNClassifier(nn.Module):
    """Many-to-one: (embedding or raw features) → stacked RNN → head on the last real step.

    Inputs are token ids (B, T) when ``vocab_size`` is given, else features (B, T, input_size).
    ``lengths`` (B,) marks each sequence's real length for padded batches (default: T).
    """

    def __init__(
        self,
        num_outputs: int,
        hidden_size: int,
        *,
        vocab_size: int | None = None,
        embedding_dim: int = 32,
        input_size: int | None = None,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        padding_idx: int | None = 0,
        rnn: str = "elman",
    ) -> None:
        super().__init__()
        if (vocab_size is None) == (input_size is None):
            raise RnnprobeError("give exactly one of vocab_size (tokens) or input_size (features)")
        self.embedding = (
            nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
            if vocab_size is not None
            else None
        )
        rnn_input = embedding_dim if vocab_size is not None else input_size
        self.rnn = make_rnn(rnn, rnn_input, hidden_size, num_layers, nonlinearity)
        self.head = nn.Linear(hidden_size, num_outputs)

    def encode(
        self, inputs: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the RNN's output (T, B, H), time-major, and h_n (L, B, H)."""
        x = self.embedding(inputs.t()) if self.embedding is not None else inputs.transpose(0, 1)
        return self.rnn(x, h0)

    def forward(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor | None = None,
        h0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the head's outputs (B, num_outputs) read at each sequence's last real step."""
        output, _ = self.encode(inputs, h0)  # (T, B, H)
        T, B, _ = output.shape
        if lengths is None:
            last = output[-1]
        else:
            # Checked only where it costs no device sync: lengths usually come from the loader.
            if lengths.device.type == "cpu" and bool(((lengths < 1) | (lengths > T)).any()):
                raise RnnprobeError(f"lengths must lie in [1, {T}]")
            last = output[lengths.to(output.device) - 1, torch.arange(B, device=output.device)]
        return self.head(last)

    def loss(self, inputs, targets, lengths=None, h0=None) -> torch.Tensor:
        """Return the mean cross-entropy against class targets (B,)."""
        return F.cross_entropy(self(inputs, lengths, h0), targets)


class RNNRegressor(RNNClassifier):
    """Many-to-one regression (e.g. the adding problem): mean squared error on (B, num_outputs)."""

    def loss(self, inputs, targets, lengths=None, h0=None) -> torch.Tensor:
        """Return the mean squared error against targets (B,) or (B, num_outputs)."""
        prediction = self(inputs, lengths, h0)
        return F.mse_loss(prediction, targets.reshape(prediction.shape))
