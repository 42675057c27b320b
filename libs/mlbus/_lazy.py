"""Package attributes loaded from their module on first use (PEP 562).

A package whose `__init__` would import a heavy dependency for a few of its
names (pyarrow for the offline store, ONNX Runtime for the inference server)
lists those names here instead, so a process that never touches them never
imports them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, module_of: Mapping[str, str]) -> Callable[[str], Any]:
    """The package's module-level `__getattr__`: `name` from `package.<module_of[name]>`."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - the PEP 562 hook's name
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # found directly from now on
        return value

    return __getattr__
