"""Synthetic run and study directories written with the real RunStore, and report checks.

``write_run`` and ``write_study`` write every STANDARD_TABLES table with gradients that shrink
or grow by a chosen factor per step back in time, so the expected regime is known by
construction. ``check_report`` checks a report directory's figures and links.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from rnnprobe.probes.reach import default_reach_sources
from rnnprobe.records.schema import STANDARD_TABLES
from rnnprobe.records.store import RunStore
from rnnprobe.training.config import build_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT = "<script>alert('x')</script>"


def _log_steps(last: int) -> list[int]:
    return sorted({0, *(2**k for k in range(int(math.log2(max(last, 1))) + 1) if 2**k <= last)})


def write_run(
    path: Path,
    *,
    decay: float = 0.97,
    decay_end: float | None = None,
    steps: int = 40,
    seq_len: int = 16,
    layers: int = 1,
    hidden: int = 8,
    nonlinearity: str = "tanh",
    init_gain: float = 1.0,
    clip: str = "none",
    grad_growth: float = 1.0,
    saturation: float = 0.1,
    loss_ratio: float = 0.4,
    diverge_at: int | None = None,
    status: str = "done",
    error: str | None = None,
    settings: dict | None = None,
    tables: tuple[str, ...] | None = None,
    seed: int = 0,
) -> Path:
    """Write a run whose gradients scale by ``decay`` per step back in time; return its path.

    Probes fire at steps 0 (W_hh only), 1, 2, 4, … and the last step, as training's do; with
    ``decay_end`` the factor moves geometrically from ``decay`` at step 1 to it at the end, and
    λ₁ = ln(factor) follows.
    """
    rng = np.random.default_rng(seed)
    config = build_config(
        {
            "task.seq_len": seq_len,
            "model.layers": layers,
            "model.hidden_size": hidden,
            "model.nonlinearity": nonlinearity,
            "model.init_gain": init_gain,
            "train.clip": clip,
            "train.steps": steps,
            "seed": seed,
            **(settings or {}),
        }
    )
    store = RunStore.create(path, config.to_dict())
    wanted = set(STANDARD_TABLES) if tables is None else set(tables)
    n = steps if diverge_at is None else diverge_at
    T, L, H = seq_len, layers, hidden
    relu = nonlinearity == "relu"
    out: dict[str, dict] = {}
    baseline = math.log(8)
    out["task"] = {
        "name": "copy", "kind": "per_step_classification", "metric": "accuracy",
        "seq_len": T, "baseline_loss": baseline, "baseline_metric": 0.125,
        "baseline_description": "uniform guess over 8 symbols", "parameters": 1000,
    }  # fmt: skip
    step = np.arange(1, n + 1)
    loss = baseline * (loss_ratio + (1 - loss_ratio) * np.exp(-step / (steps / 5)))
    loss *= 1 + 0.02 * rng.standard_normal(n)
    grad = np.exp(np.log(grad_growth) * step / steps) * (1 + 0.1 * np.abs(rng.standard_normal(n)))
    if diverge_at is not None:
        loss[-1], grad[-1] = np.nan, np.inf
    post = np.minimum(grad, 1.0) if clip == "norm" else grad
    out["steps"] = {
        "step": step, "loss": loss, "metric": 1 - loss / baseline * 0.8,
        "grad_norm_pre_clip": grad, "grad_norm_post_clip": post, "clipped": post < grad,
        "skipped": ~np.isfinite(grad), "lr": np.full(n, 1e-3), "tokens": step * 32 * T,
        "seconds": step * 0.01,
    }  # fmt: skip
    evals = step[:: max(1, n // 4)]
    out["evals"] = {"step": evals, "loss": loss[evals - 1] * 1.02, "metric": 0.5 + 0 * evals}
    s, l, t = (a.ravel() for a in np.meshgrid(step, np.arange(L), np.arange(T), indexing="ij"))
    norm = decay ** (T - 1 - t) * (1 + 0.05 * rng.standard_normal(len(t)) ** 2)
    ahead = decay ** (T - 2 - t).clip(0)
    out["adjoints"] = {
        "step": s, "layer": l, "t": t, "adjoint_norm": norm, "direct_norm": (t == T - 1) * 1.0,
        "recurrent_norm": np.where(t == T - 1, 0.0, decay * ahead), "grad_w_hh_norm": 0.5 * norm,
        "grad_w_ih_norm": 0.3 * norm,
    }  # fmt: skip
    every10 = np.array(sorted({1, *range(10, n + 1, 10), n}))
    s, l, t = (a.ravel() for a in np.meshgrid(every10, np.arange(L), np.arange(T), indexing="ij"))
    nan = np.full(len(s), np.nan)
    out["hidden"] = {
        "step": s, "layer": l, "t": t, "mean": 0.01 * t, "std": 0.5 + 0 * t, "norm": 2.0 + 0 * t,
        "saturation": nan if relu else saturation + 0 * t, "inactive": 0.4 + 0 * t if relu
        else nan, "mean_phi_prime": 0.6 + 0 * t,
    }  # fmt: skip
    s, l = (a.ravel() for a in np.meshgrid(every10, np.arange(L), indexing="ij"))
    nan = np.full(len(s), np.nan)
    out["health"] = {
        "step": s, "layer": l, "saturation": nan if relu else saturation + 0 * s,
        "inactive": 0.4 + 0 * s if relu else nan, "dead_fraction": 0.05 + 0 * s if relu else nan,
        "mean_phi_prime": 0.6 + 0 * s, "participation_ratio": H * (0.3 + 0.2 * s / steps),
    }  # fmt: skip
    probe = sorted({*_log_steps(n), n})
    weights, spectra, lyapunov, reach = [], [], [], []
    w = rng.standard_normal((H, H)) * init_gain / math.sqrt(H)
    first = decay
    for k in probe:
        if decay_end is not None:
            decay = first * (decay_end / first) ** (max(k - 1, 0) / max(n - 1, 1))
        for layer in range(L):
            eig = np.linalg.eigvals(w * (1 + 0.1 * k / steps))
            sv = np.linalg.svd(w, compute_uv=False)
            weights.append({
                "step": k, "layer": layer, "spectral_radius": float(np.abs(eig).max()),
                "sigma_max": float(sv[0]), "pascanu_bound": float(sv[0]),
                "jacobian_norm": decay * 1.2, "jacobian_mean_log_sv": math.log(decay),
            })  # fmt: skip
            for i, e in enumerate(eig):
                spectra.append(_spectrum(k, layer, "w_hh_eigenvalue", 0, i, e.real, e.imag))
            for i, v in enumerate(sv):
                spectra.append(_spectrum(k, layer, "w_hh_singular", 0, i, v, 0.0))
            for sample in range(3):
                values = np.sort(decay * np.exp(0.3 * rng.standard_normal(H)))[::-1]
                for i, v in enumerate(values):
                    spectra.append(_spectrum(k, layer, "jacobian_singular", sample, i, v, 0.0))
            if k == 0:
                continue
            for i in range(min(H, 6)):
                lyapunov.append({"step": k, "layer": layer, "index": i,
                                 "exponent": math.log(decay) - 0.15 * i})  # fmt: skip
            for source in default_reach_sources(T):
                for tt in range(source + 1):
                    value = decay ** (source - tt) * (1 + 0.05 * rng.random())
                    reach.append({"step": k, "layer": layer, "source": source, "t": tt,
                                  "distance": source - tt, "norm": value})  # fmt: skip
    out["weights"], out["spectra"], out["lyapunov"], out["reach"] = (
        weights,
        spectra,
        lyapunov,
        reach,
    )
    out["mean_field"] = [
        {"layer": layer, "sigma_w2": init_gain**2, "sigma_in2": 0.1, "q_star": 0.5,
         "chi": (first * 1.02) ** 2, "predicted_decay": first * 1.02,
         "predicted_half_life": math.log(2) / -math.log(first * 1.02) if first * 1.02 < 1
         else math.inf}
        for layer in range(L)
    ]  # fmt: skip
    if diverge_at is not None:
        out["events"] = {"step": n, "kind": "diverged", "message": "loss is nan"}
    for name, rows in out.items():
        if name in wanted:
            store.append(name, rows)
    store.flush()
    store.set_status(status, n if wanted else 0, error)
    return path


def _spectrum(step, layer, quantity, sample, index, value, imag) -> dict:
    return {"step": step, "layer": layer, "quantity": quantity, "sample": sample,
            "index": index, "value": float(value), "imag": float(imag)}  # fmt: skip


# (init_gain, seq_len) -> gradient factor per step of the synthetic study
def _study_decay(gain: float) -> float:
    return {0.5: 0.5, 1.0: 0.98, 2.0: 1.3}[gain]


def write_study(
    path: Path, *, gains=(0.5, 1.0, 2.0), seq_lens=(8, 24), steps: int = 30, name: str = "demo",
    hidden: int = 8, layers: int = 1, **run_options,
) -> Path:  # fmt: skip
    """Write study.json and one run per (init_gain, seq_len); return the study directory."""
    entries = []
    for gain in gains:
        for seq_len in seq_lens:
            rid = f"g{gain}-T{seq_len}"
            decay = _study_decay(gain)
            ratio = {0.5: 0.6 + 0.4 * min(1, seq_len / 24), 1.0: 0.3, 2.0: 0.9}[gain]
            write_run(
                path / "runs" / rid, decay=decay, seq_len=seq_len, init_gain=gain, steps=steps,
                loss_ratio=ratio, grad_growth=1000.0 if gain == 2.0 else 1.0, hidden=hidden,
                layers=layers, saturation=0.7 if gain == 2.0 else 0.1, **run_options,
            )  # fmt: skip
            axes = {"model.init_gain": gain, "task.seq_len": seq_len}
            entries.append({"id": rid, "axes": axes, "status": "done", "error": None})
    spec = {
        "name": name, "axes": {"model.init_gain": list(gains), "task.seq_len": list(seq_lens)},
        "runs": entries,
    }  # fmt: skip
    (path / "study.json").write_text(json.dumps(spec, indent=2))
    return path


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.sources += [v for k, v in attrs if k in ("src", "href") and v]


def check_png(data: bytes) -> None:
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    with Image.open(io.BytesIO(data)) as image:
        image.verify()


def check_report(out: Path) -> None:
    """Every PNG is valid; every image that index.html and README.md reference resolves."""
    pngs = sorted(out.glob("*.png"))
    assert pngs
    for png in pngs:
        check_png(png.read_bytes())
    page = (out / "index.html").read_text()
    links = _Links()
    links.feed(page)
    assert links.sources and all(s.startswith("data:image/png;base64,") for s in links.sources)
    for source in links.sources:
        check_png(base64.b64decode(source.partition(",")[2]))
    assert "could not draw" not in page
    readme = (out / "README.md").read_text()
    targets = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert sorted(targets) == sorted(p.name for p in pngs)
    assert all((out / t).is_file() for t in targets)
    assert len(links.sources) == len(targets)
    assert "could not draw" not in readme
