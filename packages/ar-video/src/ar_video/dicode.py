"""DiCoDe: a diffusion decoder from a few deep tokens, and an AR model over deep tokens.

Li et al., "DiCoDe: Diffusion-Compressed Deep Tokens for Autoregressive Video Generation
with Language Models" (2024, arXiv:2412.04446). A clip of F frame latents is compressed
into K continuous "deep tokens" and rebuilt by a diffusion model conditioned on them; a
language-model-style AR model then predicts the deep tokens one after another with a
Gaussian-mixture output head (ar-diffusion's :class:`~ar_diffusion.heads.gmm.GMMHead`).

* :class:`DeepTokenCodec`: an encoder (ar-core Transformer, bidirectional through
  ``masks.prefix`` over the whole sequence) reads the clip's latent patches and K learned
  query tokens and returns K deep tokens of ``token_dim`` values (RMS-normalised, so the
  AR model sees a fixed scale); the decoder is a flow-matching denoiser (bidirectional
  Transformer over [deep tokens ; noisy clip patches], data prediction, Euler sampling).
  Encoder and decoder train together on the decoder's flow-matching loss.
* :class:`DeepTokenAR`: a causal ar-core Transformer over a sequence of deep tokens (a
  learned start vector, then each token in turn) with the GMM head: ``nll`` is the exact
  negative log-likelihood of every token given the ones before it, ``generate`` draws
  new tokens one at a time.

Notation: B clips, F frames, n patches a frame, K deep tokens, d token_dim, D width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core import masks
from ar_core.errors import InputError
from ar_core.model import Transformer, TransformerConfig
from ar_diffusion.heads.gmm import GMMHead
from ar_video.far import flow_targets
from ar_video.model import _sinusoid, patchify, unpatchify

__all__ = ["DeepTokenAR", "DeepTokenCodec"]


def _backbone(dim: int, n_layers: int, n_heads: int, length: int) -> Transformer:
    cfg = TransformerConfig(
        vocab_size=1,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        max_seq_len=length,
        ffn_hidden=4 * dim,
    )
    return Transformer(cfg)


def _run(model: Transformer, embeds: Tensor, mask: masks.MaskSpec | None) -> Tensor:
    dummy = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return model(dummy, mask=mask, query_embeds=embeds).hidden


class DeepTokenCodec(nn.Module):
    """F frame latents (C, h, w) <-> K deep tokens of ``token_dim`` values."""

    def __init__(
        self,
        latent_channels: int = 8,
        latent_size: int = 8,
        frames: int = 4,
        patch: int = 2,
        n_tokens: int = 4,
        token_dim: int = 16,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
    ) -> None:
        super().__init__()
        if latent_size % patch:
            raise InputError(f"patch={patch} must divide latent_size={latent_size}")
        self.channels, self.side, self.frames, self.patch = (
            latent_channels,
            latent_size,
            frames,
            patch,
        )
        self.n_tokens, self.token_dim = n_tokens, token_dim
        self.n = (latent_size // patch) ** 2
        length = frames * self.n + n_tokens
        self.encoder = _backbone(dim, n_layers, n_heads, length)
        self.decoder = _backbone(dim, n_layers, n_heads, length)
        patch_dim = latent_channels * patch * patch
        self.enc_in = nn.Linear(patch_dim, dim)
        self.dec_in = nn.Linear(patch_dim, dim)
        self.pos = nn.Parameter(torch.randn(frames * self.n, dim) * 0.5)
        self.queries = nn.Parameter(torch.randn(n_tokens, dim) * 0.5)
        self.to_token = nn.Linear(dim, token_dim)
        self.from_token = nn.Linear(token_dim, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.out = nn.Linear(dim, patch_dim)
        self.mask = masks.prefix(length)  # every position sees every other: bidirectional
        self.dim = dim

    def _check(self, z: Tensor) -> None:
        want = (self.frames, self.channels, self.side, self.side)
        if z.dim() != 5 or tuple(z.shape[1:]) != want:
            raise InputError(
                f"DiCoDe clips must be (B, {', '.join(map(str, want))}), got {tuple(z.shape)}"
            )

    def encode(self, z: Tensor) -> Tensor:
        """(B, F, C, h, w) -> deep tokens (B, K, d), RMS-normalised per token."""
        self._check(z)
        x = self.enc_in(patchify(z, self.patch)).flatten(1, 2) + self.pos  # (B, F n, D)
        q = self.queries.expand(z.shape[0], -1, -1)
        hidden = _run(self.encoder, torch.cat([x, q], dim=1), self.mask)[:, -self.n_tokens :]
        return F.rms_norm(self.to_token(hidden), (self.token_dim,))

    def denoise(self, tokens: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The decoder's clean-clip prediction (B, F, C, h, w) from deep tokens (B, K, d),
        the noisy clip ``x_t`` and its time ``t`` (B,)."""
        x = self.dec_in(patchify(x_t, self.patch)).flatten(1, 2) + self.pos
        x = x + self.time_mlp(_sinusoid(t, self.dim))[:, None]
        h = _run(self.decoder, torch.cat([self.from_token(tokens), x], dim=1), self.mask)
        out = self.out(h[:, self.n_tokens :]).unflatten(1, (self.frames, self.n))
        return unpatchify(out, self.patch, self.channels, self.side)

    def loss(self, z: Tensor) -> Tensor:
        """Flow-matching (data prediction) loss of rebuilding ``z`` from its deep tokens."""
        t = torch.rand(z.shape[0])
        eps = torch.randn_like(z)
        x_t, _ = flow_targets(z, t[:, None].expand(-1, self.frames), eps)
        return F.mse_loss(self.denoise(self.encode(z), x_t, t), z)

    @torch.no_grad()
    def decode(
        self, tokens: Tensor, steps: int = 10, generator: torch.Generator | None = None
    ) -> Tensor:
        """Deep tokens (B, K, d) -> clip latents (B, F, C, h, w), ``steps`` Euler steps."""
        B = tokens.shape[0]
        x = torch.randn((B, self.frames, self.channels, self.side, self.side), generator=generator)
        for k in range(steps):
            t = torch.full((B,), k / steps)
            x1 = self.denoise(tokens, x, t)
            x = x + (x1 - x) / (1 - t)[:, None, None, None, None] / steps
        return x


