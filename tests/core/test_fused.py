"""The fused Triton scans equal the eager ones: kernels alone, and inside a whole model.

Without a GPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1 there).
"""

from __future__ import annotations

import os

import pytest
import torch

from rnnprobe import ElmanRNN
from rnnprobe.core import bptt, fused
from rnnprobe.core.capture import capture

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="on CPU the kernels need Triton's interpreter from the start of the process",
)
ATOL = 2e-6  # float32: the kernels' sums run in another order than the BLAS ones


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=ATOL)


SHAPES = [(1, 1, 5), (6, 3, 16), (5, 17, 33)]
if DEVICE == "cuda":  # compiled kernels at the benchmark's sizes (the interpreter is slow)
    SHAPES += [(64, 32, 256), (16, 32, 1024)]


@pytest.mark.parametrize("T, B, H", SHAPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_scans_equal_the_eager_ones(T, B, H, nonlinearity, reverse):
    torch.manual_seed(T * 100 + B * 10 + H)
    rtol = 1e-5 if H < 256 else 1e-4  # sums of H float32 products in another order

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.allclose(a, b, rtol=rtol, atol=ATOL)

    schedule = bptt.make_schedule(T, reverse)
    # a direction's view of a (T, B, 2H) buffer: rows strided, as in a bidirectional layer
    a = torch.randn(T, B, 2 * H, device=DEVICE)[..., H:]
    h0, w = torch.randn(B, H, device=DEVICE), torch.randn(H, H, device=DEVICE) / H**0.5
    h = bptt.scan_(a.clone(), h0, w, nonlinearity, schedule)
    assert close(fused.scan_forward_(a.clone(), h0, w, nonlinearity, reverse), h)

    eps, grad_hn = torch.randn(T, B, H, device=DEVICE), torch.randn(B, H, device=DEVICE)
    g = torch.empty_like(h)
    adjoints = bptt.backward_layer(eps, grad_hn, h, w, nonlinearity, schedule, g, True, True)
    assert adjoints is not None and adjoints.delta is not None
    g_fused = torch.empty_like(h)
    records = fused.scan_backward(eps, grad_hn, h, w, nonlinearity, reverse, g_fused, True, True)
    assert records is not None
    norms, delta = records
    assert close(g_fused, g)
    assert delta is not None and close(delta, adjoints.delta)
    names = ("adjoint_norm", "recurrent_norm", "direct_norm")
    for fused_norm, name in zip(norms, names, strict=True):
        assert close(fused_norm, getattr(adjoints, name)), name
    # g written over ε, as the layers below the top do: ε is read before it is replaced
    eps_copy = eps.clone()
    fused.scan_backward(eps_copy, grad_hn, h, w, nonlinearity, reverse, eps_copy, False, False)
    assert close(eps_copy, g)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_model_with_fused_scans_gives_the_eager_outputs_gradients_and_records(
    monkeypatch, bidirectional
):
    torch.manual_seed(0)
    model = ElmanRNN(3, 18, num_layers=2, bidirectional=bidirectional).to(DEVICE)
    x = torch.randn(7, 4, 3, device=DEVICE)
    calls: list[str] = []
    for name in ("scan_forward_", "scan_backward"):
        kernel = getattr(fused, name)
        spy = lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args)  # noqa: E731
        monkeypatch.setattr(fused, name, spy)
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("RNNPROBE_FUSED", flag)
        calls.clear()
        model.zero_grad()
        with capture(model) as cap:
            out, h_n = model(x)
            # out.sum(): an expanded gradient, whose rows the fused scan must copy
            (out.sum() + out.sin().sum() + h_n.cos().sum()).backward()
        scans = 2 * (2 if bidirectional else 1) if flag == "1" else 0
        assert calls.count("scan_forward_") == calls.count("scan_backward") == scans
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((out.detach(), h_n.detach(), grads, cap.records()[0].layers))
    (out, h_n, grads, layers), (f_out, f_h_n, f_grads, f_layers) = results
    assert close(f_out, out) and close(f_h_n, h_n)
    for f_grad, grad in zip(f_grads, grads, strict=True):
        assert close(f_grad, grad)
    for f_layer, layer in zip(f_layers, layers, strict=True):
        for name in ("adjoint_norm", "recurrent_norm", "direct_norm", "grad_w_hh_norm"):
            assert close(getattr(f_layer, name), getattr(layer, name)), name


def test_fused_scans_are_off_unless_asked_and_only_for_float32(monkeypatch):
    x = torch.zeros(2, 2, device=DEVICE)
    monkeypatch.delenv("RNNPROBE_FUSED", raising=False)
    assert not fused.wanted(x)
    monkeypatch.setenv("RNNPROBE_FUSED", "1")
    assert fused.wanted(x)
    assert not fused.wanted(x.double())
