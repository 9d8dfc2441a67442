"""Benchmarks for ``ar bench``: whatever the installed plugins register through
``register_benchmarks`` (a benchmark is ``fn(argv: list[str]) -> dict``; it prints its
table and writes its JSON itself). Nothing is read from a source checkout, so the same
benchmarks run from installed wheels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ar_core import registry

BenchFn = Callable[[list[str]], dict[str, Any]]


def available() -> dict[str, str]:
    """Benchmark name -> where it comes from (the plugin, and the module when lazy)."""
    out: dict[str, str] = {}
    for name, fn in registry.benchmarks.items():
        source = f"plugin {registry.benchmarks.provider(name)}"
        module = getattr(fn, "module", None)
        out[name] = f"{source} ({module})" if isinstance(module, str) else source
    return out


def load(name: str) -> BenchFn:
    """The benchmark ``name``; an unknown one is an UnknownNameError that lists the
    installed ones and, for ours, names the package to install."""
    fn: BenchFn = registry.benchmarks.get(name)
    return fn
