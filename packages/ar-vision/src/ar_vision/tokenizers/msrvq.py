"""Multi-scale residual VQ: the tokenizer of next-scale prediction.

"Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction"
(VAR, Tian et al. 2024, arXiv:2404.02905), section 3.2 and Algorithms 1-2. The encoder's
latent grid f (B, D, H, H) is quantised scale by scale with one shared codebook:

    f_hat = 0
    for s_k in scales:                          # e.g. 1, 2, 4, 8
        r_k   = down(f - f_hat, s_k)            # (B, D, s_k, s_k), area downsampling
        idx_k = nearest_code(r_k)               # s_k * s_k tokens, row-major
        f_hat = f_hat + up(codebook[idx_k], H)  # bilinear upsampling
    image = decoder(f_hat)

so scale k quantises the residual left by scales < k, and ``decode_partial(tokens, k)`` is
``decoder(f_hat after scale k)``. Tokens are laid out scale by scale (N = sum s_k**2).

Training: reconstruction MSE of the full decode (VAR trains only this; ``partial_weight``
> 0 adds the partial decodes against the image), commitment loss on every scale, EMA
codebook with dead-code restart. Gradients pass straight through every scale's
quantiser (r_k + sg(e - r_k)), so a partial decode's gradient reaches the encoder through
the down/up-sampling of the scales before it.

VAR's refinement phi after each upsampling ("quant_resi", section 3.2) is an option:
``phi=True`` replaces every upsampled code map z by ``(1 - a) z + a conv3x3(z)`` with one
3x3 convolution shared by all scales and ``a = phi_ratio`` (VAR: 0.5; VAR shares 4
convolutions among the scales, here 1), applied at every scale as VAR does, in encoding
and decoding alike. It is off by default (the tokens then are exactly those above).

Other deviations from VAR: no perceptual/GAN losses, bilinear instead of bicubic upsampling, EMA codes instead of a
learned codebook. Notation: B batch, D code dim, H latent side (= scales[-1]), S image side
(= H * patch), K number of scales.
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
    check_scales,
    check_tokens,
    fit_autoencoder,
    psnr,
    scale_offsets,
    seeded,
    validated,
)
from ar_vision.tokenizers.codebook import EMACodebook, code_usage
from ar_vision.tokenizers.convnet import build_decoder, build_encoder
from ar_vision.tokenizers.io import construct, load_state, read_tokenizer, write_tokenizer


class MultiScaleRVQConfig(pydantic.BaseModel):
    """Flat config of :class:`MultiScaleRVQ`; defaults are sized for 8x8 digits on a CPU."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    scales: list[int] = [1, 2, 4, 8]  # 85 tokens; 4 steps (the survey's scale-based check)
    patch: int = pydantic.Field(1, ge=1)  # latent side 8 = image side 8 for digits
    codebook_size: int = pydantic.Field(64, ge=2)  # shared by all scales
    dim: int = pydantic.Field(16, ge=1)  # small codes keep nearest-code search well-posed
    hidden: int = pydantic.Field(32, ge=1)  # enough for 8x8 digits, fast on a CPU
    beta: float = pydantic.Field(0.25, ge=0)  # commitment weight of the VQ-VAE paper
    decay: float = pydantic.Field(0.99, ge=0, lt=1)  # EMA decay of the VQ-VAE paper
    dead_after: int = pydantic.Field(20, ge=1)  # restart a code unused for 20 updates
    partial_weight: float = pydantic.Field(0.0, ge=0)  # VAR: only the full decode is trained
    phi: bool = False  # VAR's shared 3x3 refinement after each upsampling (off: plain sum)
    phi_ratio: float = pydantic.Field(0.5, ge=0, le=1)  # VAR's quant_resi mix
    channels: int = pydantic.Field(1, ge=1)  # 1 grey, 3 RGB
    seed: int = 0  # initial weights (drawn in a forked RNG; global RNG untouched)

    @pydantic.field_validator("scales")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        check_scales(v)
        return v


