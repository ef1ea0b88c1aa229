"""Fixed and slow points: a closed form, a grid search, autograd twins, and the command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rnnprobe import build_config, train_run
from rnnprobe.cli.fixed_points import fixed_points
from rnnprobe.core.models import ElmanRNN
from rnnprobe.probes.fixed_points import (
    find_fixed_points,
    fixed_point_jacobians,
    layer_trajectories,
    merge_points,
    principal_components,
    speed,
)
from rnnprobe.report.fixed_points import count_text
from tests.support.runs import CHECKPOINTED

f64 = torch.float64


def orthogonal(H: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=f64))
    return q


@pytest.mark.parametrize(
    "eigenvalues, stability",
    [
        ((0.8, 0.5, -0.3, 0.9), "stable"),
        ((1.5, 0.5, -0.3, 0.9), "saddle"),
        ((1.5, -2, 1.2, 3), "source"),
    ],
)
def test_linear_map_has_the_closed_form_fixed_point(eigenvalues, stability):
    """φ = identity: F(h) = u + h W_hhᵀ has the one fixed point h* = u (I − W_hhᵀ)⁻¹."""
    H = len(eigenvalues)
    basis = orthogonal(H, 0) + 0.3 * torch.eye(H, dtype=f64)  # not orthogonal: W not normal
    w_hh = basis @ torch.diag(torch.tensor(eigenvalues, dtype=f64)) @ torch.linalg.inv(basis)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(H, generator=g, dtype=f64)
    starts = 3 * torch.randn(40, H, generator=g, dtype=f64)
    expected = torch.linalg.solve(torch.eye(H, dtype=f64) - w_hh.T, u.unsqueeze(0), left=False)[0]
    found = find_fixed_points(w_hh, u, starts, nonlinearity="linear")
    assert len(found) == 1 and found.kind == ("fixed",) and found.stability == (stability,)
    assert found.starts_merged.tolist() == [40] and found.discarded == 0
    assert (found.points[0] - expected).abs().max() < 1e-8
    assert found.unstable_dims.item() == sum(abs(v) > 1 for v in eigenvalues)
    moduli = sorted((abs(v) for v in eigenvalues), reverse=True)
    assert torch.allclose(found.eigenvalues[0].abs(), torch.tensor(moduli, dtype=f64))


def grid_fixed_points(w_hh: np.ndarray, u: np.ndarray, n: int = 401) -> np.ndarray:
    """Return every fixed point of h ↦ tanh(u + h Wᵀ) in [-1, 1]²: plain Newton steps from
    every cell of a dense grid where ‖F(h) − h‖ is small, the converged ones deduplicated."""
    axis = np.linspace(-1, 1, n)
    h = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)  # (n², 2)
    x = h[np.linalg.norm(np.tanh(u + h @ w_hh.T) - h, axis=-1) < 0.02]
    for _ in range(40):
        a = u + x @ w_hh.T
        jacobian = (1 - np.tanh(a) ** 2)[:, :, None] * w_hh - np.eye(2)  # ∂(F(h) − h)/∂h
        x = x - np.linalg.solve(jacobian, (np.tanh(a) - x)[:, :, None])[:, :, 0]
    x = x[np.linalg.norm(np.tanh(u + x @ w_hh.T) - x, axis=-1) < 1e-12]
    found: list[np.ndarray] = []
    for point in x:
        if all(np.linalg.norm(point - y) > 1e-6 for y in found):
            found.append(point)
    return np.array(found)


@pytest.mark.parametrize(
    "w_hh, u, classes",
    [
        ([[2.0, 0.0], [0.0, 2.0]], [0.0, 0.0], {"stable": 4, "saddle": 4, "source": 1}),
        ([[2.0, 0.4], [-0.3, 1.8]], [0.05, -0.1], None),
        ([[1.6, -0.9], [0.7, 1.5]], [0.1, 0.2], None),
    ],
)
def test_two_unit_tanh_points_match_a_grid_search(w_hh, u, classes):
    """Every fixed point found is one of the grid search's, none is missed, and each has the
    stability its own Jacobian's eigenvalues give (W = 2I: 3 roots of x = tanh 2x per axis)."""
    w, b = np.array(w_hh), np.array(u)
    reference = grid_fixed_points(w, b)
    axis = torch.linspace(-1, 1, 24, dtype=f64)
    starts = torch.cartesian_prod(axis, axis)
    found = find_fixed_points(torch.tensor(w), torch.tensor(b), starts)
    fixed = found.points[[k == "fixed" for k in found.kind]].numpy()
    assert len(fixed) == len(reference) >= 1
    distance = np.linalg.norm(fixed[:, None] - reference[None], axis=-1)  # (found, reference)
    assert (distance.min(1) < 1e-8).all() and (distance.min(0) < 1e-8).all()
    for point, stability in zip(found.points.numpy(), found.stability, strict=True):
        eig = np.linalg.eigvals((1 - np.tanh(b + w @ point) ** 2)[:, None] * w)
        grows = int((np.abs(eig) > 1).sum())
        assert stability == ("stable" if grows == 0 else "source" if grows == 2 else "saddle")
    if classes is not None:
        assert Counter(found.stability) == classes and found.kind == ("fixed",) * 9


