"""ar-text: tokenizers, the Hugging Face adapter, text data, recipes and text methods."""

__version__ = "0.1.0"
