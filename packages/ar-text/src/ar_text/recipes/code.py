"""Recipe ``text-code``: a small causal language model on the Python standard library.

It trains a byte-level (or byte-level BPE) Llama-style Transformer on the standard
library's own ``*.py`` sources, the corpus that is on every machine; the pipeline is
:mod:`ar_text.recipes._common`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pydantic

from ar_core.recipes import Progress, RecipeResult
from ar_core.recipes.base import RecipeBase
from ar_text.data import stdlib_corpus
from ar_text.recipes._common import TextLMConfig, prompts_from, sample_checkpoint, train_and_report


class TextCodeConfig(TextLMConfig):
    """``text-code``: the standard library's ``*.py`` sources."""

    source: Literal["stdlib"] = "stdlib"  # the only source that is always there
    max_bytes: int = pydantic.Field(2_000_000, ge=1000)  # cap on the corpus read


class TextCodeRecipe(RecipeBase):
    name = "text-code"
    description = "a small code language model (bytes or byte-level BPE) on the Python stdlib"
    config_class = TextCodeConfig
    in_demo = True

    def demo_config(self) -> TextCodeConfig:
        # byte-level BPE (1024) sees ~2.5x more text per update than bytes: measured on one
        # thread of a shared 2-core machine, 300 updates of 16 x 128 tokens take ~30 s and
        # reach ~2.7 held-out bits per byte (bytes: ~3.2 in the same time)
        return TextCodeConfig(
            tokenizer="bpe",
            bpe_vocab_size=1024,
            max_bytes=400_000,
            seq_len=128,
            steps=300,
            batch_size=16,
            dim=96,
            n_layers=2,
            n_heads=4,
            eval_bytes=30_000,
            n_samples=3,
            prompt_chars=64,
            sample_tokens=64,
        )

    def _run(self, config: TextCodeConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        progress(f"reading up to {config.max_bytes} bytes of the standard library")
        corpus = stdlib_corpus(config.max_bytes, config.held_out_fraction)
        prompts = prompts_from(corpus.held_out, config.n_samples, config.prompt_chars)
        return train_and_report(self.name, config, corpus, prompts, out_dir, progress)

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        config: TextCodeConfig = self.read_config(checkpoint_dir)
        corpus = stdlib_corpus(config.max_bytes, config.held_out_fraction)
        prompts = prompts_from(corpus.held_out, n, config.prompt_chars)
        progress(f"continuing {len(prompts)} held-out prompts")
        return sample_checkpoint(Path(checkpoint_dir), config, prompts, "text-code samples")


recipe = TextCodeRecipe()
