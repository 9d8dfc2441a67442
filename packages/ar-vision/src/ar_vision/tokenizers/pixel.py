"""The pixel tokenizer: every pixel is one token, its intensity quantised to ``levels`` values.

The "pixel-based" family of the survey "Autoregressive Models in Vision: A Survey"
(Xiong et al. 2024, arXiv:2411.05902): raster over quantised pixels, as in PixelRNN /
PixelCNN (van den Oord et al. 2016, arXiv:1601.06759) with 256 levels. The default
``levels=17`` matches scikit-learn's digits (values 0..16), so their round trip is exact.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ar_core.errors import ConfigError
from ar_vision.tokenizers.base import Progress, check_fit_args, check_images, check_tokens
from ar_vision.tokenizers.io import construct, read_tokenizer, write_tokenizer


class PixelTokenizer:
    """Pixel ``i`` (row-major) -> token ``round(x_i * (levels - 1))``; N = S * S."""

    name = "pixel"

    def __init__(self, levels: int = 17, image_size: int = 8, channels: int = 1) -> None:
        if levels < 2:
            raise ConfigError(f"levels must be >= 2 (two grey values at least); got {levels}")
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1; got {image_size}")
        if channels < 1:
            raise ConfigError(f"channels must be >= 1; got {channels}")
        self.levels = levels
        self.image_size = image_size
        self.vocab_size = levels
        self.channels = channels
        self.token_count = channels * image_size * image_size  # channel by channel

    def config(self) -> dict[str, int]:
        return {"levels": self.levels, "image_size": self.image_size, "channels": self.channels}

    def encode(self, images: Tensor) -> Tensor:
        check_images(images, self.image_size, "PixelTokenizer.encode", self.channels)
        tokens = torch.round(images * (self.levels - 1)).long()  # (B, C, S, S)
        return tokens.flatten(1)  # (B, N)

    def decode(self, tokens: Tensor) -> Tensor:
        check_tokens(tokens, self.token_count, self.vocab_size, "PixelTokenizer.decode")
        images = tokens.float() / (self.levels - 1)  # (B, N)
        return images.view(-1, self.channels, self.image_size, self.image_size)

    def fit(
        self,
        images: Tensor,
        *,
        steps: int = 0,
        batch_size: int = 1,
        lr: float = 1.0,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> dict[str, float]:
        """Nothing to learn; returns the quantisation error on ``images``."""
        check_fit_args(images, self.image_size, steps, batch_size, lr, self.channels)
        mse = float(((self.decode(self.encode(images)) - images) ** 2).mean())
        return {"mse": mse}

    def save(self, path: str | Path) -> None:
        write_tokenizer(path, name=self.name, config=self.config(), tensors={})

    @classmethod
    def load(cls, path: str | Path) -> PixelTokenizer:
        config, _ = read_tokenizer(path, name=cls.name)
        tokenizer: PixelTokenizer = construct(cls, config, path)
        return tokenizer
