"""Recipe ``text-chars``: a small byte-level language model on any UTF-8 text file
(``--set path=FILE``); the last ``held_out_fraction`` of the file is held out. The
pipeline is :mod:`ar_text.recipes._common`'s (as ``text-code``'s).
"""

from __future__ import annotations

from pathlib import Path

from ar_core.errors import ConfigError
from ar_core.recipes import Progress, RecipeResult
from ar_core.recipes.base import RecipeBase
from ar_text.data import file_corpus
from ar_text.recipes._common import (
    TextLMConfig,
    sample_checkpoint,
    train_and_report,
    window_prompts,
)


class TextCharsConfig(TextLMConfig):
    """``text-chars``: one UTF-8 text file; its last ``held_out_fraction`` is held out."""

    path: Path | None = None  # the text file; required (None only so `--set path=` can fill it)


class TextCharsRecipe(RecipeBase):
    name = "text-chars"
    description = "a small byte-level language model on any text file (--set path=FILE)"
    config_class = TextCharsConfig
    in_demo = False

    def demo_config(self) -> TextCharsConfig:
        # small settings; the file still comes from --set path=FILE
        return TextCharsConfig(
            seq_len=128,
            steps=300,
            dim=96,
            n_layers=2,
            eval_bytes=30_000,
            prompt_chars=64,
            sample_tokens=64,
        )

    def _run(self, config: TextCharsConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        corpus = file_corpus(_require_path(config), config.held_out_fraction)
        held = corpus.held_out[0]
        prompts = window_prompts(held, config.n_samples, config.prompt_chars)
        return train_and_report(self.name, config, corpus, prompts, out_dir, progress)

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        config: TextCharsConfig = self.read_config(checkpoint_dir)
        held = file_corpus(_require_path(config), config.held_out_fraction).held_out[0]
        prompts = window_prompts(held, n, config.prompt_chars)
        progress(f"continuing {len(prompts)} held-out prompts")
        return sample_checkpoint(Path(checkpoint_dir), config, prompts, "text-chars samples")


def _require_path(config: TextCharsConfig) -> Path:
    if config.path is None:
        raise ConfigError("text-chars needs a text file: ar train text-chars --set path=FILE")
    return config.path


recipe = TextCharsRecipe()
