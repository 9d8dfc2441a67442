"""Every hook a plugin of ``ar`` can implement.

A plugin is a module (or object) named by an entry point of group ``ar``. It implements
any of the hooks below with ``@ar_core.hookimpl``. Hooks receive a ``register`` callback
(the simonw/llm convention) and are always called with keyword arguments.

Each hook's docstring is its one-line reference; ``docs/plugins/hooks.md`` repeats each
signature under a heading of its own, and a test keeps the two in step.
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

PROJECT_NAME = "ar"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks a function of this module as a hook specification (ar-core's own use)."""
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorate a plugin's hook implementations with ``@ar_core.hookimpl``."""


class Register(Protocol):
    """The callback a ``register_*`` hook receives: ``register(name, obj)``."""

    def __call__(self, name: str, obj: Any, /) -> None: ...


@hookspec
def register_orderings(register: Register) -> None:
    """Register Ordering factories: ``register("zigzag", ZigZag)``; calling the factory gives an Ordering."""


@hookspec
def register_strategies(register: Register) -> None:
    """Register decoding strategies: ``register("greedy", fn)`` with ``fn(model, input_ids, config, **kw) -> GenerationResult``."""


@hookspec
def register_attention_backends(register: Register) -> None:
    """Register attention backends: ``register("flex", backend)``, an object with ``unsupported_reason(...)`` and ``attend(...)``."""


@hookspec
def register_step_samplers(register: Register) -> None:
    """Register step samplers: ``register("categorical", factory)`` turning a step's model output into values."""


@hookspec
def register_models(register: Register) -> None:
    """Register model builders: ``register("transformer", builder)`` with ``builder(**config) -> nn.Module``."""


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizer factories: ``register("byte", ByteTokenizer)``."""


@hookspec
def register_recipes(register: Register) -> None:
    """Register recipes (named train-sample-evaluate pipelines): ``register("vision-digits", recipe)``."""


@hookspec
def register_benchmarks(register: Register) -> None:
    """Register benchmarks for ``ar bench``: ``register("decode", fn)`` with ``fn(argv: list[str]) -> dict``."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``ar`` command: ``cli`` is its ``typer.Typer`` app."""
