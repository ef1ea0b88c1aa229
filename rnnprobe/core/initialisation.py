"""Initialisation schemes for the recurrent weights W_hh of every layer.

- ``default``: PyTorch's U(−1/√H, 1/√H) for every parameter (left as is).
- ``orthogonal``: W_hh = g·Q, Q a random orthogonal matrix (all singular values g).
- ``identity``: W_hh = g·I and zero biases — the IRNN of Le, Jaitly & Hinton (2015).
- ``gaussian``: W_hh ~ N(0, g²/H): spectral radius → g as H grows (the circular law).
- ``spectral``: W_hh ~ N(0, 1/H) rescaled so that its spectral radius is exactly ρ.

``SCHEMES`` is the one list of schemes; torch loads when weights are set, so the command line
offers the choices without it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rnnprobe.errors import check_choice

if TYPE_CHECKING:
    from rnnprobe.core.models import ElmanRNN

SCHEMES = ("default", "orthogonal", "identity", "gaussian", "spectral")


def init_recurrent_weights(
    rnn: ElmanRNN, scheme: str, *, gain: float = 1.0, radius: float = 1.0
) -> None:
    """Set every layer's W_hh (and for ``identity`` the biases) by ``scheme``, in place."""
    check_choice(scheme, SCHEMES, "init")
    if scheme == "default":
        return
    import torch

    with torch.no_grad():
        H = rnn.hidden_size
        for layer in range(rnn.num_layers):
            w_hh = rnn.layer_weights(layer)[1]
            if scheme == "orthogonal":
                torch.nn.init.orthogonal_(w_hh, gain=gain)
            elif scheme == "identity":
                w_hh.copy_(gain * torch.eye(H))
                if rnn.bias:
                    getattr(rnn, f"bias_ih_l{layer}").zero_()
                    getattr(rnn, f"bias_hh_l{layer}").zero_()
            elif scheme == "gaussian":
                w_hh.normal_(0.0, gain / math.sqrt(H))
            else:
                w_hh.normal_(0.0, 1.0 / math.sqrt(H))
                rho = torch.linalg.eigvals(w_hh.double()).abs().max()
                w_hh.mul_(radius / float(rho))
