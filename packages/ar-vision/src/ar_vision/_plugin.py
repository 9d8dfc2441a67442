"""ar-vision's plugin: registers its orderings, tokenizers and recipes."""

from __future__ import annotations
