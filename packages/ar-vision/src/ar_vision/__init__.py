"""ar-vision: image tokenizers, image orderings, class-conditional image AR."""

__version__ = "0.1.0"