class DeepTokenAR(nn.Module):
    """A causal Transformer over deep tokens (B, T, d) with a GMM head."""

    def __init__(
        self,
        token_dim: int = 16,
        max_tokens: int = 64,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        components: int = 4,
    ) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.backbone = _backbone(dim, n_layers, n_heads, max_tokens + 1)
        self.token_in = nn.Linear(token_dim, dim)
        self.start = nn.Parameter(torch.randn(dim) * 0.02)
        self.head = GMMHead(token_dim, dim, components=components, width=dim)

    def hidden(self, tokens: Tensor) -> Tensor:
        """The state that predicts token i from tokens < i: (B, T, d) -> (B, T, D)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise InputError(
                f"deep tokens must be (B, T, {self.token_dim}), got {tuple(tokens.shape)}"
            )
        B = tokens.shape[0]
        x = torch.cat([self.start.expand(B, 1, -1), self.token_in(tokens[:, :-1])], dim=1)
        return _run(self.backbone, x, masks.causal())

    def nll(self, tokens: Tensor) -> Tensor:
        """Negative log-likelihood (nats) of every token given the ones before: (B, T)."""
        return self.head.loss(self.hidden(tokens), tokens)

    @torch.no_grad()
    def generate(
        self, prefix: Tensor, n_new: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n_new`` tokens after ``prefix`` (B, P, d), one GMM draw each: (B, n_new, d)."""
        seq = prefix
        for _ in range(n_new):
            ext = torch.cat([seq, torch.zeros_like(seq[:, :1])], dim=1)
            h = self.hidden(ext)[:, -1]
            seq = torch.cat([seq, self.head.sample(h, generator=generator)[:, None]], dim=1)
        return seq[:, prefix.shape[1] :]
