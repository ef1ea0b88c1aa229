"""Stacked Elman RNNs with ``torch.nn.RNN``'s parameters and call contract, and two heads.

``ElmanRNN`` is an ``nn.RNNBase`` (mode ``RNN_TANH`` / ``RNN_RELU``): parameters are named and
shaped exactly as in ``torch.nn.RNN`` (``weight_ih_l{k}[_reverse]`` (H, I or D·H),
``weight_hh_l{k}[_reverse]`` (H, H), ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]``
(H,)), so a state dict moves either way and ``_flat_weights``, ``all_weights``,
``flatten_parameters`` and ``.to()`` are PyTorch's own. The backward pass is the instrumented
BPTT of ``bptt.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from rnnprobe.core.bptt import ElmanStackFunction, RecorderSlot, StackSpec, make_schedule
from rnnprobe.errors import RnnprobeError
from rnnprobe.nonlinearity import NONLINEARITIES


class RNNArgumentError(RnnprobeError):
    """A bad value where ``torch.nn.RNN`` raises ``ValueError`` (RnnprobeError is one)."""


class RNNTypeError(RnnprobeError, TypeError):
    """A bad argument type where ``torch.nn.RNN`` raises ``TypeError``."""


class RNNShapeError(RnnprobeError, RuntimeError):
    """A bad input or state (shape, length, device) where ``torch.nn.RNN`` raises RuntimeError."""


@dataclass(frozen=True, eq=False)
class PackedLayout:
    """Where a packed batch's rows sit in its padded time-major layout (T, B), sorted order.

    Padding and packing are an ``index_copy`` and an ``index_select`` with these positions:
    differentiable, and supported by ``torch.func`` transforms (``torch.nn.RNN``'s packed path
    is not).
    """

    batch_sizes: tuple[int, ...]  # real rows at each step, decreasing
    lengths: tuple[int, ...]  # real steps of each row
    positions: torch.Tensor  # (N,) t·B + b of each packed row

    @classmethod
    def of(cls, batch_sizes: torch.Tensor, device: torch.device) -> PackedLayout:
        """Return the layout of a packed batch from its ``batch_sizes`` (T,), on ``device``."""
        T, B = batch_sizes.numel(), int(batch_sizes[0])
        real = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)  # (T, B)
        positions = torch.arange(T * B).view(T, B)[real].to(device)
        return cls(tuple(batch_sizes.tolist()), tuple(real.sum(0).tolist()), positions)

    @property
    def rows(self) -> int:
        """Return N, the number of packed (real) rows."""
        return self.positions.numel()

    def pad(self, data: torch.Tensor) -> torch.Tensor:
        """Return packed rows (N, F) laid out padded (T, B, F), zero at padded steps."""
        T, B = len(self.batch_sizes), self.batch_sizes[0]
        padded = data.new_zeros(T * B, data.shape[-1]).index_copy(0, self.positions, data)
        return padded.view(T, B, data.shape[-1])

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """Return the real rows (N, F) of a padded (T, B, F) tensor, in packed order."""
        T, B, F = padded.shape
        return padded.reshape(T * B, F).index_select(0, self.positions)


_HIDDEN_FROM_COMPILE: dict[Callable[..., Any], Callable[..., Any]] = {}


def _outside_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Return ``fn`` wrapped by ``torch.compiler.disable``, made once (only when compiling, so
    that importing rnnprobe does not import torch._dynamo)."""
    if fn not in _HIDDEN_FROM_COMPILE:
        _HIDDEN_FROM_COMPILE[fn] = torch.compiler.disable(fn)
    return _HIDDEN_FROM_COMPILE[fn]


