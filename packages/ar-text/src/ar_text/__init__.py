"""ar-text: tokenizers, the Hugging Face adapter, text data, recipes and text methods."""

__version__ = "0.1.0"

from typing import Any


def __getattr__(name: str) -> Any:
    """Lazy exports: ``ar_text.from_hf`` imports transformers only when first used."""
    if name in ("from_hf", "HFCausalLM"):
        from ar_text import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'ar_text' has no attribute {name!r}")
