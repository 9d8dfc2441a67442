"""ar-decoding's plugin: registers its strategies, its recipe and its benchmark.

Each strategy module is imported when the strategy first runs, so loading the plugin
(every ``ar`` command does) stays cheap.
"""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl
from ar_core.plugins import lazy

# strategy name -> (module of ar_decoding, function): one module per strategy
STRATEGIES: dict[str, tuple[str, str]] = {
    "speculative": ("speculative", "speculative"),
    "tree-speculative": ("tree_speculative", "tree_speculative"),
    "prompt-lookup": ("prompt_lookup", "prompt_lookup"),
    "jacobi": ("jacobi", "jacobi"),
    "lookahead": ("lookahead", "lookahead"),
    "sjd": ("sjd", "sjd"),
    "lantern": ("lantern", "lantern"),
    "beam": ("beam", "beam"),
    "constrained": ("constrained", "constrained"),
    "medusa": ("medusa", "medusa"),
    "assd": ("assd", "assd"),
    "mtp": ("mtp", "mtp"),
    "first": ("first", "first"),
}


@hookimpl
def register_strategies(register: Register) -> None:
    for name, (module, attr) in STRATEGIES.items():
        register(name, lazy(f"ar_decoding.{module}", attr))


@hookimpl
def register_recipes(register: Register) -> None:
    from ar_decoding.recipes import mtp as mtp_recipe  # imports torch: only when recipes load

    register("decoding-mtp", mtp_recipe.recipe)


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("decoding", lazy_benchmark("ar_decoding.benchmarks.decoding"))