class ElmanRNN(nn.RNNBase):
    """A drop-in for ``torch.nn.RNN`` whose backward pass is an exact, recorded BPTT.

    Same constructor and call as ``torch.nn.RNN``: ``output, h_n = rnn(input, hx)`` with input
    (T, B, I) — (B, T, I) if ``batch_first`` —, unbatched (T, I), or a ``PackedSequence``; hx
    and h_n (L·D, B, H) (or (L·D, H) unbatched), D = 2 if ``bidirectional``; output
    (T, B, D·H) (or (B, T, D·H), or packed like the input). ``dropout`` drops each layer's
    output but the last's in training, with masks drawn from torch's generator as
    ``torch.nn.RNN`` draws them. Errors are ``torch.nn.RNN``'s types and messages, as
    subclasses of ``RnnprobeError`` too.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        proj_size: int = 0,
    ) -> None:
        if proj_size != 0:
            raise RNNArgumentError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if nonlinearity not in NONLINEARITIES:
            raise RNNArgumentError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        try:  # nn.RNNBase checks the arguments: its errors, as one-line rnnprobe errors
            super().__init__(
                mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                bidirectional, 0, device, dtype,
            )  # fmt: skip
        except RnnprobeError:
            raise
        except TypeError as error:
            raise RNNTypeError(str(error)) from None
        except ValueError as error:
            raise RNNArgumentError(str(error)) from None
        self.nonlinearity = nonlinearity
        self.recorder_slot = RecorderSlot()

    def layer_weights(self, layer: int, direction: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (W_ih, W_hh) of ``layer`` (``direction`` 1: the reverse one)."""
        suffix = f"l{layer}" + ("_reverse" if direction else "")
        return getattr(self, f"weight_ih_{suffix}"), getattr(self, f"weight_hh_{suffix}")

    def flat_weights(self) -> list[torch.Tensor]:
        """Return the weights in ``torch.nn.RNN`` order: per layer and direction W_ih, W_hh[, b]."""
        self._update_flat_weights()
        return list(self._weights())

    def _weights(self) -> list[torch.Tensor]:
        """Return ``_flat_weights`` itself, typed as the tensors it holds."""
        # torch types the list Optional[Tensor] (None stands for a weight not yet registered;
        # torch's own code ignores that type too): an ElmanRNN has registered every weight.
        return cast("list[torch.Tensor]", self._flat_weights)

    def forward(
        self, input: torch.Tensor | PackedSequence, hx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
        """Return (output, h_n) exactly as ``torch.nn.RNN`` does; see the class docstring.

        Under ``torch.compile`` the call runs eager, outside the graph (one graph break): the
        scan compiles to nothing faster on a CPU, tracing it takes minutes, and its backward
        pass must stay the recorded BPTT.
        """
        if torch.compiler.is_compiling():
            return _outside_compile(ElmanRNN._forward)(self, input, hx)
        return self._forward(input, hx)

    def _forward(
        self, input: torch.Tensor | PackedSequence, hx: torch.Tensor | None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
        """Return (output, h_n) for a packed, batched or unbatched input (not compiled)."""
        self._update_flat_weights()
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if input.dim() not in (2, 3):
            raise RNNArgumentError(
                f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead"
            )
        batched = input.dim() == 3
        if hx is not None and hx.dim() != (3 if batched else 2):
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RNNShapeError(
                f"For {kind} input, hx should also be {3 if batched else 2}-D but got "
                f"{hx.dim()}-D tensor"
            )
        if not batched:
            x, hx = input.unsqueeze(1), None if hx is None else hx.unsqueeze(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        self._check_input(x, 3)
        T, B, _ = x.shape  # time, batch, input size
        zero_h0 = hx is None
        hx = self._initial_state(x, B) if hx is None else hx
        self._check_hidden(hx, x, B)
        if T == 0:
            raise RNNShapeError("Expected sequence length to be larger than 0 in RNN")
        output, h_n = self._run(x, hx, zero_h0=zero_h0)
        if not batched:
            return output.squeeze(1), h_n.squeeze(1)
        return (output.transpose(0, 1) if self.batch_first else output), h_n

    def _forward_packed(
        self, packed: PackedSequence, hx: torch.Tensor | None
    ) -> tuple[PackedSequence, torch.Tensor]:
        """Run a packed batch: each sequence for its own length, in the packed (sorted) order."""
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        B = int(batch_sizes[0])
        hx = self._initial_state(data, B) if hx is None else self.permute_hidden(hx, sorted_indices)
        self._check_input(data, 2)
        self._check_hidden(hx, data, B)
        layout = PackedLayout.of(batch_sizes, data.device)
        output, h_n = self._run(layout.pad(data), hx, layout, unsorted_indices)
        packed_output = PackedSequence(
            layout.pack(output), batch_sizes, sorted_indices, unsorted_indices
        )
        return packed_output, self.permute_hidden(h_n, unsorted_indices)

    def _initial_state(self, x: torch.Tensor, B: int) -> torch.Tensor:
        """Return a zero h0 (L·D, B, H) of ``x``'s dtype and device."""
        D = 2 if self.bidirectional else 1
        return x.new_zeros(self.num_layers * D, B, self.hidden_size)

    def _check_input(self, x: torch.Tensor, dims: int) -> None:
        """Raise ``torch.nn.RNN``'s errors for a wrong dtype, rank or input size."""
        weight = self._weights()[0]
        if x.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise RNNArgumentError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: model.to({x.dtype})"
            )
        if x.dim() != dims:
            raise RNNShapeError(f"input must have {dims} dimensions, got {x.dim()}")
        if x.shape[-1] != self.input_size:
            raise RNNShapeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {x.shape[-1]}"
            )
        if x.device != weight.device:
            raise RNNShapeError(
                "Input and parameter tensors are not at the same device, found input tensor "
                f"at {x.device} and parameter tensor at {weight.device}"
            )

    def _check_hidden(self, hx: torch.Tensor, x: torch.Tensor, B: int) -> None:
        """Raise ``torch.nn.RNN``'s errors for a state of the wrong shape or device."""
        D = 2 if self.bidirectional else 1
        expected = (self.num_layers * D, B, self.hidden_size)
        if hx.shape != expected:
            raise RNNShapeError(f"Expected hidden size {expected}, got {list(hx.shape)}")
        if hx.device != x.device:
            raise RNNShapeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{x.device} and hidden tensor at {hx.device}"
            )

    def _run(
        self,
        x: torch.Tensor,
        hx: torch.Tensor,
        layout: PackedLayout | None = None,
        order: torch.Tensor | None = None,
        zero_h0: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output (T, B, D·H), h_n (L·D, B, H)) for time-major x (T, B, I);
        ``zero_h0``: hx is the zero state made here (no product with it is needed)."""
        weights = list(self._weights())
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):  # compute in autocast's dtype, as nn.RNN
            dtype = torch.get_autocast_dtype(device_type)

            def to_autocast(t: torch.Tensor) -> torch.Tensor:
                return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t

            x, hx, weights = to_autocast(x), to_autocast(hx), [to_autocast(w) for w in weights]
            with torch.autocast(device_type, enabled=False):
                return self._apply_stack(x, hx, weights, layout, order, zero_h0)
        return self._apply_stack(x, hx, weights, layout, order, zero_h0)

    def _apply_stack(
        self,
        x: torch.Tensor,
        hx: torch.Tensor,
        weights: list[torch.Tensor],
        layout: PackedLayout | None,
        order: torch.Tensor | None,
        zero_h0: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output (T, B, D·H), h_n (L·D, B, H)) from the instrumented BPTT function."""
        T = x.shape[0]
        sizes = None if layout is None else layout.batch_sizes
        directions = (False, True) if self.bidirectional else (False,)
        masks = self._dropout_masks(x, layout)
        spec = StackSpec(
            self.nonlinearity,
            self.bias,
            self.num_layers,
            tuple(make_schedule(T, reverse, sizes) for reverse in directions),
            None if layout is None else layout.lengths,
            len(masks),
            order,
            zero_h0,
        )
        output, h_n, *_ = ElmanStackFunction.apply(
            x.contiguous(), hx.contiguous(), self.recorder_slot, spec, *weights, *masks
        )
        return output, h_n

    def _dropout_masks(self, x: torch.Tensor, layout: PackedLayout | None) -> list[torch.Tensor]:
        """Return the L - 1 dropout masks (T, B, D·H) of a training pass, scaled by 1/(1-p).

        Drawn like ``torch.nn.RNN``'s (``bernoulli_(1 - p)`` on each layer's output, in layer
        order; on the packed data for a packed batch), so the same seed gives the same masks.
        """
        p = self.dropout
        if not self.training or p == 0 or self.num_layers == 1:
            return []
        T, B, _ = x.shape
        width = self.hidden_size * (2 if self.bidirectional else 1)
        shape = (T, B, width) if layout is None else (layout.rows, width)
        masks: list[torch.Tensor] = []
        for _ in range(self.num_layers - 1):
            if p == 1:
                mask = x.new_zeros(shape)
            else:
                mask = x.new_empty(shape).bernoulli_(1 - p).div_(1 - p)
            masks.append(mask if layout is None else layout.pad(mask))
        return masks

    @classmethod
    def from_torch(cls, rnn: nn.RNN) -> ElmanRNN:
        """Return an ElmanRNN configured like ``rnn`` holding a copy of its weights."""
        if not isinstance(rnn, nn.RNN):
            raise RnnprobeError(f"from_torch needs a torch.nn.RNN, got {type(rnn).__name__}")
        first = next(rnn.parameters())
        model = cls(
            rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.nonlinearity, rnn.bias,
            rnn.batch_first, rnn.dropout, rnn.bidirectional, device=first.device,
            dtype=first.dtype,
        )  # fmt: skip
        # The weights as rnn's forward uses them (by name, not from its state dict, whose keys
        # differ where a torch.nn.utils.parametrize weight such as weight_norm is applied).
        with torch.no_grad():
            for name in model._flat_weights_names:
                getattr(model, name).copy_(getattr(rnn, name))
        return model.train(rnn.training)

    def to_torch(self) -> nn.RNN:
        """Return an equivalent ``torch.nn.RNN`` holding a copy of these weights."""
        first = next(self.parameters())
        rnn = nn.RNN(
            self.input_size, self.hidden_size, self.num_layers, nonlinearity=self.nonlinearity,
            bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
            bidirectional=self.bidirectional, device=first.device, dtype=first.dtype,
        )  # fmt: skip
        rnn.load_state_dict(self.state_dict())
        return rnn.train(self.training)

    def extra_repr(self) -> str:
        """Return ``torch.nn.RNN``'s summary, plus the nonlinearity when it is not tanh."""
        text = super().extra_repr()
        return text if self.nonlinearity == "tanh" else f"{text}, nonlinearity='relu'"


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

    def next_token_loss(
        self, tokens: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        rnn_input = input_size if input_size is not None else embedding_dim  # exactly one given
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


class RNNRegressor(RNNClassifier):
    """Many-to-one regression (e.g. the adding problem): mean squared error on (B, num_outputs)."""
