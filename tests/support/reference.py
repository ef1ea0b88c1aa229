"""Brute-force twins of the fast code: a naive unrolled RNN whose states keep their grads."""

from __future__ import annotations

import torch


def unrolled_rnn(x, h0, rnn):
    """Return (output (T, B, H), states[l][t] (B, H) with retain_grad, pre-activations[l][t]).

    Plain autograd through a Python loop over steps and layers, weights taken from ``rnn``.
    """
    phi = torch.tanh if rnn.nonlinearity == "tanh" else torch.relu
    states, preacts = [], []
    layer_input = list(x.unbind(0))
    for layer in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        h, hs, aa = h0[layer], [], []
        for x_t in layer_input:
            a = x_t @ w_ih.T + h @ w_hh.T
            if rnn.bias:
                a = a + getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
            h = phi(a)
            h.retain_grad()
            hs.append(h)
            aa.append(a)
        states.append(hs)
        preacts.append(aa)
        layer_input = hs
    return torch.stack(states[-1]), states, preacts
