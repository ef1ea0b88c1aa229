"""ElmanRNN behaves as torch.nn.RNN: PyTorch's own tests, run against it.

1. PyTorch's module samples and error inputs for ``torch.nn.RNN``
   (``torch.testing._internal.common_modules.module_db``): both modules built from each
   sample's constructor arguments with the same weights, outputs and every gradient compared;
   each error input raises the same exception type and message (also an ``RnnprobeError``).
   Plus the generic checks PyTorch's ``test_modules.py`` runs on every module that apply here
   (reference function, factory kwargs, repr, pickling, non-contiguous inputs, gradcheck and
   gradgradcheck, ``to_empty``, train/eval).
2. The RNN checks of PyTorch's ``test/test_nn.py`` that apply to a plain RNN on CPU, re-stated
   (not copied) with ElmanRNN; a check PyTorch runs CPU-vs-cuDNN is run ElmanRNN-vs-nn.RNN.
3. A compile benchmark (``-m slow``): torch.compile's first call and steady-state step.
"""

from __future__ import annotations

import copy
import functools
import io
import itertools
import os
import pickle
import re

import pytest
import torch
from hypothesis import settings
from torch import nn
from torch.nn.utils import rnn as rnn_utils

from rnnprobe import ElmanRNN, RnnprobeError
from rnnprobe.core.capture import capture
from rnnprobe.core.models import RNNLanguageModel

pytest.importorskip("expecttest", reason="PyTorch's test utilities import expecttest")


def _pytorch_rnn_module_info():
    """Return PyTorch's ModuleInfo of nn.RNN and its error enum, undoing the import's effects.

    Importing PyTorch's test utilities loads their own hypothesis profile (replacing ours by
    name) and freezes ``torch.backends`` flags; both are put back for the rest of the suite.
    """
    name, ours = settings._current_profile, settings.default
    from torch.testing._internal import common_modules

    settings.register_profile(name, ours)
    settings.load_profile(name)
    setattr(torch.backends, "__allow_nonbracketed_mutation_flag", True)
    info = next(info for info in common_modules.module_db if info.module_cls is nn.RNN)
    return info, common_modules.ModuleErrorEnum


INFO, ERROR_ON = _pytorch_rnn_module_info()
F64, F32 = torch.float64, torch.float32
TOLERANCE = {F64: 1e-10, F32: 2e-5}


@functools.cache
def pytorch_samples(dtype, training: bool):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return INFO.module_inputs_func(
            INFO, device="cpu", dtype=dtype, requires_grad=True, training=training,
            with_packed_sequence=True,
        )  # fmt: skip


def pytorch_error_inputs(dtype):
    return INFO.module_error_inputs_func(
        INFO, device="cpu", dtype=dtype, requires_grad=False, training=True
    )


SAMPLE_CASES = [
    pytest.param(dtype, training, i, id=f"{str(dtype)[6:]}-{'train' if training else 'eval'}-{i}")
    for dtype, training in ((F64, True), (F64, False), (F32, True))
    for i in range(len(pytorch_samples(dtype, training)))
]
ERROR_CASES = [
    pytest.param(dtype, i, id=f"{str(dtype)[6:]}-{i}")
    for dtype in (F64, F32)
    for i in range(len(pytorch_error_inputs(dtype)))
]


def pair(*args, dtype=F64, **kwargs) -> tuple[ElmanRNN, nn.RNN]:
    """Return (ElmanRNN, nn.RNN) built from the same arguments, holding the same weights."""
    reference = nn.RNN(*args, **kwargs).to(dtype)
    model = ElmanRNN(*args, **kwargs).to(dtype)
    model.load_state_dict(reference.state_dict())
    return model, reference


def fresh(value):
    """Return a leaf copy of a tensor (or a PackedSequence's data), keeping requires_grad."""
    if isinstance(value, rnn_utils.PackedSequence):
        data = value.data.detach().clone().requires_grad_(value.data.requires_grad)
        return rnn_utils.PackedSequence(
            data, value.batch_sizes, value.sorted_indices, value.unsorted_indices
        )
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return value


