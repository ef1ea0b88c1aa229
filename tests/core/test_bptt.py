"""The hand BPTT against torch.nn.RNN, a naive unrolled loop, gradcheck and BPTT identities."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rnnprobe import ElmanRNN, RnnprobeError
from rnnprobe.core.bptt import (
    ElmanStackFunction,
    StackSpec,
    block_steps,
    input_grad_over,
    make_schedule,
)
from rnnprobe.core.capture import capture
from tests.support.reference import unrolled_rnn

DTYPE = torch.float64


@st.composite
def rnn_cases(draw, max_len: int = 64):
    """A random stacked RNN configuration, input, optional h0 and a random linear loss."""
    case = {
        "input_size": draw(st.integers(1, 5)),
        "hidden_size": draw(st.integers(1, 6)),
        "num_layers": draw(st.integers(1, 3)),
        "nonlinearity": draw(st.sampled_from(["tanh", "relu"])),
        "bias": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "seq_len": draw(st.integers(1, max_len)),
        "batch": draw(st.integers(1, 4)),
        "with_h0": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    return case


def build(case):
    """Return (ElmanRNN, nn.RNN with the same weights, x, h0 or None, loss weights)."""
    gen = torch.Generator().manual_seed(case["seed"])
    reference = torch.nn.RNN(
        case["input_size"],
        case["hidden_size"],
        case["num_layers"],
        nonlinearity=case["nonlinearity"],
        bias=case["bias"],
        batch_first=case["batch_first"],
    ).to(DTYPE)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) * 0.6)
    model = ElmanRNN.from_torch(reference)
    T, B = case["seq_len"], case["batch"]
    shape = (B, T, case["input_size"]) if case["batch_first"] else (T, B, case["input_size"])
    x = torch.randn(shape, generator=gen, dtype=DTYPE)
    hidden = (case["num_layers"], B, case["hidden_size"])
    h0 = torch.randn(hidden, generator=gen, dtype=DTYPE) if case["with_h0"] else None
    out_shape = (*shape[:2], case["hidden_size"])
    weights = (
        torch.randn(out_shape, generator=gen, dtype=DTYPE),
        torch.randn(hidden, generator=gen, dtype=DTYPE),
    )
    return model, reference, x, h0, weights


def close(got, want, tol):
    """|got - want| ≤ tol, relative to the largest magnitude once that exceeds 1."""
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    return got.shape == want.shape and bool(((got - want).abs() <= tol * scale).all())


def linear_loss(output, h_n, weights):
    return (output * weights[0]).sum() + (h_n * weights[1]).sum()


def time_major(tensor, batch_first):
    return tensor.transpose(0, 1) if batch_first else tensor


@given(rnn_cases())
def test_forward_and_all_gradients_match_torch_rnn(case):
    model, reference, x, h0, weights = build(case)
    inputs = [x.requires_grad_()] + ([h0.requires_grad_()] if h0 is not None else [])
    out, h_n = model(x, h0)
    ref_out, ref_h_n = reference(x, h0)
    assert close(out, ref_out, 1e-12)
    assert close(h_n, ref_h_n, 1e-12)
    grads = torch.autograd.grad(linear_loss(out, h_n, weights), inputs + list(model.parameters()))
    ref_grads = torch.autograd.grad(
        linear_loss(ref_out, ref_h_n, weights), inputs + list(reference.parameters())
    )
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert close(grad, ref_grad, 1e-10)


@pytest.fixture(autouse=True)
def small_record_blocks(monkeypatch):
    """Blocks of at most 5 steps make the buffered norm path cross many block boundaries, and
    256-byte chunks make input gradients overwrite g in many chunks."""
    monkeypatch.setattr("rnnprobe.core.bptt.RECORD_BLOCK", 5)
    monkeypatch.setattr("rnnprobe.core.bptt.BLOCK_BYTES", 2**8)


@given(rnn_cases())
def test_recorded_adjoints_match_retain_grad_on_unrolled_loop(case):
    model, _, x, h0, weights = build(case)
    x_tm = time_major(x, case["batch_first"])
    h0_full = (
        h0
        if h0 is not None
        else x.new_zeros(case["num_layers"], case["batch"], case["hidden_size"])
    )
    ref_out, states, _ = unrolled_rnn(x_tm, h0_full, model)
    ref_h_n = torch.stack([layer[-1] for layer in states])
    linear_loss(time_major(ref_out, case["batch_first"]), ref_h_n, weights).backward()

    model.zero_grad()  # the unrolled loop shares the model's parameters
    with capture(model, keep_adjoints=True) as cap:
        out, h_n = model(x, h0)
        linear_loss(out, h_n, weights).backward()
    (record,) = cap.records()
    for layer, layer_record in enumerate(record.layers):
        expected = torch.stack([h.grad for h in states[layer]])
        assert close(layer_record.delta, expected, 1e-10)
        assert close(layer_record.adjoint_norm, expected.norm(dim=-1), 1e-10)
    # Without δ kept, the norms come from a small buffer of blocks, and the layers below the
    # top write g over their ε: the records and the gradients must be the same.
    kept_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with capture(model) as cap:
        out, h_n = model(x, h0)
        linear_loss(out, h_n, weights).backward()
    for blocked, kept in zip(cap.records()[0].layers, record.layers, strict=True):
        assert blocked.delta is None
        for name in ("adjoint_norm", "recurrent_norm", "direct_norm"):
            assert close(getattr(blocked, name), getattr(kept, name), 1e-12), name
    for p, kept_grad in zip(model.parameters(), kept_grads, strict=True):
        assert close(p.grad, kept_grad, 1e-12)
    # The top layer's direct part is the loss's own gradient at each output.
    direct_top = time_major(weights[0], case["batch_first"])
    assert close(record.layers[-1].direct_norm, direct_top.norm(dim=-1), 1e-12)
    recurrent = record.layers[-1].delta - direct_top
    assert close(record.layers[-1].recurrent_norm, recurrent.norm(dim=-1), 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_no_hx_skips_the_products_with_h0_and_changes_no_bit(dtype, bidirectional):
    torch.manual_seed(0)
    model = ElmanRNN(3, 8, num_layers=2, bidirectional=bidirectional).to(dtype)
    x = torch.randn(6, 4, 3, dtype=dtype)
    zeros = torch.zeros(4 if bidirectional else 2, 4, 8, dtype=dtype)
    results = []
    for hx in (None, zeros):  # None: zero_h0, the products with h0 skipped
        model.zero_grad()
        with capture(model) as cap:
            out, h_n = model(x, hx)
            (out.sin().sum() + h_n.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((out, h_n, grads, cap.records()[0].layers))
    (out, h_n, grads, layers), (z_out, z_h_n, z_grads, z_layers) = results
    assert torch.equal(out, z_out) and torch.equal(h_n, z_h_n)
    assert all(torch.equal(a, b) for a, b in zip(grads, z_grads, strict=True))
    for layer, z_layer in zip(layers, z_layers, strict=True):
        for name in ("adjoint_norm", "recurrent_norm", "direct_norm", "grad_w_hh_norm"):
            assert torch.equal(getattr(layer, name), getattr(z_layer, name)), name


@pytest.mark.parametrize(
    ("T", "H", "steps"),
    [(8, 256, 8), (32, 256, 16), (64, 256, 32), (128, 256, 64), (512, 256, 64), (128, 1024, 16)],
)
def test_record_blocks_hold_at_most_half_the_steps_and_two_mib(monkeypatch, T, H, steps):
    # δ and its ε copy hold half the steps each (16 at least), δ alone all T: they add at most
    # one (T, B, H) buffer; 2 MiB at most each. B = 32, float32: a step is 128·H bytes.
    monkeypatch.setattr("rnnprobe.core.bptt.RECORD_BLOCK", 1024)  # the fixture's undone
    monkeypatch.setattr("rnnprobe.core.bptt.BLOCK_BYTES", 2**21)
    assert block_steps(T, 32 * H * 4) == steps  # δ and ε's copy
    assert block_steps(T, 32 * H * 4, buffers=1) == min(T, 2**21 // (32 * H * 4))  # δ alone
    assert block_steps(T, 2**22) == 1  # a step above the budget: one step a block


@pytest.mark.parametrize(("N", "H"), [(7, 4), (1, 3), (40, 6), (9, 1)])
@pytest.mark.parametrize("chunk_bytes", [1, 8 * 4 * 3, 2**20])
def test_input_gradient_written_over_g_equals_the_product(monkeypatch, N, H, chunk_bytes):
    monkeypatch.setattr("rnnprobe.core.bptt.BLOCK_BYTES", chunk_bytes)
    g2 = torch.randn(N, H, dtype=torch.float64)
    w_ih = torch.randn(H, H, dtype=torch.float64)
    expected = g2 @ w_ih
    got = input_grad_over(g2, w_ih)
    assert close(got, expected, 1e-14)
    if max(1, chunk_bytes // (H * 8)) < N:  # several chunks: the result lives in g's memory
        assert got.data_ptr() == g2.data_ptr()
    with pytest.raises(ValueError, match="to write over g"):
        input_grad_over(g2, torch.randn(H, H + 1, dtype=torch.float64))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_blocks_of_one_step_give_the_same_records_and_gradients(monkeypatch, bidirectional):
    torch.manual_seed(0)
    model = ElmanRNN(3, 4, num_layers=3, bidirectional=bidirectional).double()
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    results = []
    for block_bytes in (2**19, 1):  # 5 steps a block (the fixture), then 1 step a block
        monkeypatch.setattr("rnnprobe.core.bptt.BLOCK_BYTES", block_bytes)
        model.zero_grad()
        with capture(model) as cap:
            out, _ = model(x)
            out.pow(2).sum().backward()
        results.append((cap.records()[0].layers, [p.grad.clone() for p in model.parameters()]))
    (layers, grads), (one_step_layers, one_step_grads) = results
    for record, one_step in zip(layers, one_step_layers, strict=True):
        for name in ("adjoint_norm", "recurrent_norm", "direct_norm"):
            assert torch.equal(getattr(record, name), getattr(one_step, name)), name
    for grad, one_step_grad in zip(grads, one_step_grads, strict=True):
        assert torch.equal(grad, one_step_grad)


@given(rnn_cases())
def test_grad_w_hh_is_sum_over_steps_of_gated_adjoint_outer_previous_state(case):
    model, _, x, h0, weights = build(case)
    with capture(model, keep_adjoints=True) as cap:
        out, h_n = model(x, h0)
        linear_loss(out, h_n, weights).backward()
    (record,) = cap.records()
    x_tm = time_major(x, case["batch_first"])
    h0_full = (
        h0
        if h0 is not None
        else x.new_zeros(case["num_layers"], case["batch"], case["hidden_size"])
    )
    _, states, preacts = unrolled_rnn(x_tm, h0_full, model)
    for layer, layer_record in enumerate(record.layers):
        a = torch.stack(preacts[layer]).detach()
        phi_prime = 1 - torch.tanh(a) ** 2 if case["nonlinearity"] == "tanh" else (a > 0).to(DTYPE)
        g = phi_prime * layer_record.delta  # (T, B, H)
        h = torch.stack(states[layer]).detach()
        h_prev = torch.cat([h0_full[layer].unsqueeze(0), h[:-1]])
        per_step = torch.einsum("tbi,tbj->tij", g, h_prev)
        w_hh = model.layer_weights(layer)[1]
        assert close(w_hh.grad, per_step.sum(0), 1e-10)
        step_norms = per_step.flatten(1).norm(dim=1)
        assert close(layer_record.grad_w_hh_norm**2, step_norms**2, 1e-9)
        layer_in = x_tm if layer == 0 else torch.stack(states[layer - 1]).detach()
        ih_norms = torch.einsum("tbi,tbj->tij", g, layer_in).flatten(1).norm(dim=1)
        assert close(layer_record.grad_w_ih_norm**2, ih_norms**2, 1e-9)


@given(rnn_cases(max_len=6))
def test_gradcheck_passes_on_the_stack_function(case):
    model, _, x, h0, _ = build(case)
    x_tm = time_major(x, case["batch_first"]).clone().requires_grad_()
    h0_full = (
        h0
        if h0 is not None
        else x.new_zeros(case["num_layers"], case["batch"], case["hidden_size"])
    ).requires_grad_()
    _, _, preacts = unrolled_rnn(x_tm.detach(), h0_full.detach(), model)
    if case["nonlinearity"] == "relu":  # keep ReLU away from its kink
        assume(min(torch.stack(a).abs().min().item() for a in preacts) > 1e-3)
    weights = [w.detach().clone().requires_grad_() for w in model.flat_weights()]

    spec = StackSpec(
        case["nonlinearity"],
        case["bias"],
        case["num_layers"],
        (make_schedule(case["seq_len"], reverse=False),),
    )

    def fn(x_, h0_, *w):  # (output, h_n); the lower layers' outputs are not differentiable
        return ElmanStackFunction.apply(x_, h0_, model.recorder_slot, spec, *w)[:2]

    assert torch.autograd.gradcheck(fn, (x_tm, h0_full, *weights), eps=1e-6, atol=1e-7)


@given(rnn_cases(max_len=24), st.data())
def test_gradient_reach_equals_separate_backward_passes(case, data):
    model, _, x, h0, weights = build(case)
    T = case["seq_len"]
    sources = sorted(data.draw(st.sets(st.integers(0, T - 1), min_size=1, max_size=4)))
    sub = data.draw(st.integers(1, case["batch"]))
    with capture(model, reach=True, reach_sources=sources, reach_batch=sub) as cap:
        out, _ = model(x, h0)
        (out * weights[0]).sum().backward()  # ℓ_s = ⟨w_s, h_s⟩ on the top layer
    (record,) = cap.records()
    x_tm = time_major(x, case["batch_first"])
    h0_full = (
        h0
        if h0 is not None
        else x.new_zeros(case["num_layers"], case["batch"], case["hidden_size"])
    )
    ref_out, states, _ = unrolled_rnn(x_tm, h0_full, model)
    w_tm = time_major(weights[0], case["batch_first"])
    for i, s in enumerate(sources):
        flat = [h for layer in states for h in layer]
        grads = torch.autograd.grad(
            (ref_out[s] * w_tm[s]).sum(), flat, allow_unused=True, retain_graph=True
        )
        for layer in range(case["num_layers"]):
            for t in range(T):
                grad = grads[layer * T + t]
                expected = (
                    torch.zeros(sub, dtype=DTYPE) if grad is None else grad[:sub].norm(dim=-1)
                )
                assert close(record.reach[layer, i, t], expected, 1e-10)


@given(rnn_cases(max_len=16), st.randoms(use_true_random=False))
def test_permuting_the_batch_permutes_per_sample_records(case, rng):
    model, _, x, h0, weights = build(case)
    B = case["batch"]
    perm = list(range(B))
    rng.shuffle(perm)
    perm = torch.tensor(perm)
    batch_dim = 0 if case["batch_first"] else 1

    def records(x_, h0_, w_out, w_hn):
        with capture(model, reach=True, reach_batch=B) as cap:
            out, h_n = model(x_, h0_)
            linear_loss(out, h_n, (w_out, w_hn)).backward()
        return cap.records()[0]

    plain = records(x, h0, *weights)
    permuted = records(
        x.index_select(batch_dim, perm),
        None if h0 is None else h0[:, perm],
        weights[0].index_select(batch_dim, perm),
        weights[1][:, perm],
    )
    for a, b in zip(plain.layers, permuted.layers, strict=True):
        for name in ("adjoint_norm", "direct_norm", "recurrent_norm"):
            assert close(getattr(a, name)[:, perm], getattr(b, name), 1e-12)
        assert close(a.grad_w_hh_norm, b.grad_w_hh_norm, 1e-10)
    assert close(plain.reach[..., perm], permuted.reach, 1e-12)


@given(
    st.integers(1, 6),
    st.integers(1, 64),
    st.integers(1, 4),
    st.floats(0.05, 0.99),
    st.integers(0, 2**31 - 1),
)
def test_tanh_adjoints_decay_at_least_as_fast_as_sigma_max_powers(hidden, T, batch, sigma, seed):
    gen = torch.Generator().manual_seed(seed)
    model = ElmanRNN(3, hidden).to(DTYPE)
    with torch.no_grad():
        w = torch.randn(hidden, hidden, generator=gen, dtype=DTYPE)
        model.weight_hh_l0.copy_(w * sigma / torch.linalg.matrix_norm(w, ord=2))
    x = torch.randn(T, batch, 3, generator=gen, dtype=DTYPE)
    w_last = torch.randn(batch, hidden, generator=gen, dtype=DTYPE)
    with capture(model) as cap:
        out, _ = model(x)
        (out[-1] * w_last).sum().backward()  # the loss at the last step only
    norms = cap.records()[0].layers[0].adjoint_norm  # (T, B)
    bound = sigma ** torch.arange(T - 1, -1, -1, dtype=DTYPE).unsqueeze(1) * norms[-1]
    assert bool((norms <= bound * (1 + 1e-9) + 1e-15).all())


def test_state_dict_moves_both_ways_and_outputs_agree():
    torch.manual_seed(0)
    reference = torch.nn.RNN(4, 8, 2, nonlinearity="relu", batch_first=True)
    model = ElmanRNN.from_torch(reference)
    assert list(model.state_dict()) == list(reference.state_dict())
    back = model.to_torch()
    x = torch.randn(3, 5, 4)
    assert torch.allclose(back(x)[0], reference(x)[0])
    assert torch.allclose(model(x)[0], reference(x)[0], atol=1e-6)
    fresh = torch.nn.RNN(4, 8, 2, nonlinearity="relu", batch_first=True)
    fresh.load_state_dict(model.state_dict())


def test_unbatched_input_matches_torch_rnn():
    torch.manual_seed(1)
    reference = torch.nn.RNN(3, 5, 2).double()
    model = ElmanRNN.from_torch(reference)
    x, h0 = torch.randn(7, 3, dtype=DTYPE), torch.randn(2, 5, dtype=DTYPE)
    for got, want in zip(model(x, h0), reference(x, h0), strict=True):
        assert got.shape == want.shape
        assert close(got, want, 1e-12)


@pytest.mark.parametrize(
    ("make", "kind", "message"),
    [
        (lambda m: m(torch.randn(5, 2, 3, 4)), ValueError, "Expected input to be 2D or 3D"),
        (lambda m: m(torch.randn(5, 2, 7)), RuntimeError, r"input.size\(-1\) must be equal"),
        (
            lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 2, 9)),
            RuntimeError,
            r"Expected hidden size \(1, 2, 6\), got \[1, 2, 9\]",
        ),
        (lambda m: m(torch.randn(0, 2, 3)), RuntimeError, "sequence length to be larger than 0"),
    ],
)
def test_bad_input_gets_torch_rnns_error_which_is_also_an_rnnprobe_error(make, kind, message):
    model = ElmanRNN(3, 6)
    with pytest.raises(RnnprobeError, match=message) as error:
        make(model)
    assert isinstance(error.value, kind)
    with pytest.raises(kind, match=message):
        make(torch.nn.RNN(3, 6))


def test_unknown_nonlinearity_is_rejected_by_name():
    with pytest.raises(RnnprobeError, match="Unknown nonlinearity 'sigmoid'"):
        ElmanRNN(3, 4, nonlinearity="sigmoid")


# -- nn.RNN's whole contract: bidirectional, dropout, packed batches --------------------------


@st.composite
def full_cases(draw, max_len: int = 6):
    """A configuration using everything nn.RNN accepts, an input (padded lengths), a seed."""
    T, B = draw(st.integers(1, max_len)), draw(st.integers(1, 4))
    packed = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if packed else [T] * B
    lengths[draw(st.integers(0, B - 1))] = T  # the longest sequence sets T
    return {
        "input_size": draw(st.integers(1, 4)),
        "hidden_size": draw(st.integers(1, 4)),
        "num_layers": draw(st.integers(1, 3)),
        "nonlinearity": draw(st.sampled_from(["tanh", "relu"])),
        "bias": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "bidirectional": draw(st.booleans()),
        "dropout": draw(st.sampled_from([0.0, 0.0, 0.3, 0.7])),
        "packed": packed,
        "lengths": lengths,
        "seq_len": T,
        "batch": B,
        "with_h0": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def build_full(case):
    """Return (ElmanRNN, nn.RNN alike, padded x (time-major), h0 or None), training mode."""
    gen = torch.Generator().manual_seed(case["seed"])
    names = ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first")
    kwargs = {name: case[name] for name in names}
    dropout = case["dropout"] if case["num_layers"] > 1 else 0.0
    reference = torch.nn.RNN(
        **kwargs, dropout=dropout, bidirectional=case["bidirectional"], dtype=DTYPE
    )
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) * 0.6)
    model = ElmanRNN.from_torch(reference)
    T, B, D = case["seq_len"], case["batch"], 2 if case["bidirectional"] else 1
    x = torch.randn(T, B, case["input_size"], generator=gen, dtype=DTYPE)
    for b, n in enumerate(case["lengths"]):
        x[n:, b] = 0
    hidden = (case["num_layers"] * D, B, case["hidden_size"])
    h0 = torch.randn(hidden, generator=gen, dtype=DTYPE) if case["with_h0"] else None
    return model.train(), reference.train(), x, h0


def as_input(case, x):
    """Return the module input for padded time-major x: packed, or laid out as configured."""
    if case["packed"]:
        return torch.nn.utils.rnn.pack_padded_sequence(x, case["lengths"], enforce_sorted=False)
    return time_major(x, case["batch_first"])


def padded_output(case, output):
    """Return the output as padded time-major (T, B, D·H), zero at padded steps."""
    if case["packed"]:
        total = case["seq_len"]
        return torch.nn.utils.rnn.pad_packed_sequence(output, total_length=total)[0]
    return time_major(output, case["batch_first"])


def run_full(case, module, x, h0):
    """Run ``module`` on the case's input with torch's generator seeded (dropout masks)."""
    torch.manual_seed(case["seed"])
    output, h_n = module(as_input(case, x), h0)
    return padded_output(case, output), h_n


def drawn_masks(case):
    """Return the dropout masks nn.RNN draws for this case, padded (T, B, D·H), batch order.

    Drawn as the ATen RNN draws them (bernoulli_(1 - p) / (1 - p) on each lower layer's output,
    the packed data for a packed batch); ``test_full_contract_matches_torch_rnn`` checks that
    ElmanRNN's outputs equal nn.RNN's under the same seed, so these are its masks too.
    """
    p = case["dropout"]
    if p == 0 or case["num_layers"] == 1:
        return None
    torch.manual_seed(case["seed"])
    T, B = case["seq_len"], case["batch"]
    width = case["hidden_size"] * (2 if case["bidirectional"] else 1)
    probe = torch.zeros(T, B, 1, dtype=DTYPE)
    packed = torch.nn.utils.rnn.pack_padded_sequence(probe, case["lengths"], enforce_sorted=False)
    masks = []
    for _ in range(case["num_layers"] - 1):
        shape = (packed.data.shape[0], width) if case["packed"] else (T, B, width)
        noise = torch.empty(shape, dtype=DTYPE).bernoulli_(1 - p).div_(1 - p)
        if case["packed"]:
            noise = torch.nn.utils.rnn.pad_packed_sequence(packed._replace(data=noise))[0]
        masks.append(noise)
    return masks


def unrolled_full(case, x, h0, rnn, masks):
    """Brute-force twin of the scan: each sequence alone, one step at a time, its own length.

    Returns (output (T, B, D·H) zero-padded, h_n (L·D, B, H), states[l][d][(t, b)] (H,)
    with ``retain_grad``, present only at real steps).
    """
    phi = torch.tanh if rnn.nonlinearity == "tanh" else torch.relu
    T, B, D, H = x.shape[0], x.shape[1], 2 if rnn.bidirectional else 1, rnn.hidden_size
    zero = x.new_zeros(D * H)
    layer_input = {(t, b): x[t, b] for t in range(T) for b in range(B)}
    states, finals = [], []
    for layer in range(rnn.num_layers):
        layer_states = []
        for d in range(D):
            suffix = f"l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = rnn.layer_weights(layer, d)
            bias = (
                getattr(rnn, f"bias_ih_{suffix}") + getattr(rnn, f"bias_hh_{suffix}")
                if rnn.bias
                else 0
            )
            found = {}
            for b, n in enumerate(case["lengths"]):
                h = h0[layer * D + d, b]
                for t in range(n) if d == 0 else range(n - 1, -1, -1):
                    h = phi(w_ih @ layer_input[(t, b)] + w_hh @ h + bias)
                    h.retain_grad()
                    found[(t, b)] = h
                finals.append(h)
            layer_states.append(found)
        states.append(layer_states)
        below = {}
        for t in range(T):
            for b, n in enumerate(case["lengths"]):
                h = torch.cat([layer_states[d][(t, b)] for d in range(D)]) if t < n else zero
                has_mask = masks is not None and layer < len(masks)
                below[(t, b)] = h * masks[layer][t, b] if has_mask else h
        layer_input = below
    outputs = torch.stack([torch.stack([below[(t, b)] for b in range(B)]) for t in range(T)])
    if masks is not None and rnn.num_layers - 1 < len(masks):
        raise AssertionError("the top layer has no mask")
    h_n = torch.stack(finals).view(rnn.num_layers, D, B, H).reshape(-1, B, H)
    return outputs, h_n, states


def full_loss(case, output, h_n):
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    w_out = torch.randn(output.shape, generator=gen, dtype=DTYPE)
    for b, n in enumerate(case["lengths"]):
        w_out[n:, b] = 0  # padded steps are no outputs of a packed batch
    return (output * w_out).sum() + (h_n * torch.randn(h_n.shape, generator=gen, dtype=DTYPE)).sum()


@given(full_cases())
def test_full_contract_matches_torch_rnn(case):
    model, reference, x, h0 = build_full(case)
    x.requires_grad_()
    h0 = None if h0 is None else h0.requires_grad_()
    leaves = [x] + ([h0] if h0 is not None else [])
    out, h_n = run_full(case, model, x, h0)
    ref_out, ref_h_n = run_full(case, reference, x, h0)
    assert close(out, ref_out, 1e-12)
    assert close(h_n, ref_h_n, 1e-12)
    grads = torch.autograd.grad(full_loss(case, out, h_n), leaves + list(model.parameters()))
    ref_grads = torch.autograd.grad(
        full_loss(case, ref_out, ref_h_n), leaves + list(reference.parameters())
    )
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert close(grad, ref_grad, 1e-10)


@given(full_cases())
def test_full_contract_adjoints_match_retain_grad_and_are_zero_at_padded_steps(case):
    model, _, x, h0 = build_full(case)
    D = 2 if case["bidirectional"] else 1
    h0_full = (
        h0
        if h0 is not None
        else x.new_zeros(case["num_layers"] * D, case["batch"], case["hidden_size"])
    )
    ref_out, ref_h_n, states = unrolled_full(case, x, h0_full, model, drawn_masks(case))
    full_loss(case, ref_out, ref_h_n).backward()
    with capture(model, keep_adjoints=True) as cap:
        out, h_n = run_full(case, model, x, h0)
        full_loss(case, out, h_n).backward()
    assert close(out, ref_out, 1e-12)
    (record,) = cap.records()
    real = torch.arange(case["seq_len"])[:, None] < torch.tensor(case["lengths"])[None, :]
    if case["packed"]:
        assert torch.equal(record.real, real)
    else:
        assert record.real is None
    layers = [(layer, d) for layer in range(case["num_layers"]) for d in range(D)]
    assert [(r.layer, r.direction) for r in record.layers] == layers
    for r, (layer, d) in zip(record.layers, layers, strict=True):
        expected = torch.zeros_like(r.delta)
        for (t, b), h in states[layer][d].items():
            expected[t, b] = h.grad
        assert close(r.delta, expected, 1e-10)
        assert close(r.adjoint_norm, expected.norm(dim=-1), 1e-10)
        assert bool((r.adjoint_norm[~real] == 0).all())  # exactly zero where no step exists


@settings(max_examples=6)
@given(full_cases(max_len=3))
def test_full_contract_gradgradcheck_tanh(case):
    # ReLU's kink at 0 defeats finite differences; two layers show every coupling
    case = {**case, "nonlinearity": "tanh", "num_layers": min(case["num_layers"], 2)}
    model, _, x, h0 = build_full(case)
    names = [name for name, _ in model.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in model.parameters()]
    inputs = [x.requires_grad_()] + ([h0.requires_grad_()] if h0 is not None else [])

    def fn(x_, *rest):
        h0_, rest = (rest[0], rest[1:]) if h0 is not None else (None, rest)
        torch.manual_seed(case["seed"])  # the same dropout masks at every call
        params = dict(zip(names, rest, strict=True))
        out, h_n = torch.func.functional_call(model, params, (as_input(case, x_), h0_))
        return padded_output(case, out), h_n

    assert torch.autograd.gradgradcheck(fn, (*inputs, *weights), fast_mode=True)


@settings(max_examples=10)
@given(full_cases())
def test_torch_func_grad_equals_autograd(case):
    """torch.func.grad of parameters (and input): packed batches too, which nn.RNN cannot."""
    model, _, x, h0 = build_full(case)
    params = {name: p.detach() for name, p in model.named_parameters()}
    x.requires_grad_()
    packed = as_input(case, x) if case["packed"] else None  # then the gradients of params only
    # torch's pad/pack utilities do not run under torch.func: pack the loss weights outside
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    D = 2 if case["bidirectional"] else 1
    out_shape = (case["seq_len"], case["batch"], D * case["hidden_size"])
    w_out = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    w_packed = (
        as_input(case, w_out).data if case["packed"] else time_major(w_out, case["batch_first"])
    )

    def loss(params, x_):
        torch.manual_seed(case["seed"])
        given = packed if packed is not None else time_major(x_, case["batch_first"])
        out, h_n = torch.func.functional_call(model, params, (given, h0))
        return ((out.data if packed is not None else out) * w_packed).sum() + h_n.square().sum()

    grads = torch.func.grad(loss, argnums=(0, 1))(params, x)
    expected = torch.autograd.grad(
        loss(dict(model.named_parameters()), x), [*model.parameters(), x]
    )
    for (name, grad), want in zip(grads[0].items(), expected, strict=False):
        assert close(grad, want, 1e-10), name
    if packed is None:
        assert close(grads[1], expected[-1], 1e-10)


def test_jacrev_vmap_and_vjp_agree_with_autograd():
    torch.manual_seed(2)
    model = ElmanRNN(2, 3, 2, bidirectional=True).double()
    x = torch.randn(4, 2, 2, dtype=DTYPE)
    h0 = torch.randn(4, 2, 3, dtype=DTYPE)

    def output(x_, h0_=h0):
        return model(x_, h0_)[0]

    expected = torch.autograd.functional.jacobian(output, x)
    assert close(torch.func.jacrev(output)(x), expected, 1e-12)
    hessian = torch.func.jacrev(torch.func.jacrev(lambda x_: output(x_).square().sum()))(x)
    assert close(
        hessian, torch.autograd.functional.hessian(lambda x_: output(x_).square().sum(), x), 1e-10
    )
    xs, h0s = torch.randn(3, 4, 2, 2, dtype=DTYPE), torch.randn(3, 4, 2, 3, dtype=DTYPE)
    assert close(torch.func.vmap(output)(xs), torch.stack([output(a) for a in xs]), 1e-12)
    by_state = torch.func.vmap(lambda h: output(x, h))(h0s)  # only the state is batched
    assert close(by_state, torch.stack([output(x, h) for h in h0s]), 1e-12)
    out, vjp = torch.func.vjp(output, x)
    (grad,) = vjp(torch.ones_like(out))
    assert close(grad, expected.sum(dim=(0, 1, 2)), 1e-12)


def test_create_graph_backward_records_what_the_fast_backward_records():
    torch.manual_seed(3)
    model = ElmanRNN(3, 4, 2, bidirectional=True).double()
    x = torch.randn(5, 2, 3, dtype=DTYPE, requires_grad=True)
    records, grads = [], []
    for create_graph in (False, True):
        model.zero_grad()
        with capture(model, keep_adjoints=True) as cap:
            out, h_n = model(x)
            (grad,) = torch.autograd.grad((out**2).sum() + h_n.sum(), x, create_graph=create_graph)
        records.append(cap.records()[0])
        grads.append(grad)
    assert grads[1].requires_grad and not grads[0].requires_grad
    assert close(grads[1].detach(), grads[0], 1e-12)
    for slow, fast in zip(records[1].layers, records[0].layers, strict=True):
        for name in ("delta", "adjoint_norm", "direct_norm", "recurrent_norm", "grad_w_hh_norm"):
            assert close(getattr(slow, name), getattr(fast, name), 1e-12), name
    (grads[1].square().sum()).backward()  # and the gradient of the gradient exists
    assert all(p.grad is not None for p in model.parameters())


def test_autocast_computes_in_the_autocast_dtype_like_torch_rnn():
    torch.manual_seed(4)
    reference = torch.nn.RNN(3, 8, 2, bidirectional=True)
    model = ElmanRNN.from_torch(reference)
    x = torch.randn(6, 2, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = model(x)
        ref_out, ref_h_n = reference(x)
    assert (out.dtype, h_n.dtype) == (ref_out.dtype, ref_h_n.dtype) == (torch.bfloat16,) * 2
    torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and model.weight_hh_l0.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a float64 model stays float64, as nn.RNN
        assert model.double()(x.double().detach())[0].dtype == torch.float64


@pytest.mark.parametrize("keep", [False, True], ids=["", "delta kept"])
@pytest.mark.parametrize("scale", [2.0**-100, 2.0**100], ids=["tiny", "huge"])
@pytest.mark.parametrize("fused", ["0", "1"])
def test_records_of_tiny_or_huge_gradients_neither_underflow_nor_overflow(
    monkeypatch, fused, scale, keep
):
    """Scaling the loss by 2^±100 scales every float32 adjoint by exactly that (they stay
    normal numbers, ~1e-33 or ~1e27): every record must scale too, to float32 rounding. Norms
    whose squares were summed in float32 read 0 for the tiny ones and inf for the huge ones."""
    monkeypatch.setenv("RNNPROBE_FUSED", fused)
    torch.manual_seed(0)
    model = ElmanRNN(3, 16, num_layers=2)
    x = torch.randn(6, 5, 3)
    weights = torch.randn(6, 5, 16)
    records = []
    for factor in (1.0, scale):
        options = dict(reach=True, reach_batch=2, weight_grads=True, keep_adjoints=keep)
        with capture(model, **options) as cap:
            out, _ = model(x)
            ((out * weights).sum() * factor).backward()
        records.append(cap.records()[0])
    plain, scaled = records
    assert plain.reach is not None and scaled.reach is not None
    torch.testing.assert_close(scaled.reach, plain.reach * scale, rtol=1e-5, atol=0)
    names = ("adjoint_norm", "direct_norm", "recurrent_norm", "grad_w_hh_norm", "grad_w_ih_norm")
    for one, other in zip(plain.layers, scaled.layers, strict=True):
        for name in names:
            value = getattr(one, name)
            assert (value > 0).float().mean() > 0.8  # (the last step gets nothing through h_n)
            expected = value * scale
            torch.testing.assert_close(getattr(other, name), expected, rtol=1e-5, atol=0)


def test_a_record_norm_is_right_across_float32s_range():
    from rnnprobe.probes.norms import record_norm

    rows = torch.tensor([1e-30, 1e-20, 1e-5, 1.0, 1e10, 1e25, 0.0]).repeat_interleave(256)
    x = rows.view(7, 256) * torch.linspace(0.5, 1.5, 256)
    expected = torch.linalg.vector_norm(x.double(), dim=-1).float()
    torch.testing.assert_close(record_norm(x), expected, rtol=1e-6, atol=0)
    assert torch.linalg.vector_norm(x, dim=-1)[0] == 0  # what a float32 norm reads


@pytest.mark.parametrize("size", [1e-21, 3e-23, 1e-23])
def test_weight_gradient_norms_of_tiny_gradients_times_huge_inputs_are_right(size):
    """‖g_tᵀ x_t‖_F of a tiny g and a huge x can land in the safe range while g's own squares
    underflowed in the float32 Gram: the check looks at g's squares too."""
    from rnnprobe.core.capture import _mend_weight_grad_norms, _weight_grad_norms

    torch.manual_seed(0)
    g, x = torch.randn(3, 4, 16) * size, torch.randn(3, 4, 8) * 1e8
    h, h0 = torch.randn(3, 4, 16).tanh(), torch.zeros(4, 16)
    hh, ih = _weight_grad_norms(g, None, h0, h, x, wide=False)
    _mend_weight_grad_norms(hh, ih, g, None, h0, h, x)
    exact = torch.stack(
        [torch.linalg.matrix_norm(g[t].double().T @ x[t].double()) for t in range(3)]
    )
    torch.testing.assert_close(ih.double(), exact, rtol=1e-6, atol=0)
    assert hh[0] == 0  # from the zero h0: exact as it stands
