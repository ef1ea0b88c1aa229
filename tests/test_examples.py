"""The examples cannot rot: each notebook is valid nbformat 4 and its code cells run in order;
README's Python blocks run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

QUICKSTART = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"
README = Path(__file__).parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
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


def readme_blocks() -> list[str]:
    """Return README's ```python blocks, in order."""
    return PYTHON_BLOCK.findall(README.read_text(encoding="utf-8"))


def run_readme_block(index: int) -> dict:
    """Run README's Python block ``index`` as a script; return its namespace."""
    namespace: dict = {"__name__": "__main__"}
    exec(compile(readme_blocks()[index], f"README block {index}", "exec"), namespace)
    return namespace


def test_readme_has_the_three_python_examples_these_tests_run():
    assert len(readme_blocks()) == 3


def test_readme_capture_example_records_what_its_comments_say():
    namespace = run_readme_block(0)
    record, model = namespace["record"], namespace["model"]
    assert tuple(record.layers[0].adjoint_norm.shape) == (128, 32)  # (T, B)
    assert record.reach is not None and record.reach.shape[0] == 2  # (L, S, T, B')
    assert tuple(record.reach.shape[2:]) == (128, 4)
    assert record.layers[0].adjoint_norm.device.type == "cpu"
    assert model.rnn.weight_hh_l0.grad is not None  # the capture left training alone


def test_readme_callback_example_trains_and_prints_each_flush(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = run_readme_block(1)
    assert namespace["result"].status == "done"
    assert (tmp_path / "runs" / "callbacks" / "config.json").is_file()
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == [f"step {s}" for s in (50, 100, 150, 200)]
    assert namespace["summary"].steps == 200


def test_readme_instrument_example_trains_the_tagger_and_gives_back_nn_rnn(capsys):
    from torch import nn

    namespace = run_readme_block(2)
    assert type(namespace["model"].rnn) is nn.RNN  # uninstrumented: the original class
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 * 4  # steps 0, 20, …, 80; 2 layers × 2 directions each
    assert {tuple(line.split()[:3]) for line in printed[:4]} == {
        ("0", layer, direction) for layer in "01" for direction in "01"
    }