def leaves(inputs):
    """Return the tensors among ``inputs`` (packed data included) that require grad."""
    flat = [i.data if isinstance(i, rnn_utils.PackedSequence) else i for i in inputs]
    return [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]


def data_of(output):
    return output.data if isinstance(output, rnn_utils.PackedSequence) else output


def assert_close(got, want, tol):
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def assert_same_results(model, reference, inputs, tol, seed=0, copy_inputs=True):
    """Both modules give the same outputs and the same gradients of every input and weight."""
    ours, theirs = ([fresh(i) for i in inputs] for _ in range(2)) if copy_inputs else (inputs,) * 2
    torch.manual_seed(seed)
    out, h_n = model(*ours)
    torch.manual_seed(seed)
    ref_out, ref_h_n = reference(*theirs)
    assert type(out) is type(ref_out)
    assert_close(data_of(out), data_of(ref_out), tol)
    assert_close(h_n, ref_h_n, tol)
    if isinstance(out, rnn_utils.PackedSequence):
        assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    gen = torch.Generator().manual_seed(seed)
    w_out = torch.randn(data_of(out).shape, generator=gen, dtype=h_n.dtype)
    w_hn = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype)
    grads = torch.autograd.grad(
        (data_of(out) * w_out).sum() + (h_n * w_hn).sum(), leaves(ours) + list(model.parameters())
    )
    ref_grads = torch.autograd.grad(
        (data_of(ref_out) * w_out).sum() + (ref_h_n * w_hn).sum(),
        leaves(theirs) + list(reference.parameters()),
    )
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert_close(grad, ref_grad, tol)


# -- 1. PyTorch's module_db samples and error inputs ---------------------------------------


@pytest.mark.parametrize(("dtype", "training", "index"), SAMPLE_CASES)
def test_pytorch_module_sample_matches_torch_rnn(dtype, training, index):
    torch.manual_seed(index)
    sample = pytorch_samples(dtype, training)[index]
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    model, reference = pair(*args, dtype=dtype, **kwargs)
    model.train(training), reference.train(training)
    inputs = sample.forward_input.args
    assert_same_results(model, reference, inputs, TOLERANCE[dtype])
    if not isinstance(inputs[0], rnn_utils.PackedSequence):  # test_modules' test_forward
        expected = sample.reference_fn(model, *map(fresh, inputs))  # passes the parameters
        for got, want in zip(model(*map(fresh, inputs)), expected, strict=True):
            assert_close(got, want, TOLERANCE[dtype])


@pytest.mark.parametrize(("dtype", "index"), ERROR_CASES)
def test_pytorch_error_input_raises_torch_rnns_error_as_an_rnnprobe_error(dtype, index):
    error = pytorch_error_inputs(dtype)[index]
    given = error.module_error_input
    args, kwargs = given.constructor_input.args, given.constructor_input.kwargs
    for cls in (nn.RNN, ElmanRNN):
        with pytest.raises(error.error_type, match=error.error_regex) as raised:
            module = cls(*args, **kwargs)
            assert error.error_on == ERROR_ON.FORWARD_ERROR, "construction should have failed"
            module(*given.forward_input.args, **given.forward_input.kwargs)
    assert isinstance(raised.value, RnnprobeError)  # one line for the CLI, too


def _sample(index, dtype=F64):
    sample = pytorch_samples(dtype, False)[index]
    return sample.constructor_input.args, sample.constructor_input.kwargs, sample.forward_input


@pytest.mark.parametrize(
    "index",
    [
        i if i in (0, 27, 45, 54) else pytest.param(i, marks=pytest.mark.slow)
        for i in range(0, 64, 9)
    ],
)
def test_gradcheck_and_gradgradcheck_on_pytorch_samples(index):
    torch.manual_seed(index)
    args, kwargs, forward_input = _sample(index)
    model = ElmanRNN(*args, **kwargs).double()
    names = [name for name, _ in model.named_parameters()]
    inputs = [fresh(i) for i in forward_input.args]
    packed = isinstance(inputs[0], rnn_utils.PackedSequence)
    leaf = [inputs[0].data if packed else inputs[0], *inputs[1:]]
    weights = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def fn(first, *rest):
        given = rest[: len(inputs) - 1]
        if packed:
            p = inputs[0]
            first = rnn_utils.PackedSequence(
                first, p.batch_sizes, p.sorted_indices, p.unsorted_indices
            )
        params = dict(zip(names, rest[len(inputs) - 1 :], strict=True))
        out, h_n = torch.func.functional_call(model, params, (first, *given))
        return data_of(out), h_n

    assert torch.autograd.gradcheck(fn, (*leaf, *weights), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (*leaf, *weights), fast_mode=True)


