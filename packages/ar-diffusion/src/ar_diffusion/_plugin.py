"""ar-diffusion's plugin: registers its sampling strategies.

Each strategy module is imported when the strategy first runs, so loading the plugin
(every ``ar`` command does) stays cheap.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from ar_core.hookspecs import Register, hookimpl

# strategy name -> (module of ar_diffusion, function)
STRATEGIES: dict[str, tuple[str, str]] = {
    "mdlm": ("mdlm", "mdlm"),
    "block-diffusion": ("bd3", "block_diffusion"),
}


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    def strategy(*args: Any, **kwargs: Any) -> Any:
        fn = getattr(importlib.import_module(f"ar_diffusion.{module}"), attr)
        return fn(*args, **kwargs)

    functools.update_wrapper(strategy, lambda: None)
    strategy.__name__ = strategy.__qualname__ = attr
    strategy.__doc__ = f"ar_diffusion.{module}.{attr} (imported on first use)"
    return strategy


@hookimpl
def register_strategies(register: Register) -> None:
    for name, (module, attr) in STRATEGIES.items():
        register(name, _lazy(module, attr))


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("diffusion", lazy_benchmark("ar_diffusion.benchmarks.diffusion"))
