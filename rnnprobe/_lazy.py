"""Package attributes imported on first use, so ``rnnprobe --help`` never loads torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """Return a module ``__getattr__`` that imports ``exports[name]`` (a submodule) on demand.

    ``exports`` maps each public name to the module, relative to ``package``, that defines it.
    """

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        sys.modules[package].__dict__[name] = value  # later lookups skip __getattr__
        return value

    return __getattr__
