"""The image-tokenizer protocol every tokenizer of ar-vision follows, and its input checks.

Notation: B batch, S image side, N tokens per image, V vocabulary size, D code dimension.

An image tokenizer maps images ``(B, 1, S, S)`` float in ``[0, 1]`` to tokens ``(B, N)``
long in ``[0, V)`` and back. Multi-scale tokenizers (VAR, Tian et al. 2024, "Visual
Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction",
arXiv:2404.02905) lay their tokens out scale by scale: scale ``k`` holds ``s_k * s_k``
tokens in row-major order, so ``N = sum_k s_k**2``, and ``decode_partial(tokens, k)``
reconstructs from scales ``<= k`` only.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError

# progress(step, metrics) is called during fit (every few steps) when given
Progress = Callable[[int, dict[str, float]], None]


@runtime_checkable
class ImageTokenizer(Protocol):
    """Images (B, 1, S, S) in [0, 1] <-> tokens (B, N) in [0, vocab_size)."""

    name: str
    vocab_size: int
    token_count: int
    image_size: int

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, tokens: Tensor) -> Tensor: ...

    def fit(
        self,
        images: Tensor,
        *,
        steps: int,
        batch_size: int,
        lr: float,
        generator: torch.Generator,
        progress: Progress | None = None,
    ) -> dict[str, float]: ...

    def save(self, path: str | Path) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> Any: ...


@runtime_checkable
class MultiScaleTokenizer(ImageTokenizer, Protocol):
    """A tokenizer whose tokens are laid out scale by scale (side lengths ``scales``)."""

    scales: list[int]

    def decode_partial(self, tokens: Tensor, k: int) -> Tensor: ...


@runtime_checkable
class VQTokenizer(ImageTokenizer, Protocol):
    """A tokenizer whose tokens index a learned codebook."""

    def codebook(self) -> Tensor: ...


def scale_offsets(scales: list[int]) -> list[int]:
    """Start of each scale's tokens, plus the total: [1, 2, 4] -> [0, 1, 5, 21]."""
    out = [0]
    for s in scales:
        out.append(out[-1] + s * s)
    return out


def check_scales(scales: list[int]) -> None:
    if (
        not scales
        or any(s < 1 for s in scales)
        or any(a >= b for a, b in itertools.pairwise(scales))
    ):
        raise ConfigError(
            f"scales must be a strictly increasing list of positive side lengths, e.g. "
            f"[1, 2, 4, 8]; got {scales}"
        )


def check_images(images: Tensor, image_size: int, who: str, channels: int = 1) -> None:
    """Raise InputError unless ``images`` is (B, channels, image_size, image_size) float in [0, 1]."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise InputError(f"{who}: images must be a float tensor (B, C, H, W) in [0, 1]")
    if images.dim() != 4 or images.shape[1] != channels:
        kind = "one grey channel" if channels == 1 else f"{channels} channels"
        got = f" with {images.shape[1]} channels" if images.dim() == 4 else ""
        raise InputError(
            f"{who}: images must have shape (B, {channels}, H, W) ({kind}, as this tokenizer "
            f"was built); got {tuple(images.shape)}{got} (convert the images, or build the "
            f"tokenizer with channels={images.shape[1] if images.dim() == 4 else '?'})"
        )
    if images.shape[2] != image_size or images.shape[3] != image_size:
        raise InputError(
            f"{who}: this tokenizer was built for {image_size}x{image_size} images; got "
            f"{images.shape[2]}x{images.shape[3]} (resize them, or build it with "
            f"image_size={images.shape[2]})"
        )
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise InputError(
            f"{who}: pixel values must lie in [0, 1]; got [{images.min():.3g}, "
            f"{images.max():.3g}] (divide by 255 or clamp first)"
        )


def check_tokens(tokens: Tensor, length: int, vocab_size: int, who: str) -> None:
    """Raise InputError unless ``tokens`` is (B, length) long in [0, vocab_size)."""
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.long:
        raise InputError(f"{who}: tokens must be a long tensor (B, {length})")
    if tokens.dim() != 2 or tokens.shape[1] != length:
        raise InputError(f"{who}: tokens must have shape (B, {length}); got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise InputError(
            f"{who}: token ids must lie in [0, {vocab_size}); got [{int(tokens.min())}, "
            f"{int(tokens.max())}]"
        )


def check_fit_args(
    images: Tensor, image_size: int, steps: int, batch_size: int, lr: float, channels: int = 1
) -> None:
    check_images(images, image_size, "fit", channels)
    if images.shape[0] == 0:
        raise InputError("fit: got no images")
    if steps < 0 or batch_size < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(
            f"fit: need steps >= 0, batch_size >= 1 and a finite lr > 0; got steps={steps}, "
            f"batch_size={batch_size}, lr={lr}"
        )


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def validated(config_cls: Any, **kwargs: Any) -> Any:
    """``config_cls(**kwargs)`` with pydantic's error turned into a ConfigError naming the field."""
    import pydantic

    try:
        return config_cls(**kwargs)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(str(p) for p in err['loc'])}: " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigError(f"{config_cls.__name__}: {problems}") from None


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` random row indices in [0, n), drawn from ``generator`` (with replacement)."""
    return torch.randint(n, (batch_size,), generator=generator)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw initial weights from ``seed`` inside; the caller's global RNG state is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fit_autoencoder(
    tokenizer: Any,
    images: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    progress: Progress | None,
) -> dict[str, float]:
    """The training loop shared by the VQ tokenizers: Adam on the encoder and decoder for
    ``steps`` batches drawn by ``generator`` (the codebook learns by EMA inside
    ``tokenizer.loss``); returns ``tokenizer.evaluate`` on (up to 2048 of) ``images``."""
    check_fit_args(
        images, tokenizer.image_size, steps, batch_size, lr, getattr(tokenizer, "channels", 1)
    )
    own = getattr(tokenizer, "trainable_parameters", None)
    params = (
        own()
        if callable(own)
        else [*tokenizer.encoder.parameters(), *tokenizer.decoder.parameters()]
    )
    opt = torch.optim.Adam(params, lr=lr)
    tokenizer.train()
    for step in range(steps):
        batch = images[batch_indices(images.shape[0], batch_size, generator)]
        loss, info = tokenizer.loss(batch, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None and (step % 50 == 0 or step == steps - 1):
            progress(step, {"loss": loss.item(), **info})
    tokenizer.eval()
    result: dict[str, float] = tokenizer.evaluate(images[:2048])
    return result
