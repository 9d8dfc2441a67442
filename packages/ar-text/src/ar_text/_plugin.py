"""ar-text's plugin: registers its tokenizers and recipes."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl


@hookimpl
def register_tokenizers(register: Register) -> None:
    from ar_text.tokenizers import BPETokenizer, ByteTokenizer

    register("byte", ByteTokenizer)
    register("bpe", BPETokenizer)


@hookimpl
def register_recipes(register: Register) -> None:
    from ar_text.recipes import text_chars, text_code  # imports torch: only when recipes load
    from ar_text.recipes_hyperfit import recipe as text_hyperfit
    from ar_text.recipes_sequencematch import recipe as text_sequencematch
    from ar_text.recipes_stargraph import recipe as text_stargraph

    register("text-code", text_code)
    register("text-chars", text_chars)
    register("text-hyperfit", text_hyperfit)
    register("text-stargraph", text_stargraph)
    register("text-sequencematch", text_sequencematch)
