"""ar-diffusion's plugin: registers its sampling strategies.

Each strategy module is imported when the strategy first runs, so loading the plugin
(every ``ar`` command does) stays cheap.
"""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl
from ar_core.plugins import lazy

# strategy name -> (module of ar_diffusion, function)
STRATEGIES: dict[str, tuple[str, str]] = {
    "mdlm": ("mdlm", "mdlm"),
    "block-diffusion": ("bd3", "block_diffusion"),
    "freecache": ("freecache", "freecache"),
    "ar-guided-diffusion": ("ar_guided", "ar_guided_diffusion"),
    "ctrldiff": ("ctrldiff", "ctrldiff"),
}


@hookimpl
def register_strategies(register: Register) -> None:
    for name, (module, attr) in STRATEGIES.items():
        register(name, lazy(f"ar_diffusion.{module}", attr))


@hookimpl
def register_recipes(register: Register) -> None:
    from ar_diffusion.recipes import digits, text, two_d  # imports torch: only when recipes load

    register("diffusion-text", text.recipe)
    register("diffusion-2d", two_d.recipe)
    register("diffusion-digits", digits.recipe)


# step sampler name -> function of ar_diffusion.heads.samplers (continuous heads)
STEP_SAMPLERS: dict[str, str] = {
    "diffusion-head": "diffusion_head",
    "flow-head": "flow_head",
    "gmm-head": "gmm_head",
    "mse-head": "mse_head",
}


@hookimpl
def register_step_samplers(register: Register) -> None:
    for name, attr in STEP_SAMPLERS.items():
        register(name, lazy("ar_diffusion.heads.samplers", attr))


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("diffusion", lazy_benchmark("ar_diffusion.benchmarks.diffusion"))
    register("diffusion-continuous", lazy_benchmark("ar_diffusion.benchmarks.continuous"))
