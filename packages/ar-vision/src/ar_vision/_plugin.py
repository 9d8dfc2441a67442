"""ar-vision's plugin: registers its orderings, tokenizers, recipes and benchmark.

Built-ins register exactly like a third-party plugin (entry point ``vision`` of group
``ar``). Heavy modules (torch models, the recipe) are imported only when a hook runs.
"""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl


@hookimpl
def register_orderings(register: Register) -> None:
    from ar_vision.orderings import CoarseToFine, NextFrequency, NextScale

    register("next-scale", NextScale)
    register("next-frequency", NextFrequency)
    register("coarse-to-fine", CoarseToFine)


@hookimpl
def register_tokenizers(register: Register) -> None:
    from ar_vision import tokenizers

    tokenizers.register(register)


@hookimpl
def register_recipes(register: Register) -> None:
    from ar_vision.recipes import digits, images

    register("vision-digits", digits.recipe)
    register("vision-images", images.recipe)


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("vision", lazy_benchmark("ar_vision.benchmarks.vision"))
