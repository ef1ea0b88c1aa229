"""The hand BPTT against torch.nn.RNN, a naive unrolled loop, gradcheck and BPTT identities."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from rnnprobe import ElmanRNN, RnnprobeError
from rnnprobe.bptt import ElmanStackFunction
from rnnprobe.capture import capture
from tests.reference import unrolled_rnn

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
    """Blocks of 5 steps make the buffered norm path cross many block boundaries."""
    monkeypatch.setattr("rnnprobe.bptt.RECORD_BLOCK", 5)


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

    with capture(model, keep_adjoints=True) as cap:
        out, h_n = model(x, h0)
        linear_loss(out, h_n, weights).backward()
    (record,) = cap.records()
    for layer, layer_record in enumerate(record.layers):
        expected = torch.stack([h.grad for h in states[layer]])
        assert close(layer_record.delta, expected, 1e-10)
        assert close(layer_record.adjoint_norm, expected.norm(dim=-1), 1e-10)
    # Without δ kept, the norms come from a small buffer of blocks; they must be the same.
    model.zero_grad()
    with capture(model) as cap:
        out, h_n = model(x, h0)
        linear_loss(out, h_n, weights).backward()
    for blocked, kept in zip(cap.records()[0].layers, record.layers, strict=True):
        assert blocked.delta is None
        assert close(blocked.adjoint_norm, kept.adjoint_norm, 1e-12)
        assert close(blocked.recurrent_norm, kept.recurrent_norm, 1e-12)
    # The top layer's direct part is the loss's own gradient at each output.
    direct_top = time_major(weights[0], case["batch_first"])
    assert close(record.layers[-1].direct_norm, direct_top.norm(dim=-1), 1e-12)
    recurrent = record.layers[-1].delta - direct_top
    assert close(record.layers[-1].recurrent_norm, recurrent.norm(dim=-1), 1e-10)


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

    def fn(x_, h0_, *w):
        return ElmanStackFunction.apply(
            x_, h0_, model.recorder_slot, case["nonlinearity"], case["bias"], *w
        )

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
    ("make", "message"),
    [
        (lambda m: m(torch.randn(5, 2, 3, 4)), "rank"),
        (lambda m: m(torch.randn(5, 2, 7)), "input size"),
        (lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 2, 9)), "h0 must have shape"),
        (lambda m: m(torch.randn(0, 2, 3)), "empty"),
    ],
)
def test_bad_input_gets_a_clear_error(make, message):
    model = ElmanRNN(3, 6)
    with pytest.raises(RnnprobeError, match=message):
        make(model)


def test_unknown_nonlinearity_is_rejected_by_name():
    with pytest.raises(RnnprobeError, match="unknown nonlinearity 'sigmoid'"):
        ElmanRNN(3, 4, nonlinearity="sigmoid")