class MultiScaleRVQ(nn.Module):
    """Images (B, 1, S, S) <-> tokens (B, sum s_k^2), scale by scale, one shared codebook."""

    name = "msrvq"
    config_cls: type[MultiScaleRVQConfig] = MultiScaleRVQConfig

    def __init__(self, **config: Any) -> None:
        super().__init__()
        cfg = validated(self.config_cls, **config)
        self.cfg = cfg
        self.scales: list[int] = list(cfg.scales)
        self.latent_side = cfg.scales[-1]  # H
        self.image_size = self.latent_side * cfg.patch  # S
        self.offsets = scale_offsets(self.scales)  # [0, 1, 5, 21, 85] for [1, 2, 4, 8]
        self.token_count = self.offsets[-1]
        self.vocab_size = cfg.codebook_size
        self.channels = cfg.channels
        with seeded(cfg.seed):
            self.encoder = build_encoder(
                patch=cfg.patch, hidden=cfg.hidden, dim=cfg.dim, channels=cfg.channels
            )
            self.decoder = build_decoder(
                patch=cfg.patch, hidden=cfg.hidden, dim=cfg.dim, channels=cfg.channels
            )
            # VAR's phi: one 3x3 convolution shared by every scale (None when off)
            self.phi = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1) if cfg.phi else None
        self.quantizer = EMACodebook(
            cfg.codebook_size, cfg.dim, decay=cfg.decay, dead_after=cfg.dead_after
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What Adam trains: the encoder, the decoder and phi (the codebook learns by EMA)."""
        phi = [] if self.phi is None else list(self.phi.parameters())
        return [*self.encoder.parameters(), *self.decoder.parameters(), *phi]

    def codebook(self) -> Tensor:
        """The code vectors (V, D), shared by all scales."""
        return self.quantizer.embed.detach().clone()

    # -- the residual pyramid ----------------------------------------------------------
    def _down(self, r: Tensor, s: int) -> Tensor:
        return r if s == self.latent_side else F.interpolate(r, size=(s, s), mode="area")

    def _up(self, z: Tensor) -> Tensor:
        """Upsample a code map (B, D, s, s) to (B, D, H, H), then phi when enabled."""
        h = self.latent_side
        if z.shape[-1] != h:
            z = F.interpolate(z, size=(h, h), mode="bilinear", align_corners=False)
        if self.phi is not None:
            a = self.cfg.phi_ratio
            z = (1.0 - a) * z + a * self.phi(z)
        return z

    def _pyramid(
        self, f: Tensor, *, straight_through: bool
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """Quantise latent ``f`` (B, D, H, H) scale by scale. Returns per scale: token ids
        (B, s_k^2), the residual vectors (B*s_k^2, D) and f_hat after the scale
        (B, D, H, H); and the commitment loss (mean over scales)."""
        b, d = f.shape[0], f.shape[1]
        f_hat = torch.zeros_like(f)
        ids, residuals, partial = [], [], []
        commit = f.new_zeros(())
        for s in self.scales:
            r = self._down(f - f_hat, s)  # (B, D, s, s)
            r_flat = r.permute(0, 2, 3, 1).reshape(-1, d)  # (B*s*s, D) row-major
            idx = self.quantizer.quantize(r_flat.detach())  # (B*s*s,)
            zq = self.quantizer.lookup(idx)  # (B*s*s, D)
            if straight_through:
                commit = commit + F.mse_loss(r_flat, zq.detach())
                zq = r_flat + (zq - r_flat).detach()
            z = zq.view(b, s, s, d).permute(0, 3, 1, 2)  # (B, D, s, s)
            f_hat = f_hat + self._up(z)  # (B, D, H, H)
            ids.append(idx.view(b, s * s))
            residuals.append(r_flat.detach())
            partial.append(f_hat)
        return ids, residuals, partial, commit / len(self.scales)

    def _f_hat(self, tokens: Tensor, k: int) -> Tensor:
        """Sum of the upsampled codes of scales <= k: tokens (B, >= offsets[k+1]) -> (B, D, H, H)."""
        b, d = tokens.shape[0], self.cfg.dim
        f_hat = self.quantizer.embed.new_zeros(b, d, self.latent_side, self.latent_side)
        for j in range(k + 1):
            s = self.scales[j]
            zq = self.quantizer.lookup(tokens[:, self.offsets[j] : self.offsets[j + 1]])
            f_hat = f_hat + self._up(zq.view(b, s, s, d).permute(0, 3, 1, 2))
        return f_hat

    # -- tokens ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        check_images(images, self.image_size, f"{type(self).__name__}.encode", self.channels)
        ids, _, _, _ = self._pyramid(self.encoder(images), straight_through=False)
        return torch.cat(ids, dim=1)  # (B, N) scale by scale

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        return self.decode_partial(tokens, len(self.scales) - 1)

    @torch.no_grad()
    def decode_partial(self, tokens: Tensor, k: int) -> Tensor:
        """The image from scales 0..k only. ``tokens`` holds the first ``offsets[k+1]``
        tokens, or all N (then tokens of scales > k are ignored)."""
        who = f"{type(self).__name__}.decode_partial"
        if not 0 <= k < len(self.scales):
            raise InputError(f"{who}: k must lie in [0, {len(self.scales) - 1}]; got {k}")
        length = self.offsets[k + 1]
        if tokens.dim() == 2 and tokens.shape[1] == self.token_count:
            tokens = tokens[:, :length]
        check_tokens(tokens, length, self.vocab_size, who)
        if not bool(self.quantizer.initialized):
            raise InputError(f"{who}: the tokenizer is not fitted; call fit() first")
        return self.decoder(self._f_hat(tokens, k))  # (B, 1, S, S)

    # -- training ----------------------------------------------------------------------
    def scale_targets(self, images: Tensor) -> list[tuple[float, Tensor]]:
        """(weight, target image) of each scale's decode; VAR: the image, full decode only."""
        last = len(self.scales) - 1
        return [(1.0 if k == last else self.cfg.partial_weight, images) for k in range(last + 1)]

    def loss(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Weighted per-scale reconstruction + commitment loss; updates the codebook (EMA)."""
        ids, residuals, partial, commit = self._pyramid(self.encoder(images), straight_through=True)
        recon = images.new_zeros(())
        for (weight, target), f_hat in zip(self.scale_targets(images), partial):
            if weight > 0:
                recon = recon + weight * F.mse_loss(self.decoder(f_hat), target)
        restarted = self.quantizer.update(
            torch.cat(residuals), torch.cat([i.flatten() for i in ids]), generator
        )
        loss = recon + self.cfg.beta * commit
        return loss, {"recon": recon.item(), "commit": commit.item(), "restarted": float(restarted)}

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
        """MSE and PSNR of the full decode, ``mse_k`` of each partial decode against the
        image, codebook usage and perplexity."""
        tokens = self.encode(images)
        out: dict[str, float] = {}
        for k in range(len(self.scales)):
            out[f"mse_{k}"] = float(F.mse_loss(self.decode_partial(tokens, k), images))
        mse = out[f"mse_{len(self.scales) - 1}"]
        return {"mse": mse, "psnr": psnr(mse), **code_usage(tokens, self.vocab_size), **out}

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        write_tokenizer(
            path, name=self.name, config=self.cfg.model_dump(), tensors=self.state_dict()
        )

    @classmethod
    def load(cls, path: str | Path) -> Any:
        config, tensors = read_tokenizer(path, name=cls.name)
        tokenizer = construct(cls, config, path)
        load_state(tokenizer, tensors, path)
        return tokenizer.eval()
