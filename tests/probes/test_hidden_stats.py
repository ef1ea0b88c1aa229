"""Hidden-state statistics against direct counts and exactly constructed covariances."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rnnprobe.errors import RnnprobeError
from rnnprobe.probes.hidden_stats import hidden_state_stats, participation_ratio
from tests.support.schema import check_row_blocks

F64 = torch.float64


@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 6)),
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    threshold=st.floats(0.01, 0.9),
    seed=st.integers(0, 2**31 - 1),
)
def test_fractions_lie_in_unit_interval_and_match_a_direct_count(
    shape, nonlinearity, threshold, seed
):
    T, B, H = shape
    a = 3 * torch.randn(T, B, H, generator=torch.Generator().manual_seed(seed), dtype=F64)
    h = torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)
    stats = hidden_state_stats(h, nonlinearity, threshold=threshold)
    fraction = stats.saturated_fraction if nonlinearity == "tanh" else stats.inactive_fraction
    other = stats.inactive_fraction if nonlinearity == "tanh" else stats.saturated_fraction
    assert other is None
    for t in range(T):
        blocked = 0
        for b in range(B):
            for i in range(H):
                v = float(h[t, b, i])
                blocked += (1 - v * v < threshold) if nonlinearity == "tanh" else (v <= 0)
        assert float(fraction[t]) == pytest.approx(blocked / (B * H))
    dead = sum(
        all(
            (
                (1 - float(h[t, b, i]) ** 2 < threshold)
                if nonlinearity == "tanh"
                else h[t, b, i] <= 0
            )
            for t in range(T)
            for b in range(B)
        )
        for i in range(H)
    )
    assert float(stats.dead_fraction) == pytest.approx(dead / H)
    assert bool(((fraction >= 0) & (fraction <= 1)).all()) and 0 <= float(stats.dead_fraction) <= 1
    torch.testing.assert_close(stats.mean_norm, h.norm(dim=2).mean(1))
    torch.testing.assert_close(stats.mean, h.reshape(T, -1).mean(1))
    torch.testing.assert_close(stats.std, h.reshape(T, -1).std(1, correction=0))


def test_dead_relu_unit_is_counted():
    h = torch.rand(4, 3, 5, dtype=F64) + 0.1
    h[..., 2] = 0.0  # never active anywhere
    h[0, 0, 4] = 0.0  # inactive once: not dead
    stats = hidden_state_stats(h, "relu")
    assert float(stats.dead_fraction) == pytest.approx(1 / 5)
    assert float(stats.inactive_fraction[0]) == pytest.approx(4 / 15)


@pytest.mark.parametrize("hidden", [1, 3, 8])
def test_participation_ratio_is_hidden_size_for_isotropic_states(hidden):
    rows = torch.cat([torch.eye(hidden, dtype=F64), -torch.eye(hidden, dtype=F64)])  # ±e_i
    h = rows.repeat(3, 1).reshape(3, 2 * hidden, hidden)  # (T, B, H): exactly isotropic
    assert float(hidden_state_stats(h, "tanh").participation_ratio) == pytest.approx(hidden)


def test_participation_ratio_is_one_for_rank_one_states():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(6, generator=g, dtype=F64)
    h = torch.randn(5, 4, 1, generator=g, dtype=F64) * direction
    assert float(hidden_state_stats(h, "tanh").participation_ratio) == pytest.approx(1.0)


@given(n=st.integers(2, 30), hidden=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_participation_ratio_lies_between_one_and_hidden_size(n, hidden, seed):
    states = torch.randn(n, hidden, generator=torch.Generator().manual_seed(seed), dtype=F64)
    pr = float(participation_ratio(states))
    assert 1 - 1e-9 <= pr <= hidden + 1e-9


def test_hidden_stats_rows_and_bad_inputs():
    stats = hidden_state_stats(torch.rand(3, 2, 4, dtype=F64), "relu")
    blocks = stats.row_blocks(step=5, layer=1, batch=2)
    assert check_row_blocks(blocks) == {"hidden": 3, "health": 1}
    hidden, health = (block.columns for block in blocks)
    assert torch.isnan(hidden["saturation"]).all() and not torch.isnan(hidden["inactive"]).any()
    assert hidden["sequences"] == 2 and not torch.isnan(health["dead_fraction"])
    tanh = hidden_state_stats(torch.rand(3, 2, 4, dtype=F64), "tanh").row_blocks(5, 0, batch=2)
    assert torch.isnan(tanh[1].columns["dead_fraction"]) and torch.isnan(
        tanh[1].columns["inactive"]
    )
    for case in (
        lambda: hidden_state_stats(torch.ones(3, 4), "tanh"),
        lambda: hidden_state_stats(torch.ones(0, 2, 4), "tanh"),
        lambda: hidden_state_stats(torch.ones(3, 2, 4), "sigmoid"),
        lambda: hidden_state_stats(torch.ones(3, 2, 4), "tanh", threshold=0.0),
    ):
        with pytest.raises(RnnprobeError) as info:
            case()
        assert "\n" not in str(info.value)
