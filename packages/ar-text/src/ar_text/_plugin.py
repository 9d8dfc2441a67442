"""ar-text's plugin: registers its tokenizers and recipes."""

from __future__ import annotations
