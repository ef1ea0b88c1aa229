"""The package layout: imports point down the layers, and every package says what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rnnprobe"

# Lowest first. A module may import its own package and any package of a lower layer; two
# packages of one layer know nothing of each other. rnnprobe/__init__.py (the public API) and
# __main__.py stand outside the layers.
LAYERS = (
    ("errors", "_lazy", "seeds"),
    ("nonlinearity",),
    ("probes", "data"),
    ("core",),
    ("records",),
    ("training",),
    ("analysis",),
    ("report",),
    ("study", "bench"),
    ("cli",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """Return the layer unit of ``rnnprobe.x.y``: its package, or a top-level module."""
    return module.split(".")[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Return (line, module) of every rnnprobe import in ``path``, also inside functions;
    imports under ``if TYPE_CHECKING:`` are annotations only and are skipped."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "rnnprobe" else []
            if node.module == "rnnprobe":  # from rnnprobe import plots: the module named
                names = [f"rnnprobe.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in names if name.startswith("rnnprobe.")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("rnnprobe.")]
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: relative import"
    return found


def layered_files() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).as_posix() not in ("__init__.py", "__main__.py")
    ]


def test_every_module_belongs_to_a_layer() -> None:
    units = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in layered_files()}
    assert units == set(RANK), "add the new package or module to LAYERS"


@pytest.mark.parametrize("path", layered_files(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_point_down_the_layers(path: Path) -> None:
    unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [
        f"line {line}: {module} ({unit_of(module)} is not below {unit})"
        for line, module in imported_modules(path)
        if unit_of(module) != unit and RANK[unit_of(module)] >= RANK[unit]
    ]
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a function-level upward import is found, a TYPE_CHECKING one not."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from rnnprobe.cli.main import main\n"
        "def f():\n    from rnnprobe.report import plots\n    import rnnprobe.study.spec\n"
    )
    assert imported_modules(source) == [(5, "rnnprobe.report"), (6, "rnnprobe.study.spec")]


@pytest.mark.parametrize("package", [p for p in RANK if (PACKAGE / p).is_dir()])
def test_every_package_says_what_it_owns_and_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc and "May import" in doc, f"rnnprobe/{package}/__init__.py: say what it owns"


def test_the_public_api_resolves_without_loading_torch_first() -> None:
    """``import rnnprobe`` loads no torch; every name of ``__all__`` then resolves."""
    import subprocess
    import sys

    script = (
        "import sys, rnnprobe\n"
        "assert 'torch' not in sys.modules\n"
        "missing = [n for n in rnnprobe.__all__ if getattr(rnnprobe, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert sorted(rnnprobe.__all__) == sorted(set(rnnprobe.__all__))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
