"""Continue clips of frames with a trained model: encode, generate latents, decode.

:func:`continue_clips` is the one entry point from frames to frames for every method of
the package (``far``, ``vidgpt``, ``ad`` and the ``copy-last`` baseline): it checks the
clips (frame size of the autoencoder, at least ``context`` frames), keeps the last
``context`` frames as the context and returns ``n_new`` predicted frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_video.autoencoder import FrameAutoencoder
from ar_video.data import check_clips
from ar_video.far import far_generate
from ar_video.metrics import copy_last
from ar_video.model import FrameTransformer
from ar_video.schedulers import ad_generate
from ar_video.vidgpt import vidgpt_generate

__all__ = ["METHODS", "RolloutSettings", "continue_clips"]

METHODS = ("far", "vidgpt", "ad", "copy-last")


@dataclass(frozen=True)
class RolloutSettings:
    """How a model continues clips: Euler ``steps`` per frame, the short ``window``,
    FAR's ``long_context``, ViD-GPT's ``chunk``, AD's ``offset``, the KV cache."""

    steps: int = 10
    window: int = 4
    long_context: bool = True
    chunk: int = 1
    offset: int = 1
    use_cache: bool = True


def continue_clips(
    method: str,
    clips: Tensor,
    n_new: int,
    *,
    context: int,
    autoencoder: FrameAutoencoder,
    model: FrameTransformer | None = None,
    settings: RolloutSettings | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n_new`` frames (N, n_new, 1, S, S) after the last ``context`` frames of ``clips``
    (N, F, 1, S, S) in [0, 1]."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if context < 1:
        raise ConfigError(f"context must be >= 1 frame, got {context}")
    if n_new < 1:
        raise ConfigError(f"n_new must be >= 1, got {n_new}")
    check_clips(clips, size=autoencoder.size)
    if clips.shape[1] < context:
        raise InputError(
            f"clips have {clips.shape[1]} frames, shorter than the context of {context}; pass "
            f"clips of at least {context} frames or a shorter context"
        )
    ctx = clips[:, clips.shape[1] - context :]
    if method == "copy-last":
        return copy_last(ctx, n_new)
    if model is None:
        raise ConfigError(f"method {method!r} needs a trained model")
    s = settings or RolloutSettings()
    z = autoencoder.encode(ctx)
    if method == "far":
        out = far_generate(
            model,
            z,
            n_new,
            steps=s.steps,
            window=s.window,
            long_context=s.long_context,
            use_cache=s.use_cache,
            generator=generator,
        )
    elif method == "vidgpt":
        out = vidgpt_generate(
            model,
            z,
            n_new,
            steps=s.steps,
            window=s.window,
            chunk=s.chunk,
            use_cache=s.use_cache,
            generator=generator,
        )
    else:
        out, _ = ad_generate(model, z, n_new, steps=s.steps, offset=s.offset, generator=generator)
    return autoencoder.decode(out)
