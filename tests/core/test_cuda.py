"""The same code on CUDA: results equal the CPU's, and the captured step never waits on the host."""

from __future__ import annotations

import warnings

import pytest
import torch

from rnnprobe import ElmanRNN, RNNLanguageModel
from rnnprobe.core.capture import capture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_cuda_forward_and_gradients_match_torch_rnn_float64(nonlinearity):
    torch.manual_seed(0)
    reference = torch.nn.RNN(5, 16, 2, nonlinearity=nonlinearity).double().cuda()
    model = ElmanRNN.from_torch(reference)
    x = torch.randn(40, 3, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    out, _ = model(x)
    ref_out, _ = reference(x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), [x, *model.parameters()])
    ref_grads = torch.autograd.grad((ref_out * w).sum(), [x, *reference.parameters()])
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


def test_captured_training_step_makes_no_host_sync_and_matches_cpu_records():
    torch.manual_seed(0)
    cpu_model = RNNLanguageModel(50, 16, 32, num_layers=2).double()
    gpu_model = RNNLanguageModel(50, 16, 32, num_layers=2).double().cuda()
    gpu_model.load_state_dict(cpu_model.state_dict())
    tokens = torch.randint(1, 50, (8, 33))

    def step(model, batch):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        optimizer.zero_grad(set_to_none=True)
        with capture(model, reach=True) as cap:
            loss, _ = model.next_token_loss(batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        return cap

    gpu_tokens = tokens.cuda()
    step(gpu_model, gpu_tokens)  # warm-up: lazy CUDA initialisation may sync once
    gpu_model.load_state_dict(cpu_model.state_dict())
    torch.cuda.synchronize()
    with warnings.catch_warnings():  # "a prototype feature" warning, not ours
        warnings.simplefilter("ignore", UserWarning)
        torch.cuda.set_sync_debug_mode("error")
    try:
        gpu_capture = step(gpu_model, gpu_tokens)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gpu_record = gpu_capture.records()[0]
    cpu_record = step(cpu_model, tokens).records()[0]
    for gpu_layer, cpu_layer in zip(gpu_record.layers, cpu_record.layers, strict=True):
        assert gpu_layer.adjoint_norm.device.type == "cpu"
        torch.testing.assert_close(gpu_layer.adjoint_norm, cpu_layer.adjoint_norm)
        torch.testing.assert_close(gpu_layer.grad_w_hh_norm, cpu_layer.grad_w_hh_norm)
    torch.testing.assert_close(gpu_record.reach, cpu_record.reach)
    for gpu_p, cpu_p in zip(gpu_model.parameters(), cpu_model.parameters(), strict=True):
        torch.testing.assert_close(gpu_p.cpu(), cpu_p)
