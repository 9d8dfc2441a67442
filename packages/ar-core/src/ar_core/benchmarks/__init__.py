"""Benchmarks for ``ar bench``: one module per benchmark, ``main(argv) -> dict``.

A package keeps its benchmarks in ``ar_<package>/benchmarks/<name>.py`` (so they ship in
its wheel) and registers each through ``register_benchmarks`` as
``register(name, lazy_benchmark("ar_<package>.benchmarks.<name>"))``: the module (and
torch, transformers, ...) is imported only when the benchmark runs, so plugin discovery
stays cheap. ar-core's own: ``decode`` (:mod:`ar_core.benchmarks.decode`).
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyBenchmark:
    """``fn(argv) -> dict`` that imports ``module`` on its first call and runs its ``main``."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __call__(self, argv: list[str]) -> dict[str, Any]:
        main = importlib.import_module(self.module).main
        result: dict[str, Any] = main(list(argv))
        return result

    def __repr__(self) -> str:
        return f"LazyBenchmark({self.module!r})"


def lazy_benchmark(module: str) -> LazyBenchmark:
    """The benchmark whose ``main(argv) -> dict`` is in ``module`` (imported when run)."""
    return LazyBenchmark(module)