@pytest.mark.parametrize("nonlinearity, seed", [("tanh", 6), ("tanh", 4), ("relu", 0)])
def test_jacobians_and_eigenvalues_match_jacrev(nonlinearity, seed):
    """J = diag(φ'(a*)) W_hh and its eigenvalues, at the points found (seed 4: slow points
    too), equal autograd's."""
    H = 6
    g = torch.Generator().manual_seed(seed)
    w_hh = 0.5 * torch.eye(H, dtype=f64) + 1.2 * torch.randn(H, H, generator=g, dtype=f64) / H**0.5
    u = 0.3 * torch.randn(H, generator=g, dtype=f64)
    starts = torch.randn(64, H, generator=g, dtype=f64)
    found = find_fixed_points(w_hh, u, starts, nonlinearity=nonlinearity)
    assert len(found) >= 2
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    jacobians = fixed_point_jacobians(found.points, w_hh, u, nonlinearity)
    for n, point in enumerate(found.points):
        a = u + point @ w_hh.T
        assert nonlinearity == "tanh" or a.abs().min() > 1e-9  # away from ReLU's kink
        reference = torch.func.jacrev(lambda h: phi(u + h @ w_hh.T))(point)
        torch.testing.assert_close(jacobians[n], reference, rtol=0, atol=1e-12)
        expected = torch.linalg.eigvals(reference)
        ours = found.eigenvalues[n]
        assert (ours.abs()[:-1] >= ours.abs()[1:]).all()  # by descending modulus
        gap = (ours[:, None] - expected[None, :]).abs()
        assert gap.min(1).values.max() < 1e-10 and gap.min(0).values.max() < 1e-10
        assert found.spectral_radius[n] == pytest.approx(float(expected.abs().max()), abs=1e-10)
        slowest = expected[(expected.abs() - 1).abs().argmin()]  # or its conjugate
        assert abs(found.slowest[n].abs() - slowest.abs()) < 1e-10


def test_merge_keeps_the_lowest_q_point_of_each_cluster():
    a, b, c = torch.zeros(3, dtype=f64), torch.ones(3, dtype=f64), torch.full((3,), -1.0, dtype=f64)
    points = torch.stack([a + 1e-5, b, a, c, b - 2e-4, a - 3e-4])
    q = torch.tensor([1e-20, 1e-15, 1e-25, 1e-8, 1e-30, 1e-13], dtype=f64)
    kept, counts = merge_points(points, q, merge_tol=1e-3)
    assert kept.tolist() == [4, 2, 3] and counts.tolist() == [2, 3, 1]  # increasing q
    kept, counts = merge_points(points, q, merge_tol=0.0)
    assert sorted(kept.tolist()) == list(range(6)) and counts.tolist() == [1] * 6


def test_starts_that_meet_at_one_point_are_merged_into_it():
    w_hh = 0.5 * torch.eye(3, dtype=f64)
    u = torch.tensor([0.2, -0.1, 0.3], dtype=f64)
    starts = torch.tensor([[0.1, 0, 0], [0.1, 1e-6, 0], [-0.5, 0.5, 0.9]], dtype=f64)
    found = find_fixed_points(w_hh, u, starts)
    assert len(found) == 1 and found.starts_merged.tolist() == [3]
    assert speed(found.points, w_hh, u, "tanh").item() < 1e-25


def test_layer_trajectories_match_the_stacked_rnn():
    torch.manual_seed(0)
    rnn = ElmanRNN(3, 5, num_layers=2, nonlinearity="relu").double()
    x = torch.randn(7, 4, 3, dtype=f64)
    inputs, states = layer_trajectories(rnn, x, 1)
    output, _ = rnn(x)
    torch.testing.assert_close(states, output, rtol=0, atol=1e-12)
    torch.testing.assert_close(inputs, layer_trajectories(rnn, x, 0)[1], rtol=0, atol=0)
    projection = principal_components(states.reshape(-1, 5), 2)
    assert projection.project(states).shape == (7, 4, 2)
    assert 0 < projection.explained.sum() <= 1 + 1e-12


# -- the command ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained copy-task run with two layers of 8 units."""
    settings = {**CHECKPOINTED, "model.layers": 2, "task.seq_len": 4}
    path = tmp_path_factory.mktemp("fixed_points") / "run"
    assert train_run(build_config(settings), path, progress=False).status == "done"
    return path


