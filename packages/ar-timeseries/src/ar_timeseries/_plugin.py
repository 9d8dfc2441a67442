"""ar-timeseries's plugin: registers its recipe and benchmark (imported lazily)."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl


@hookimpl
def register_recipes(register: Register) -> None:
    from ar_timeseries.recipes import ett

    register("timeseries-ett", ett.recipe)


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("timeseries", lazy_benchmark("ar_timeseries.benchmarks.timeseries"))
