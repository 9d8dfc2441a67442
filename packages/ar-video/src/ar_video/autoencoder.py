"""A per-frame convolutional autoencoder: frames <-> continuous latents.

FAR, ViD-GPT and DiCoDe all model video in the continuous latent space of a pretrained
image/video autoencoder (Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models", 2022, arXiv:2112.10752). Here a small one is trained on the frames
themselves: a stride-4 4x4 convolution (one cell per 4x4 patch), a 3x3 and a 1x1
convolution take a (1, H, W) frame to a (C, H/4, W/4) latent, and the mirror image (a
stride-4 transposed convolution last) brings it back (linear output, MSE loss; decoded frames are clamped to [0, 1]); the
patch-sized stride keeps it cheap enough to train in seconds on a CPU. After training
the latents are standardised per channel (mean and std over the training frames, kept as
buffers and saved), so the flow-matching models see unit-scale latents.

Notation: N clips, F frames, C latent channels, h = w = H / 4.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import CheckpointError, InputError
from ar_core.trainer import TrainConfig, Trainer
from ar_video.io import load_state, read_module, write_module

__all__ = ["FrameAutoencoder", "train_autoencoder"]

KIND = "autoencoder"


class FrameAutoencoder(nn.Module):
    """Frame (1, size, size) in [0, 1] <-> latent (channels, size/4, size/4)."""

    def __init__(self, size: int = 32, channels: int = 8, width: int = 64) -> None:
        super().__init__()
        if size % 4 or size < 8:
            raise InputError(f"FrameAutoencoder: size must be a multiple of 4 and >= 8, got {size}")
        if channels < 1 or width < 1:
            raise InputError(
                f"FrameAutoencoder: channels and width must be >= 1, got {channels}, {width}"
            )
        self.size, self.channels, self.width = size, channels, width
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=4),  # (width, h, w): one 4x4 patch per latent cell
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),  # neighbouring patches (strokes cross them)
            nn.SiLU(),
            nn.Conv2d(width, channels, 1),  # (C, h, w)
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(width, 1, 4, stride=4),  # (1, H, W)
        )
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @property
    def latent_size(self) -> int:
        return self.size // 4

    def config(self) -> dict[str, Any]:
        return {"size": self.size, "channels": self.channels, "width": self.width}

    # -- raw (unstandardised) maps, used in training ---------------------------------
    def _encode_raw(self, frames: Tensor) -> Tensor:
        return self.encoder(frames * 2 - 1)  # (M, C, h, w)

    def _decode_raw(self, z: Tensor) -> Tensor:
        # a linear output (clamped to [0, 1] only when decoding): a sigmoid saturates on
        # the black background and some seeds collapse to an all-black reconstruction
        return self.decoder(z) * 0.5 + 0.5  # (M, 1, H, W)

    def forward(self, frames: Tensor) -> Tensor:
        """Reconstruction of (M, 1, H, W) frames (the training map)."""
        return self._decode_raw(self._encode_raw(frames))

    # -- clips <-> standardised latents ----------------------------------------------
    def _check(self, clips: Tensor) -> None:
        if clips.dim() != 5 or clips.shape[2] != 1:
            raise InputError(
                f"the autoencoder takes clips (N, F, 1, H, W), got {tuple(clips.shape)}"
            )
        if clips.shape[-2:] != (self.size, self.size):
            h, w = clips.shape[-2:]
            raise InputError(
                f"frames are {h}x{w} but the autoencoder was trained on {self.size}x{self.size} "
                f"frames; resize the frames or train an autoencoder of size {h}"
            )

    @torch.no_grad()
    def encode(self, clips: Tensor, batch_size: int = 512) -> Tensor:
        """(N, F, 1, H, W) -> standardised latents (N, F, C, h, w)."""
        self._check(clips)
        n, f = clips.shape[:2]
        flat = clips.reshape(n * f, 1, self.size, self.size)
        z = torch.cat(
            [self._encode_raw(flat[i : i + batch_size]) for i in range(0, n * f, batch_size)]
        )
        z = (z - self.mean[:, None, None]) / self.std[:, None, None]
        return z.reshape(n, f, self.channels, self.latent_size, self.latent_size)

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 512) -> Tensor:
        """Standardised latents (N, F, C, h, w) -> frames (N, F, 1, H, W) in [0, 1]."""
        n, f = latents.shape[:2]
        z = latents.reshape(n * f, self.channels, self.latent_size, self.latent_size)
        z = z * self.std[:, None, None] + self.mean[:, None, None]
        x = torch.cat(
            [self._decode_raw(z[i : i + batch_size]) for i in range(0, n * f, batch_size)]
        )
        return x.clamp(0, 1).reshape(n, f, 1, self.size, self.size)

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``autoencoder.json`` + ``autoencoder.safetensors`` into ``path`` (atomically)."""
        return write_module(path, KIND, self, self.config(), {})

    @classmethod
    def load(cls, path: str | Path) -> FrameAutoencoder:
        """Load a folder written by :meth:`save` (checksum, names and shapes validated)."""
        config, _, tensors = read_module(path, KIND)
        try:
            model = cls(**config)
        except (TypeError, InputError) as exc:
            raise CheckpointError(
                f"{path}: the saved config {config} is not valid: {exc}"
            ) from None
        load_state(model, tensors, path)
        return model.eval()


def train_autoencoder(
    model: FrameAutoencoder,
    clips: Tensor,
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress_bar: bool = False,
) -> dict[str, float]:
    """Fit ``model`` to the frames of ``clips`` (N, F, 1, H, W) with ar-core's Trainer,
    then set the latent standardisation. Returns ``mse``, ``psnr`` (on the training
    frames) and ``seconds``."""
    model._check(clips)
    frames = clips.reshape(-1, 1, model.size, model.size)

    def data(gen: torch.Generator, b: int) -> Tensor:
        return frames[torch.randint(0, frames.shape[0], (b,), generator=gen)]

    def loss_fn(m: nn.Module, x: Tensor) -> Tensor:
        return F.mse_loss(m(x), x)

    cfg = TrainConfig.build(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.0,
        warmup_steps=max(1, steps // 20),
        seed=seed,
        progress=progress_bar,
        log_every=max(1, steps // 10),
    )
    start = time.perf_counter()
    model.train()
    Trainer(model, loss_fn, data, cfg).train()
    model.eval()
    with torch.no_grad():
        sample = frames[:2048]
        z = model._encode_raw(sample)  # (M, C, h, w)
        model.mean.copy_(z.mean(dim=(0, 2, 3)))
        model.std.copy_(z.std(dim=(0, 2, 3)).clamp_min(1e-4))
        mse = float(F.mse_loss(model(sample), sample))
    return {
        "mse": mse,
        "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "seconds": time.perf_counter() - start,
    }