def test_factory_kwargs_device_context_and_to_empty():
    model = ElmanRNN(3, 4, 2, bidirectional=True, dtype=F64)
    assert all(p.dtype == F64 for p in model.parameters())
    with torch.device("meta"):
        on_meta = ElmanRNN(3, 4, 2, bidirectional=True)
    assert all(p.is_meta for p in on_meta.parameters())
    on_meta.to_empty(device="cpu")
    on_meta.reset_parameters()
    out, h_n = on_meta(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 8) and h_n.shape == (4, 2, 4)
    assert isinstance(model, nn.RNNBase) and model.mode == "RNN_TANH"
    assert [len(w) for w in model.all_weights] == [4, 4, 4, 4]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_layers": 2, "bias": False, "batch_first": True}, {"bidirectional": True},
     {"num_layers": 3, "dropout": 0.5}],
)  # fmt: skip
def test_repr_is_torch_rnns_with_our_name(kwargs):
    model, reference = pair(3, 4, **kwargs)
    assert repr(model) == repr(reference).replace("RNN(", "ElmanRNN(", 1)
    assert repr(ElmanRNN(3, 4, nonlinearity="relu")).endswith("nonlinearity='relu')")


def test_pickle_deepcopy_and_state_dict_round_trips_keep_outputs():
    model, _ = pair(3, 4, 2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=F64)
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [
        torch.load(buffer, weights_only=False),
        pickle.loads(pickle.dumps(model)),
        copy.deepcopy(model),
        ElmanRNN(3, 4, 2, bidirectional=True).double(),
    ]
    copies[-1].load_state_dict(model.state_dict())
    for other in copies:
        assert type(other) is ElmanRNN and other.recorder_slot is not model.recorder_slot
        for got, want in zip(other(x), expected, strict=True):
            assert torch.equal(got, want)


def test_non_contiguous_input_and_state_give_the_same_results():
    model, reference = pair(3, 4, 2, bidirectional=True, batch_first=True)
    x = torch.randn(5, 2, 3, dtype=F64).transpose(0, 1)  # (B, T, I), not contiguous
    h0 = torch.randn(2, 4, 4, dtype=F64).transpose(0, 1)
    assert not x.is_contiguous() and not h0.is_contiguous()
    assert_same_results(model, reference, (x, h0), 1e-12)
    for got, want in zip(model(x, h0), model(x.contiguous(), h0.contiguous()), strict=True):
        assert torch.equal(got, want)


def test_train_and_eval_differ_only_through_dropout():
    model, reference = pair(3, 4, 3, dropout=0.5)
    x = torch.randn(6, 2, 3, dtype=F64)
    model.eval(), reference.eval()
    assert_same_results(model, reference, (x,), 1e-12)
    model.train(), reference.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    assert_same_results(model, reference, (x,), 1e-12, seed=3)


# -- 2. Ports of the RNN checks in PyTorch's test/test_nn.py (CPU, plain RNN) ----------------


@pytest.mark.parametrize(
    ("dim", "size"), [(1, 7), ("hidden", 1), (2, 7), ("hidden", 2), ("hidden", 0)]
)
def test_rnn_args_check_wrong_sizes_raise_runtime_error(dim, size):
    """test_rnn_args_check: a wrong input batch, input size, or state shape."""
    input_shape, hidden_shape = [6, 4, 3], [2, 4, 5]
    if dim == "hidden":
        hidden_shape[size] = 7
    else:
        input_shape[dim] = size
    x, hx = torch.randn(input_shape), torch.randn(hidden_shape)
    for module in (nn.RNN(3, 5, 2), ElmanRNN(3, 5, 2)):
        with pytest.raises(RuntimeError):
            module(x, hx)


