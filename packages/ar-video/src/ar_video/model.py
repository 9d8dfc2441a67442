"""The frame transformer shared by FAR and ViD-GPT: latent patches in, velocities out.

A frame's latent (C, h, w) is cut into p x p patches (``patch``); each patch is one token
(a linear patch embedding plus a learned in-frame position). Frames attend frame-causally:
every token sees all tokens of its own frame and of earlier frames, built as ar-core's
``masks.block_causal`` over the frame index of each token (:func:`frame_causal`). Time
runs through RoPE: every token of a frame has the frame's absolute index as its position,
so attention depends on frame *distances* only (and a key/value cached at an index stays
valid however long the clip grows). The backbone is ar-core's :class:`~ar_core.model.
Transformer` fed with ``query_embeds`` (its token table is a single unused row).

Conditioning: each frame carries a flow-matching time t in [0, 1] (1 = clean, 0 = noise;
x_t = t x_1 + (1 - t) eps) embedded sinusoidally and added to its tokens, or a learned
"clean" embedding for context frames (FAR's stochastic clean context and ViD-GPT's
frame-as-prompt mark clean frames this way, distinct from t = 1). The output head is
modulated by t (a shift and a scale, as DiT's final adaLN layer; Peebles & Xie 2023,
arXiv:2212.09748) and predicts, for every patch, the clean latent x_1 (``prediction=
"data"``, the default; the velocity is then (x_1 - x_t) / (1 - t), the same flow) or the
velocity x_1 - eps itself (``prediction="velocity"``).

Long-term context (FAR, Gu et al. 2025, arXiv:2503.19325): older frames can be given as
*coarse* tokens, ``long_patch`` x ``long_patch`` patches (4x fewer tokens at twice the
side) with their own patch and position embeddings; they are always clean context.

Temporal-decay RoPE (FAR's FlexRoPE, an option at test time): ``rope_decay`` < 1 scales
every frame's RoPE position by it, so distant frames look closer than they are.

Notation: B clips, F frames, C latent channels, h = w latent side, n tokens per frame,
N tokens in the whole sequence, D model width.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
from torch import Tensor, nn

from ar_core import masks
from ar_core.cache import StaticKVCache
from ar_core.errors import CheckpointError, ConfigError, InputError, validation_message
from ar_core.model import Transformer, TransformerConfig
from ar_video.io import load_state, read_module, write_module

__all__ = ["FrameTransformer", "FrameTransformerConfig", "frame_causal", "patchify", "unpatchify"]

KIND = "frame_transformer"


def frame_causal(frame_of_token: Tensor) -> masks.MaskSpec:
    """Frame-level causal attention: token i sees token j iff frame(j) <= frame(i)
    (ar-core's ``block_causal`` with frames as steps). ``frame_of_token``: (N,) long,
    non-decreasing."""
    return masks.block_causal(frame_of_token)


def patchify(z: Tensor, p: int) -> Tensor:
    """(B, F, C, h, w) -> (B, F, n, C p p) with n = (h / p) (w / p), row-major patches."""
    B, F_, C, h, w = z.shape
    x = z.reshape(B, F_, C, h // p, p, w // p, p)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, F, h/p, w/p, C, p, p)
    return x.reshape(B, F_, (h // p) * (w // p), C * p * p)


def unpatchify(x: Tensor, p: int, channels: int, side: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, F, n, C p p) -> (B, F, C, h, w)."""
    B, F_ = x.shape[:2]
    g = side // p
    x = x.reshape(B, F_, g, g, channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, F_, channels, side, side)


class FrameTransformerConfig(pydantic.BaseModel):
    """Flat settings of :class:`FrameTransformer`; defaults fit 32x32 frames (8x8x8 latents)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    latent_channels: int = pydantic.Field(default=8, ge=1)  # the autoencoder's C
    latent_size: int = pydantic.Field(default=8, ge=1)  # the autoencoder's h = w
    patch: int = pydantic.Field(default=2, ge=1)  # 2x2 latent patches: 16 tokens a frame
    long_patch: int = pydantic.Field(default=4, ge=1)  # coarse long-term patches: 4 tokens
    dim: int = pydantic.Field(default=64, ge=2)
    n_layers: int = pydantic.Field(default=2, ge=1)
    n_heads: int = pydantic.Field(default=4, ge=1)
    max_frames: int = pydantic.Field(default=64, ge=2)  # RoPE table: frame indices < this
    # "data": the head predicts the clean latent x_1 and the velocity is (x_1 - x_t) / (1 - t)
    # (the same flow, another parameterisation; it learns in far fewer updates on CPU
    # budgets); "velocity": the head predicts x_1 - eps directly (FAR's choice)
    prediction: Literal["data", "velocity"] = "data"

    @pydantic.model_validator(mode="after")
    def _check(self) -> FrameTransformerConfig:
        for name in ("patch", "long_patch"):
            p = getattr(self, name)
            if self.latent_size % p:
                raise ValueError(
                    f"{name}={p} does not divide latent_size={self.latent_size}; pick a divisor"
                )
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"dim={self.dim} / n_heads={self.n_heads} must be an even integer (RoPE)"
            )
        return self

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch) ** 2

    @property
    def long_tokens_per_frame(self) -> int:
        return (self.latent_size // self.long_patch) ** 2


def _sinusoid(t: Tensor, dim: int) -> Tensor:
    """(...,) times in [0, 1] -> (..., dim) sinusoidal features (of 1000 t, as DDPM's)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t[..., None].float() * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FrameTransformer(nn.Module):
    """Frame-causal transformer over latent patches (see the module docstring)."""

    def __init__(
        self,
        latent_channels: int = 8,
        latent_size: int = 8,
        patch: int = 2,
        long_patch: int = 4,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        max_frames: int = 64,
        prediction: Literal["data", "velocity"] = "data",
    ) -> None:
        super().__init__()
        try:
            self.cfg = FrameTransformerConfig(
                latent_channels=latent_channels,
                latent_size=latent_size,
                patch=patch,
                long_patch=long_patch,
                dim=dim,
                n_layers=n_layers,
                n_heads=n_heads,
                max_frames=max_frames,
                prediction=prediction,
            )
        except pydantic.ValidationError as exc:
            raise ConfigError(validation_message(exc, "FrameTransformer")) from None
        cfg = self.cfg
        self.n, self.n_long = cfg.tokens_per_frame, cfg.long_tokens_per_frame
        tcfg = TransformerConfig(
            vocab_size=1,
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            max_seq_len=max_frames * (self.n + self.n_long),
            ffn_hidden=4 * dim,
        )
        self.backbone = Transformer(tcfg)
        self.patch_in = nn.Linear(latent_channels * patch * patch, dim)
        self.long_in = nn.Linear(latent_channels * long_patch * long_patch, dim)
        # in-frame positions start large (std 0.5, not the usual 0.02): a token must find
        # the tokens at its own place in earlier frames, and with tiny position vectors the
        # attention takes many more updates to learn that (measured: next-frame MSE 0.042
        # vs 0.028 after 500 updates on moving digits)
        self.pos = nn.Parameter(torch.randn(self.n, dim) * 0.5)
        self.long_pos = nn.Parameter(torch.randn(self.n_long, dim) * 0.5)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.clean = nn.Parameter(torch.randn(dim) * 0.02)
        self.head_mod = nn.Linear(dim, 2 * dim)  # shift and scale of the output from t
        self.head = nn.Linear(dim, latent_channels * patch * patch)
        nn.init.zeros_(self.head_mod.weight)
        nn.init.zeros_(self.head_mod.bias)
        self.rope_decay = 1.0  # FlexRoPE-style temporal decay (test time only)

    # -- sizes ------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return self.cfg.model_dump()

    def new_cache(self, batch_size: int, max_tokens: int) -> StaticKVCache:
        """A KV cache with room for ``max_tokens`` tokens per clip."""
        return StaticKVCache.for_config(
            self.backbone.cfg, batch_size, max_tokens, device=self.pos.device
        )

    def check_latents(self, z: Tensor, what: str = "latents") -> None:
        c, s = self.cfg.latent_channels, self.cfg.latent_size
        if z.dim() != 5 or tuple(z.shape[2:]) != (c, s, s):
            raise InputError(
                f"{what} must be (B, F, {c}, {s}, {s}) latents of the autoencoder, got "
                f"{tuple(z.shape)}; encode frames with the autoencoder the model was trained on"
            )

    # -- embeddings ---------------------------------------------------------------------
    def time_features(self, t: Tensor) -> Tensor:
        """(B, F) times -> (B, F, D): the time MLP's output, shared by the input embedding
        and the output head (a rollout computes it once per Euler step and passes it to
        :meth:`embed_fine` and :meth:`predict` as ``temb``)."""
        return self.time_mlp(_sinusoid(t, self.cfg.dim))  # type: ignore[no-any-return]

    def time_embedding(self, t: Tensor, clean: Tensor, temb: Tensor | None = None) -> Tensor:
        """(B, F) times and clean flags -> (B, F, D)."""
        emb = self.time_features(t) if temb is None else temb  # (B, F, D)
        return torch.where(clean[..., None], self.clean.expand_as(emb), emb)

    def embed_fine(self, z: Tensor, t: Tensor, clean: Tensor, temb: Tensor | None = None) -> Tensor:
        """(B, F, C, h, w) latents at times t (B, F), clean flags (B, F) -> (B, F n, D);
        ``temb``: :meth:`time_features` of ``t`` when already computed."""
        x = self.patch_in(patchify(z, self.cfg.patch)) + self.pos  # (B, F, n, D)
        x = x + self.time_embedding(t, clean, temb)[:, :, None]
        return x.flatten(1, 2)

    def embed_long(self, z: Tensor) -> Tensor:
        """Clean long-term frames (B, L, C, h, w) -> coarse tokens (B, L n_long, D)."""
        x = self.long_in(patchify(z, self.cfg.long_patch)) + self.long_pos  # (B, L, nl, D)
        ones = torch.ones(z.shape[:2], device=z.device)
        x = x + self.time_embedding(ones, ones.bool())[:, :, None]
        return x.flatten(1, 2)

    def predict(self, hidden: Tensor, t: Tensor, temb: Tensor | None = None) -> Tensor:
        """The head's output for F fine frames: hidden (B, F n, D) at times t (B, F) ->
        (B, F, C, h, w), the clean latent or the velocity (``prediction``); ``temb``:
        :meth:`time_features` of ``t`` when already computed."""
        B, F_ = t.shape
        h = hidden.reshape(B, F_, self.n, -1)
        temb = self.time_features(t) if temb is None else temb
        shift, scale = self.head_mod(temb).chunk(2, dim=-1)
        out = self.head(h * (1 + scale[:, :, None]) + shift[:, :, None])  # (B, F, n, C p p)
        return unpatchify(out, self.cfg.patch, self.cfg.latent_channels, self.cfg.latent_size)

    def to_velocity(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The flow's velocity from the head's output ``out`` at ``x_t`` (B, F, C, h, w),
        times ``t`` (B, F); with data prediction (x_1 - x_t) / (1 - t), 1 - t >= 0.05."""
        if self.cfg.prediction == "velocity":
            return out
        return (out - x_t) / (1 - t).clamp_min(0.05)[..., None, None, None]

    def target(self, x1: Tensor, eps: Tensor) -> Tensor:
        """What the head is trained to output: x_1 (data) or x_1 - eps (velocity)."""
        return x1 if self.cfg.prediction == "data" else x1 - eps

    # -- the backbone -------------------------------------------------------------------
    def run(
        self,
        embeds: Tensor,
        frame_index: Tensor,
        mask: masks.MaskSpec,
        cache: StaticKVCache | None = None,
        commit: bool = False,
    ) -> Tensor:
        """Hidden states (B, T, D) of ``embeds`` (B, T, D) whose tokens belong to the frames
        ``frame_index`` (T,) (their RoPE positions); ``mask`` covers the whole sequence
        (cache entries first). With a cache, attention runs over its committed entries and
        the new ones; ``commit`` makes the new entries context."""
        B, T, _ = embeds.shape
        if int(frame_index.max()) >= self.cfg.max_frames:
            raise InputError(
                f"frame index {int(frame_index.max())} is past max_frames={self.cfg.max_frames}; "
                f"generate fewer frames or train with a larger max_frames"
            )
        positions = frame_index.to(embeds.device)
        if self.rope_decay != 1.0:
            positions = (positions.float() * self.rope_decay).round().long()
        dummy = torch.zeros(B, T, dtype=torch.long, device=embeds.device)
        out = self.backbone(
            dummy, positions=positions, cache=cache, mask=mask, commit=commit, query_embeds=embeds
        )
        return out.hidden

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``frame_transformer.json`` + ``.safetensors`` into ``path`` (atomically)."""
        return write_module(path, KIND, self, self.config(), extra or {})

    @classmethod
    def load(cls, path: str | Path) -> tuple[FrameTransformer, dict[str, Any]]:
        """A model saved by :meth:`save` and the ``extra`` dict saved with it."""
        config, extra, tensors = read_module(path, KIND)
        try:
            model = cls(**config)
        except (TypeError, ConfigError, pydantic.ValidationError) as exc:
            raise CheckpointError(
                f"{path}: the saved config {config} is not valid: {exc}"
            ) from None
        load_state(model, tensors, path)
        return model.eval(), extra