def test_command_writes_records_and_a_figure(run, tmp_path):
    out = tmp_path / "out"
    done = CliRunner().invoke(fixed_points, [str(run), "--starts", "24", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert str(out / "README.md") in done.stdout
    points = pd.read_parquet(out / "points.parquet")
    assert len(points) >= 1 and (points["q"] < 1e-3).all() and (points["layer"] == 0).all()
    assert set(points["category"]) <= {"stable", "saddle", "source", "slow"}
    pd.testing.assert_frame_equal(pd.read_csv(out / "points.csv"), points, check_dtype=False)
    eigenvalues = pd.read_parquet(out / "eigenvalues.parquet")
    assert len(eigenvalues) == 8 * len(points)
    coordinates = pd.read_parquet(out / "coordinates.parquet")
    assert len(coordinates) == 8 * len(points)
    assert {"trajectory", "t", "pc1", "pc2"} <= set(pd.read_parquet(out / "trajectories.parquet"))
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["points"].values()) == len(points) and summary["starts"] == 24
    with Image.open(out / "fixed_points.png") as image:
        image.verify()
        assert image.size[0] > 800 and image.size[1] > 300
    readme = (out / "README.md").read_text()
    assert "(fixed_points.png)" in readme
    counts = summary["points"]  # in words as the result line says them: '1 saddle', not '1 saddles'
    words = ", ".join(count_text(counts[c], c) for c in ("stable", "saddle", "source"))
    assert f"): {words}\n" in readme and words in done.stdout


def test_counts_read_in_words():
    assert [count_text(n, "saddle") for n in (0, 1, 2)] == ["0 saddles", "1 saddle", "2 saddles"]
    assert (count_text(2, "stable"), count_text(1, "slow")) == ("2 stable", "1 slow point")


@pytest.mark.parametrize("args", [["--layer", "1", "--input", "mean"], ["--input", "3"]])
def test_command_takes_other_layers_and_inputs(run, args):
    done = CliRunner().invoke(fixed_points, [str(run), "--starts", "16", *args])
    assert done.exit_code == 0, done.output
    layer, held = (1, "mean") if "--layer" in args else (0, "3")
    points = pd.read_parquet(run / "fixed_points" / f"layer{layer}-{held}" / "points.parquet")
    assert (points["layer"] == layer).all() and (points["input"] == held).all()


@pytest.mark.parametrize(
    "args, says",
    [
        (["missing"], "missing: no such file or directory"),
        (["no-checkpoint"], "has no checkpoint yet"),
        (["--layer", "2"], "--layer must lie in [0, 2)"),
        (["--layer", "-1"], "--layer must be at least 0, got -1"),
        (["--input", "bogus"], "--input must be zero, mean or a token id"),
        (["--input", "99"], "ids lie in [0, "),
        (["--input", "3", "--layer", "1"], "constant at layer 0 only"),
        (["--starts", "0"], "--starts must be at least 1"),
        (["--seed", "-1"], "--seed must lie in [0, 2**64)"),
    ],
)
def test_command_rejects_bad_input_in_one_line(run, tmp_path, args, says):
    target = run
    if args[0] in ("missing", "no-checkpoint"):
        target, args = tmp_path / args[0], []
        if target.name == "no-checkpoint":
            target.mkdir()
            (target / "config.json").write_bytes((run / "config.json").read_bytes())
    out = tmp_path / "out"
    done = CliRunner().invoke(fixed_points, [str(target), *args, "--out", str(out)])
    assert done.exit_code == 2, done.output
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("rnnprobe: error: ")
    assert says in done.stderr and not out.exists()


def test_command_module_loads_no_heavy_library():
    """``rnnprobe --help`` imports the command's module: no torch, pandas or matplotlib."""
    probe = (
        "import sys\n"
        "from rnnprobe.cli.fixed_points import fixed_points\n"
        "try:\n"
        "    fixed_points(['--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "heavy = ('torch', 'pandas', 'pyarrow', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stderr.splitlines()[-1] == "[]", done.stderr
    assert "--input zero|mean|TOKEN" in done.stdout


def test_the_search_reports_its_stages_and_finds_the_same_points():
    torch.manual_seed(3)
    w_hh, u = 1.5 * torch.randn(6, 6, dtype=f64) / 6**0.5, 0.1 * torch.randn(6, dtype=f64)
    starts = torch.randn(12, 6, dtype=f64)
    stages: list[str] = []
    found = find_fixed_points(w_hh, u, starts, progress=stages.append)
    quiet = find_fixed_points(w_hh, u, starts)
    assert torch.equal(found.points, quiet.points) and torch.equal(found.q, quiet.q)
    assert stages[0] == "L-BFGS" and "Newton" in stages  # a bar's description, each update
    assert set(stages) <= {"L-BFGS", "Newton", "L-BFGS on the rest"}
