"""ar-video's plugin: registers its recipe and benchmark (imported when they run)."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl


@hookimpl
def register_recipes(register: Register) -> None:
    from ar_video.recipes import moving_digits

    register("video-moving-digits", moving_digits.recipe)


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("video", lazy_benchmark("ar_video.benchmarks.video"))