def test_forward_exception_messages_for_wrong_state_and_input():
    """test_cudnn_forward_exception, the RNN case (it runs on CPU too)."""
    for module in (nn.RNN(10, 20, batch_first=True), ElmanRNN(10, 20, batch_first=True)):
        with pytest.raises(RuntimeError, match=r"Expected hidden.*size.*got"):
            module(torch.randn(2, 3, 10), torch.zeros(1, 2, 19))
        with pytest.raises(RuntimeError, match=re.escape("input.size(-1) must be equal")):
            module(torch.randn(2, 3, 3))


def test_rnn_initial_hidden_state_zero_is_the_default():
    """test_rnn_initial_hidden_state."""
    rnn = ElmanRNN(30, 20, 2)
    x = torch.randn(10, 32, 30)
    for given, default in zip(rnn(x, torch.zeros(2, 32, 20)), rnn(x), strict=True):
        assert torch.equal(given, default)


def test_projections_error_on_rnn():
    """test_projections_errors_on_gru_and_rnn."""
    for cls in (nn.RNN, ElmanRNN):
        with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
            cls(30, 20, 2, proj_size=10)


def _noncontiguous(tensor):
    return torch.stack([torch.zeros_like(tensor), tensor], tensor.dim()).select(tensor.dim(), 1)


LAYOUTS = [  # bias, bidirectional, batch_first, contiguous, variable length, lengths as tensor
    flags for flags in itertools.product((True, False), repeat=6) if flags[4] or not flags[5]
]


@pytest.mark.parametrize("dropout", [0, 1])
@pytest.mark.parametrize("flags", LAYOUTS, ids=lambda f: "".join(str(int(v)) for v in f))
def test_rnn_matches_torch_across_layouts_lengths_and_contiguity(flags, dropout):
    """_test_RNN_cpu_vs_cudnn (dropout 0, and dropout 1 which is deterministic), with nn.RNN
    on the CPU as the reference in place of cuDNN: bias, bidirectional, batch_first,
    contiguous or not, variable lengths (as a list or a tensor)."""
    bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor = flags
    T, B, I, H, L = 7, 6, 10, 6, 2
    D = 2 if bidirectional else 1
    model, reference = pair(
        I, H, L, bias=bias, dropout=dropout, bidirectional=bidirectional, batch_first=batch_first
    )
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=F64)
    hx = torch.randn(L * D, B, H, dtype=F64)
    if not contig:
        x, hx = _noncontiguous(x), _noncontiguous(hx)
    if variable_len:
        lengths = [7, 5, 5, 2, 1, 1]
        lengths = torch.tensor(lengths) if lens_as_tensor else lengths
        x = rnn_utils.pack_padded_sequence(x, lengths, batch_first=batch_first)
        x = rnn_utils.PackedSequence(x.data, x.batch_sizes)  # as PyTorch's test builds it
        x.data.requires_grad_()
    else:
        x.requires_grad_()
    hx.requires_grad_()
    # the same leaves for both: copies would be contiguous
    assert_same_results(model, reference, (x, hx), 1e-12, copy_inputs=False)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_torch_for_both_nonlinearities(nonlinearity):
    """_test_RNN_cpu_vs_cudnn's nonlinearity loop."""
    model, reference = pair(10, 6, 2, nonlinearity=nonlinearity)
    x, hx = torch.randn(7, 6, 10, dtype=F64), torch.randn(2, 6, 6, dtype=F64)
    assert_same_results(model, reference, (x, hx), 1e-12)


