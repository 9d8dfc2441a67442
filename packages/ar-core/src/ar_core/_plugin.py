"""ar-core's own plugin: the built-ins, registered exactly like a third-party plugin."""

from __future__ import annotations

from typing import Any

from ar_core.attention import MathBackend, SdpaBackend
from ar_core.hookspecs import Register, hookimpl
from ar_core.ordering import Block, RandomOrder, Raster


@hookimpl
def register_orderings(register: Register) -> None:
    register("raster", Raster)
    register("random", RandomOrder)
    register("block", Block)


@hookimpl
def register_attention_backends(register: Register) -> None:
    register("math", MathBackend())
    register("sdpa", SdpaBackend())


def _greedy(*args: Any, **kwargs: Any) -> Any:
    """Strategy ``greedy`` (ar_core.generation.greedy, imported on first use)."""
    from ar_core.generation import greedy

    return greedy(*args, **kwargs)


def _sample(*args: Any, **kwargs: Any) -> Any:
    """Strategy ``sample`` (ar_core.generation.sample_strategy, imported on first use)."""
    from ar_core.generation import sample_strategy

    return sample_strategy(*args, **kwargs)


def _transformer(**config: Any) -> Any:
    """Model ``transformer``: ar_core.model.build_transformer(**config)."""
    from ar_core.model import build_transformer

    return build_transformer(**config)


@hookimpl
def register_strategies(register: Register) -> None:
    register("greedy", _greedy)
    register("sample", _sample)


def _categorical(**kwargs: Any) -> Any:
    """Step sampler ``categorical`` (ar_core.steps.Categorical: processors, temperature)."""
    from ar_core.steps import Categorical

    return Categorical(**kwargs)


@hookimpl
def register_step_samplers(register: Register) -> None:
    register("categorical", _categorical)


@hookimpl
def register_models(register: Register) -> None:
    register("transformer", _transformer)


@hookimpl
def register_recipes(register: Register) -> None:
    from ar_core.recipes.anyorder import recipe  # imports torch: only when recipes load

    register("core-anyorder", recipe)
    from ar_core.recipes.diagnostics import recipe as diagnostics

    register("core-diagnostics", diagnostics)


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("decode", lazy_benchmark("ar_core.benchmarks.decode"))
