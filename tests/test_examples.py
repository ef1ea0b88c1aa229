"""The examples cannot rot: each notebook is valid nbformat 4 and its code cells run in order."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

QUICKSTART = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # nbformat 4.5's cell id pattern
CELL_KEYS = {
    "markdown": {"cell_type", "id", "metadata", "source"},
    "code": {"cell_type", "id", "metadata", "source", "outputs", "execution_count"},
}


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(notebook: dict) -> list[str]:
    """Return the source of each code cell, in order (nbformat: a string or a list of lines)."""
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def test_quickstart_is_a_clean_nbformat_4_notebook():
    """The nbformat 4.5 schema's rules for our cells; stored without outputs."""
    notebook = read_notebook(QUICKSTART)
    assert set(notebook) == {"cells", "metadata", "nbformat", "nbformat_minor"}
    assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids) and all(CELL_ID.match(i) for i in ids)
    for cell in notebook["cells"]:
        assert set(cell) == CELL_KEYS[cell["cell_type"]], cell["id"]
        assert isinstance(cell["source"], list) and all(isinstance(s, str) for s in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert not any(line.lstrip().startswith(("%", "!")) for line in code_cells(notebook))


def test_quickstart_runs_and_draws_its_two_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    try:
        for i, source in enumerate(code_cells(read_notebook(QUICKSTART))):
            exec(compile(source, f"cell {i}", "exec"), namespace)
    finally:
        plt.close("all")
    assert namespace["result"].status == "done"
    heatmap, loss = namespace["ax_adjoints"], namespace["ax_loss"]
    assert isinstance(heatmap, Axes) and heatmap.collections  # the mesh, not "no data"
    assert isinstance(loss, Axes) and len(loss.lines) >= 3  # batch, validation, baseline
    for name in ("adjoint_heatmap.png", "loss.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
    assert (tmp_path / "runs" / "quickstart" / "config.json").is_file()
    summary = namespace["summary"]  # what the markdown says of this run stays true
    assert 0.3 < summary.phase("init").decay.rate_per_step < 0.5  # "r ≈ 0.4"
    assert 0.9 < summary.loss_ratio < 1.1  # "stays on the baseline"
