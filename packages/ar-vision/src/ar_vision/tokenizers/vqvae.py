"""VQ-VAE: a conv autoencoder whose latent grid is quantised to codebook indices.

"Neural Discrete Representation Learning" (van den Oord et al. 2017, arXiv:1711.00937):
nearest-code quantisation, straight-through gradients, commitment loss
``beta * ||z_e - sg(e)||^2``; codes learned by EMA with dead-code restart
(:mod:`ar_vision.tokenizers.codebook`). On 8x8 digits with ``patch=2`` an image is a 4x4
grid: 16 tokens, row-major.

Notation: B batch, S image side, h = S / patch latent side, D code dim, V codebook size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import InputError
from ar_vision.tokenizers.base import (
    Progress,
    check_images,
    check_tokens,
    fit_autoencoder,
    psnr,
    seeded,
    validated,
)
from ar_vision.tokenizers.codebook import EMACodebook, code_usage
from ar_vision.tokenizers.convnet import build_decoder, build_encoder
from ar_vision.tokenizers.io import construct, load_state, read_tokenizer, write_tokenizer


class VQVAEConfig(pydantic.BaseModel):
    """Flat config of :class:`VQVAE`; defaults are sized for 8x8 digits on a CPU."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    image_size: int = pydantic.Field(8, ge=1)  # scikit-learn's digits
    patch: int = pydantic.Field(2, ge=1)  # 8x8 -> 4x4 = 16 tokens (the survey's token check)
    codebook_size: int = pydantic.Field(64, ge=2)  # 16 tokens of 64 codes: PSNR ~20 dB on digits
    dim: int = pydantic.Field(16, ge=1)  # small codes keep nearest-code search well-posed
    hidden: int = pydantic.Field(32, ge=1)  # enough for 8x8 digits, fast on a CPU
    beta: float = pydantic.Field(0.25, ge=0)  # commitment weight of the VQ-VAE paper
    decay: float = pydantic.Field(0.99, ge=0, lt=1)  # EMA decay of the VQ-VAE paper
    dead_after: int = pydantic.Field(20, ge=1)  # restart a code unused for 20 updates
    channels: int = pydantic.Field(1, ge=1)  # 1 grey, 3 RGB
    seed: int = 0  # initial weights (drawn in a forked RNG; global RNG untouched)

    @pydantic.model_validator(mode="after")
    def _patch_divides(self) -> VQVAEConfig:
        if self.image_size % self.patch:
            raise ValueError(f"patch {self.patch} must divide image_size {self.image_size}")
        return self


class VQVAE(nn.Module):
    """Images (B, 1, S, S) <-> tokens (B, h*h) through a learned codebook of V codes."""

    name = "vqvae"

    def __init__(self, **config: Any) -> None:
        super().__init__()
        cfg: VQVAEConfig = validated(VQVAEConfig, **config)
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.grid = cfg.image_size // cfg.patch  # h
        self.vocab_size = cfg.codebook_size
        self.channels = cfg.channels
        self.token_count = self.grid * self.grid
        with seeded(cfg.seed):
            self.encoder = build_encoder(
                patch=cfg.patch, hidden=cfg.hidden, dim=cfg.dim, channels=cfg.channels
            )
            self.decoder = build_decoder(
                patch=cfg.patch, hidden=cfg.hidden, dim=cfg.dim, channels=cfg.channels
            )
        self.quantizer = EMACodebook(
            cfg.codebook_size, cfg.dim, decay=cfg.decay, dead_after=cfg.dead_after
        )

    def codebook(self) -> Tensor:
        """The code vectors (V, D)."""
        return self.quantizer.embed.detach().clone()

    # -- tokens ------------------------------------------------------------------------
    def _latent(self, images: Tensor) -> Tensor:
        z = self.encoder(images)  # (B, D, h, h)
        return z.permute(0, 2, 3, 1).reshape(-1, self.cfg.dim)  # (B*h*h, D) row-major

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        check_images(images, self.image_size, "VQVAE.encode", self.channels)
        idx = self.quantizer.quantize(self._latent(images))  # (B*h*h,)
        return idx.view(images.shape[0], self.token_count)  # (B, N)

    def _decode_vectors(self, zq: Tensor, batch: int) -> Tensor:
        h = self.grid
        zq = zq.view(batch, h, h, self.cfg.dim).permute(0, 3, 1, 2)  # (B, D, h, h)
        return self.decoder(zq)  # (B, 1, S, S)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        check_tokens(tokens, self.token_count, self.vocab_size, "VQVAE.decode")
        if not bool(self.quantizer.initialized):
            raise InputError("VQVAE.decode: the tokenizer is not fitted; call fit() first")
        zq = self.quantizer.lookup(tokens.flatten())  # (B*N, D)
        return self._decode_vectors(zq, tokens.shape[0])

    # -- training ----------------------------------------------------------------------
    def loss(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction + commitment loss on a batch; updates the codebook (EMA)."""
        z = self._latent(images)  # (B*N, D)
        idx = self.quantizer.quantize(z.detach())
        zq = self.quantizer.lookup(idx)  # (B*N, D)
        commit = F.mse_loss(z, zq.detach())
        z_st = z + (zq - z).detach()  # straight-through
        recon = F.mse_loss(self._decode_vectors(z_st, images.shape[0]), images)
        restarted = self.quantizer.update(z, idx, generator)
        loss = recon + self.cfg.beta * commit
        info = {"recon": recon.item(), "commit": commit.item(), "restarted": float(restarted)}
        return loss, info

    def fit(
        self,
        images: Tensor,
        *,
        steps: int,
        batch_size: int = 128,
        lr: float = 3e-3,
        generator: torch.Generator,
        progress: Progress | None = None,
    ) -> dict[str, float]:
        """Train with Adam for ``steps`` batches drawn from ``images`` by ``generator``;
        returns the reconstruction metrics on (up to 2048 of) ``images``."""
        return fit_autoencoder(
            self,
            images,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            generator=generator,
            progress=progress,
        )

    @torch.no_grad()
    def evaluate(self, images: Tensor) -> dict[str, float]:
        """MSE, PSNR (dB), codebook usage (fraction of codes used) and perplexity."""
        tokens = self.encode(images)
        mse = float(F.mse_loss(self.decode(tokens), images))
        return {"mse": mse, "psnr": psnr(mse), **code_usage(tokens, self.vocab_size)}

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        write_tokenizer(
            path, name=self.name, config=self.cfg.model_dump(), tensors=self.state_dict()
        )

    @classmethod
    def load(cls, path: str | Path) -> VQVAE:
        config, tensors = read_tokenizer(path, name=cls.name)
        tokenizer: VQVAE = construct(cls, config, path)
        load_state(tokenizer, tensors, path)
        return tokenizer.eval()
