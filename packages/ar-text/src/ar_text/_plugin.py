"""ar-text's plugin: registers its tokenizers, recipes and benchmarks."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl


@hookimpl
def register_tokenizers(register: Register) -> None:
    from ar_text.tokenizers import BPETokenizer, ByteTokenizer

    register("byte", ByteTokenizer)
    register("bpe", BPETokenizer)


@hookimpl
def register_recipes(register: Register) -> None:
    # one module per recipe, imported (with torch) only when recipes load
    from ar_text.recipes import causal as causal_recipe
    from ar_text.recipes import chars, code, hyperfit, sequencematch, stargraph
    from ar_text.recipes import peptides as peptides_recipe
    from ar_text.recipes import seal as seal_recipe
    from ar_text.recipes import sets as sets_recipe

    register("text-code", code.recipe)
    register("text-chars", chars.recipe)
    register("text-hyperfit", hyperfit.recipe)
    register("text-stargraph", stargraph.recipe)
    register("text-sequencematch", sequencematch.recipe)
    register("text-seal", seal_recipe.recipe)
    register("text-causal", causal_recipe.recipe)
    register("text-sets", sets_recipe.recipe)
    register("text-peptides", peptides_recipe.recipe)


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("hf_strategies", lazy_benchmark("ar_text.benchmarks.hf_strategies"))
    register("stargraph_compare", lazy_benchmark("ar_text.benchmarks.stargraph_compare"))