@pytest.mark.parametrize("p", [0, 0.276, 0.731, 1])
@pytest.mark.parametrize("train", [True, False])
def test_rnn_dropout_sits_between_layers(p, train):
    """test_RNN_dropout (its CPU half): unit weights make dropout's effect countable."""
    rnn = ElmanRNN(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu").double()
    rnn.train(train)
    with torch.no_grad():
        for weight in rnn.parameters():
            weight.fill_(1)
    output, hy = rnn(torch.ones(1, 1, 10, dtype=F64), torch.zeros(2, 1, 1000, dtype=F64))
    assert output.min() == output.max()
    value = output[0, 0, 0].item()
    if p == 0 or not train:
        assert value == 10000
    elif p == 1:
        assert value == 0
    else:
        assert 8000 < value < 12000
        remainder = (value * (1 - p)) % 10
        assert min(remainder, 10 - remainder) < 1e-2
    assert hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
    assert hy[0, 0, 0].item() == 10 and hy[1, 0, 0].item() == value


@pytest.mark.parametrize("bidirectional", [True, False])
def test_error_rnn_seq_len_zero(bidirectional):
    """test_error_RNN_seq_len_zero."""
    for module in (
        nn.RNN(5, 6, bidirectional=bidirectional),
        ElmanRNN(5, 6, bidirectional=bidirectional),
    ):
        with pytest.raises(
            RuntimeError, match="Expected sequence length to be larger than 0 in RNN"
        ):
            module(torch.ones(0, 10, 5))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_rnn_batch_size_zero(bidirectional):
    """test_RNN_input_size_zero: an empty batch gives empty outputs, and backward works."""
    model, reference = pair(3, 4, 2, bidirectional=bidirectional)
    x = torch.zeros(5, 0, 3, dtype=F64, requires_grad=True)
    out, h_n = model(x)
    ref_out, ref_h_n = reference(x)
    assert out.shape == ref_out.shape == (5, 0, 4 * (2 if bidirectional else 1))
    assert h_n.shape == ref_h_n.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("p", [0, 0.1234])
@pytest.mark.parametrize("train", [True, False])
def test_rnn_dropout_state_survives_saving(p, train):
    """test_RNN_dropout_state: outputs repeat unless dropout is active; save/load works."""
    rnn = ElmanRNN(100, 100, 2, bias=False, dropout=p, nonlinearity="relu").train(train)
    x, hx = torch.rand(1, 1, 100), torch.rand(2, 1, 100)
    output1, hy1 = rnn(x, hx)
    output2, hy2 = rnn(x, hx)
    buffer = io.BytesIO()
    torch.save(rnn, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.flatten_parameters()
    output3, hy3 = loaded(x, hx)
    same = p == 0 or not train
    for a, b in ((output1, output2), (output1, output3), (hy1, hy2), (hy1, hy3)):
        assert torch.equal(a, b) == same


@pytest.mark.parametrize("train", [True, False])
def test_rnn_change_dropout(train):
    """test_RNN_change_dropout: ``rnn.dropout`` may change between calls."""
    rnn = ElmanRNN(100, 100, 2, dropout=0, nonlinearity="relu").double().train(train)
    x = torch.rand(3, 2, 100, dtype=F64)
    previous = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        rnn.dropout = p
        output1, hy1 = rnn(x)
        output2, hy2 = rnn(x)
        repeats = p in (0, 1) or not train
        assert torch.equal(output1, output2) == repeats and torch.equal(hy1, hy2) == repeats
        if previous is not None:
            assert torch.equal(output1, previous) == (not train)
        previous = output1


def test_rnn_weight_norm_keeps_flat_weights_in_step():
    """test_rnn_weight_norm (there on an LSTM) and the CPU half of test_RNN_cudnn_weight_norm."""
    rnn = ElmanRNN(32, 32, 2)
    x = torch.randn(7, 6, 32)
    expected = rnn(x)[0]
    with pytest.warns(FutureWarning):  # weight_norm is deprecated for parametrizations
        rnn = torch.nn.utils.weight_norm(rnn, name="weight_ih_l0")
    assert sum(isinstance(p, nn.Parameter) for p in rnn._flat_weights) == 7
    torch.testing.assert_close(rnn(x)[0], expected)
    rnn = torch.nn.utils.remove_weight_norm(rnn, name="weight_ih_l0")
    assert sum(isinstance(p, nn.Parameter) for p in rnn._flat_weights) == 8
    assert "weight_ih_l0" in rnn._parameters and "weight_ih_l0_v" not in rnn._parameters
    torch.testing.assert_close(rnn(x)[0], expected)


def test_rnn_parametrization_gradients_reach_the_original_weights():
    """Weights computed in forward (torch.nn.utils.parametrize) get their gradients through."""
    model, reference = pair(3, 4, 2)
    for module in (model, reference):
        torch.nn.utils.parametrizations.orthogonal(module, "weight_hh_l0")
    model.load_state_dict(reference.state_dict())
    assert_same_results(model, reference, (torch.randn(5, 2, 3, dtype=F64),), 1e-10)


def test_rnn_nonlinearity_default_named_and_positional():
    """test_RNN_nonlinearity and test_RNN_nonlinearity_passed_as_arg."""
    assert ElmanRNN(1, 10).nonlinearity == "tanh"
    assert ElmanRNN(1, 10, nonlinearity="relu").nonlinearity == "relu"
    assert ElmanRNN(2, 3, 1, "relu").nonlinearity == "relu"
    assert ElmanRNN(2, 3, 1, "relu").mode == "RNN_RELU"
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        ElmanRNN(1, 10, nonlinearity="garbage")


def test_rnn_retain_variables_gives_the_same_gradients_again():
    """test_rnn_retain_variables (double)."""
    rnn = ElmanRNN(10, 20, num_layers=2).double()
    x = torch.randn(5, 6, 10, dtype=F64, requires_grad=True)
    output = rnn(x)
    output[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
    for _ in range(4):
        rnn.zero_grad()
        x.grad.zero_()
        output[0].sum().backward(retain_graph=True)
        for got, want in zip([x.grad] + [p.grad for p in rnn.parameters()], grads, strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("bias", [True, False])
def test_rnn_grad_and_gradgrad(bias):
    """_test_rnn_mod, as test_LSTM_grad_and_gradgrad / test_GRU_grad_and_gradgrad run it."""
    rnn = ElmanRNN(4, 4, bias=bias).double()
    x = torch.rand(1, 3, 4, dtype=F64, requires_grad=True)

    def flat(inp):
        return tuple(rnn(inp))

    assert torch.autograd.gradcheck(flat, (x,), check_batched_grad=False)
    assert torch.autograd.gradgradcheck(flat, (x,), check_batched_grad=False)


@pytest.mark.parametrize(
    ("enforce_sorted", "lengths"),
    [(True, [5]), (False, [5]), (True, [10, 10, 6, 2, 2, 1, 1]), (False, [10, 10, 6, 2, 2, 1, 1]),
     (False, [2, 1, 3, 2, 10, 5, 3])],
)  # fmt: skip
@pytest.mark.parametrize("default_hidden", [True, False])
def test_variable_sequence_packed_equals_each_sequence_alone(
    enforce_sorted, lengths, default_hidden
):
    """test_variable_sequence (there on an LSTM): a packed batch gives each sequence what it
    gives alone — outputs, final states and every gradient."""
    torch.manual_seed(0)
    T, B = max(lengths), len(lengths)
    rnn = ElmanRNN(3, 4, 2, bidirectional=True).double()
    alone = copy.deepcopy(rnn)
    x = torch.randn(T, B, 3, dtype=F64, requires_grad=True)
    h0 = None if default_hidden else torch.randn(4, B, 4, dtype=F64)
    outputs, states = [], []
    for b, n in enumerate(lengths):
        out, h_n = alone(x[:n, b : b + 1], None if h0 is None else h0[:, b : b + 1])
        outputs.append(torch.cat([out, out.new_zeros(T - n, 1, 8)]))
        states.append(h_n)
    expected_out, expected_h_n = torch.cat(outputs, 1), torch.cat(states, 1)
    packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    packed_out, h_n = rnn(packed, h0)
    unpacked, unpacked_lengths = rnn_utils.pad_packed_sequence(packed_out)
    torch.testing.assert_close(h_n, expected_h_n)
    torch.testing.assert_close(unpacked, expected_out)
    assert unpacked_lengths.tolist() == lengths
    expected_out.sum().backward()
    grad_x = x.grad.clone()
    x.grad.zero_()
    unpacked.sum().backward()
    torch.testing.assert_close(x.grad, grad_x)
    for p, q in zip(rnn.parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_state_saved_without_proj_size_still_loads():
    """test_save_lstm_compatibility: modules pickled before proj_size existed load."""
    rnn = ElmanRNN(2, 3)
    x = torch.randn(32, 5, 2)
    expected = rnn(x)
    state = rnn.__dict__
    del state["proj_size"]
    loaded = ElmanRNN(2, 3)
    loaded.__setstate__(state)
    for got, want in zip(loaded(x), expected, strict=True):
        assert torch.equal(got, want)


def test_tied_weights_train_like_torch_rnn():
    """test_cudnn_weight_tying's CPU half: a bias shared by both directions."""
    model, reference = pair(10, 20, bidirectional=True, batch_first=True)
    for module in (model, reference):
        module.bias_ih_l0_reverse = module.bias_ih_l0
    x, hx = torch.randn(5, 4, 10, dtype=F64), torch.randn(2, 5, 20, dtype=F64)
    assert_same_results(model, reference, (x, hx), 1e-12)


def test_partial_flat_weights_survive_conversion():
    """test_partial_flat_weights with a dtype conversion in place of the move to CUDA."""
    rnn = ElmanRNN(10, 6, 2)
    x = torch.randn(3, 2, 10)
    expected = rnn(x)[0]
    weight = rnn.weight_hh_l0
    del rnn.weight_hh_l0
    assert not hasattr(rnn, "weight_hh_l0")
    rnn.double()
    rnn.weight_hh_l0 = nn.Parameter(weight.detach().double())
    torch.testing.assert_close(rnn(x.double())[0], expected.double())


# -- 3. torch.compile ------------------------------------------------------------------------


_COMPILE_TIMING = """
import json, sys, time, warnings
import torch
from rnnprobe.core.models import RNNLanguageModel
warnings.simplefilter("ignore")
kind, seq_len, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = RNNLanguageModel(96, 64, 256, 2, rnn=kind)
tokens = torch.randint(1, 96, (32, seq_len + 1))
def loss_of(batch):
    return model.next_token_loss(batch)[0]
compiled = torch.compile(loss_of)
def step(fn):
    model.zero_grad(set_to_none=True)
    fn(tokens).backward()
start = time.perf_counter()
step(compiled)
result = {"first_call_s": time.perf_counter() - start}
for name, fn in (("compiled", compiled), ("eager", loss_of)):
    step(fn)
    start = time.perf_counter()
    for _ in range(steps):
        step(fn)
    result[name + "_ms"] = (time.perf_counter() - start) / steps * 1e3
print(json.dumps(result))
"""


def compile_benchmark(seq_len: int = 32, steps: int = 5) -> dict[str, dict[str, float]]:
    """Return, per RNN kind, torch.compile's first-call seconds and step ms vs eager.

    A training step of the reference language model (vocab 96, embedding 64, hidden 256,
    2 layers, batch 32), each kind in a fresh process with an empty inductor cache, so both
    first calls pay the same start-up. ElmanRNN's scan runs eager inside the compiled model
    (a graph break), so only the embedding, head and loss are compiled.
    """
    import json
    import subprocess
    import sys
    import tempfile

    results = {}
    for kind in ("elman", "torch"):
        with tempfile.TemporaryDirectory(prefix="rnnprobe-inductor-") as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            command = [sys.executable, "-c", _COMPILE_TIMING, kind, str(seq_len), str(steps)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.slow
# torch's own: importing inductor deprecates torch.jit; dynamo reads .grad of non-leaf tensors
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_compile_benchmark_first_call_takes_seconds_and_records_still_work(capsys):
    results = compile_benchmark()
    with capsys.disabled():
        for kind, r in results.items():
            print(
                f"\n{kind:6s} torch.compile first call {r['first_call_s']:6.1f} s   step: "
                f"compiled {r['compiled_ms']:7.1f} ms  eager {r['eager_ms']:7.1f} ms"
            )
    assert results["elman"]["first_call_s"] < 120
    torch._dynamo.reset()
    model = RNNLanguageModel(20, 8, 16, 2)
    tokens = torch.randint(1, 20, (4, 9))
    compiled = torch.compile(lambda t: model.next_token_loss(t)[0])
    records = []
    for fn in (compiled, lambda t: model.next_token_loss(t)[0]):
        with capture(model, keep_adjoints=True) as cap:
            fn(tokens).backward()
        records.append(cap.records()[0])
    for got, want in zip(records[0].layers, records[1].layers, strict=True):
        torch.testing.assert_close(got.delta, want.delta)
