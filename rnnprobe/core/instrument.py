"""Instrument a model you already have: swap its ``torch.nn.RNN`` modules for ``ElmanRNN``.

    handle = rnnprobe.instrument(model)          # in place; the optimizer keeps working
    with handle.capture() as cap:                # records of every backward pass inside
        loss = loss_fn(model(x), y)
        loss.backward()
    cap.records()[0].layers[0].adjoint_norm      # (T, B): ‖∂L/∂h_t‖ per sample
    handle.uninstrument()                        # the original nn.RNN modules are back

Each ``ElmanRNN`` *shares* the parameters of the ``nn.RNN`` it replaces (the same
``nn.Parameter`` objects, not copies), so an optimizer built before instrumenting updates the
instrumented model, and after ``uninstrument`` the originals hold the trained weights. The
forward pass and every gradient are those of ``nn.RNN`` (the tests compare them in float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rnnprobe.core.capture import Capture
from rnnprobe.core.models import ElmanRNN
from rnnprobe.errors import RnnprobeError

__all__ = ["Instrumented", "instrument"]


@dataclass
class _Swap:
    parent: nn.Module | None  # None when the model itself is the nn.RNN
    name: str
    original: nn.RNN
    elman: ElmanRNN


@dataclass
class Instrumented:
    """The handle ``instrument`` returns: the model, its ElmanRNNs, and the way back."""

    model: nn.Module
    swaps: list[_Swap] = field(default_factory=list)

    @property
    def rnns(self) -> list[ElmanRNN]:
        """Return the ElmanRNN modules now inside ``model``, in ``named_modules`` order (an
        nn.RNN registered in two places is one ElmanRNN, listed once)."""
        return list(dict.fromkeys(swap.elman for swap in self.swaps))

    def capture(self, rnn: int = 0, **options: Any) -> Capture:
        """Return a ``Capture`` of the ``rnn``-th instrumented RNN (options as ``Capture``)."""
        if not self.swaps:
            raise RnnprobeError(
                "this handle's model is no longer instrumented (uninstrument was called): "
                "call rnnprobe.instrument(model) again"
            )
        if not 0 <= rnn < len(self.rnns):
            raise RnnprobeError(f"rnn must lie in [0, {len(self.rnns)}), got {rnn}")
        return Capture(self.rnns[rnn], **options)

    def uninstrument(self) -> nn.Module:
        """Put the original ``nn.RNN`` modules back (they hold the trained weights); return it."""
        for swap in self.swaps:
            _give_back(swap.elman, swap.original)
            if swap.parent is not None:
                setattr(swap.parent, swap.name, swap.original)
        model = self.swaps[0].original if self.swaps and self.swaps[0].parent is None else None
        self.swaps = []
        return model if model is not None else self.model

    def __enter__(self) -> Instrumented:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstrument()


def instrument(model: nn.Module) -> Instrumented:
    """Replace every ``nn.RNN`` in ``model`` in place by an ``ElmanRNN`` sharing its weights.

    A model that is itself an ``nn.RNN`` cannot be replaced in place: use ``handle.model``.
    Raises a one-line error when the model holds no ``nn.RNN`` (LSTM and GRU are not Elman).
    """
    swaps: list[_Swap] = []
    if type(model) is nn.RNN:
        elman = sharing(model)
        return Instrumented(elman, [_Swap(None, "", model, elman)])
    made: dict[nn.RNN, ElmanRNN] = {}  # one ElmanRNN per nn.RNN, wherever it is registered
    for parent in list(model.modules()):
        # _modules, not named_children(): that skips a module registered a second time
        for name, child in list(parent._modules.items()):
            if type(child) is nn.RNN:
                if child not in made:
                    made[child] = sharing(child)
                setattr(parent, name, made[child])
                swaps.append(_Swap(parent, name, child, made[child]))
    if not swaps:
        raise RnnprobeError(_nothing_to_instrument(model))
    return Instrumented(model, swaps)


def _nothing_to_instrument(model: nn.Module) -> str:
    """Return the one-line reason why ``model`` holds no ``nn.RNN`` to swap."""
    kinds = {type(m) for m in model.modules()}
    if any(issubclass(kind, ElmanRNN) for kind in kinds):
        return (
            "the model's RNNs are ElmanRNNs already (instrumented, or built with rnnprobe): "
            "record them with rnnprobe.capture(model), or the handle instrument returned"
        )
    subclasses = sorted(k.__name__ for k in kinds if issubclass(k, nn.RNN))
    if subclasses:  # their forward may differ; a parametrized one computes its weights
        return (
            f"the model holds no torch.nn.RNN to instrument: {', '.join(subclasses)} subclass "
            "torch.nn.RNN, and only torch.nn.RNN itself is swapped (a subclass's forward, or "
            "a torch.nn.utils.parametrize weight, would not carry over)"
        )
    found = sorted(k.__name__ for k in kinds if issubclass(k, nn.RNNBase))
    kinds_text = f" (it has {', '.join(found)}, which are not Elman RNNs)" if found else ""
    return f"the model holds no torch.nn.RNN to instrument{kinds_text}"


def _give_back(elman: ElmanRNN, rnn: nn.RNN) -> None:
    """Register ``elman``'s parameters, as they are now, and its train flag on ``rnn``.

    They are the originals unless something replaced them on the instrumented model:
    ``load_state_dict(..., assign=True)``, or ``.to()`` under
    ``torch.__future__.set_overwrite_module_params_on_conversion(True)``.
    """
    for name, parameter in elman.named_parameters(recurse=False):
        setattr(rnn, name, parameter)
    rnn._init_flat_weights()
    rnn._is_full_backward_hook = elman._is_full_backward_hook  # a hook registered meanwhile
    rnn.train(elman.training)


def sharing(rnn: nn.RNN) -> ElmanRNN:
    """Return an ``ElmanRNN`` configured like ``rnn`` whose parameters *are* ``rnn``'s."""
    if rnn.proj_size:
        raise RnnprobeError("nn.RNN has no proj_size; this module is not an Elman RNN")
    first = next(rnn.parameters())
    elman = ElmanRNN(
        rnn.input_size,
        rnn.hidden_size,
        rnn.num_layers,
        rnn.nonlinearity,
        bias=rnn.bias,
        batch_first=rnn.batch_first,
        dropout=rnn.dropout,
        bidirectional=rnn.bidirectional,
        device="meta",
        dtype=first.dtype,
    )
    for name, parameter in rnn.named_parameters(recurse=False):
        setattr(elman, name, parameter)  # registers the same Parameter object
    # The same hook dictionaries, not copies: the user's forward, backward and state-dict hooks
    # fire on the ElmanRNN, their handles' remove() still works, and a hook registered while
    # instrumented stays on the nn.RNN.
    for name, value in vars(rnn).items():
        if "hook" in name and isinstance(value, dict):
            elman.__dict__[name] = value
    elman._is_full_backward_hook = rnn._is_full_backward_hook
    if hasattr(elman, "_init_flat_weights"):  # an nn.RNNBase: refresh its flat weight list
        elman._init_flat_weights()
    # The original's weak references to the shared parameters would make ``.to()`` fail under
    # torch.__future__.set_swap_module_params_on_conversion(True) (swap_tensors refuses a
    # tensor with weak references); ``_give_back`` makes them again.
    rnn._flat_weight_refs = [None] * len(rnn._flat_weight_refs)
    return elman.train(rnn.training)
