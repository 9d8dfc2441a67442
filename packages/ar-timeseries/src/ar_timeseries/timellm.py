"""Time-LLM (Jin et al., ICLR 2024): reprogramming a frozen LM for forecasting.

1. RevIN (:class:`RevIN`): each window is normalised by its own mean and standard deviation
   (with a learnable affine map) and the forecast is mapped back by the exact inverse.
2. Patches of ``patch_len`` 16 with stride 8 (the window padded at the end by repeating its
   last value ``stride`` times, as in the paper: (L - 16) / 8 + 2 patches), each embedded
   linearly to ``d_model``.
3. Reprogramming: ``num_prototypes`` text prototypes are a learned linear map over the
   frozen word embeddings (V, C) -> (P, C); multi-head cross-attention from the patch
   embeddings (queries) to the prototypes (keys and values) gives one LM-width vector per
   patch.
4. Prompt-as-prefix: a short text with the dataset description, the task, the window's
   statistics (min, max, median, trend) and its top-5 lags by FFT autocorrelation
   (circular, lag 0 excluded), embedded by the frozen LM's word embeddings and put before the
   patches (left-padded with spaces to the batch's longest prompt).
5. The frozen LM runs over [prompt; patches]; the first ``d_ff`` features of the patch
   positions' hidden states are flattened and a linear head maps them to ``pred_len``.

Trainable: the RevIN affine, the patch embedding, the prototype map, the attention and
the head; the LM is a :class:`~ar_timeseries.lm.FrozenLM`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError
from ar_timeseries.lm import FrozenLM

EPS = 1e-5


class RevIN(nn.Module):
    """Reversible instance normalisation of (B, L) windows (Kim et al., ICLR 2022)."""

    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.affine = affine
        self.weight = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))
        if not affine:
            self.weight.requires_grad_(False)
            self.bias.requires_grad_(False)

    def norm(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(normalised x, mean (B, 1), std (B, 1))."""
        mean = x.mean(dim=1, keepdim=True)
        std = (x.var(dim=1, keepdim=True, unbiased=False) + EPS).sqrt()
        return (x - mean) / std * self.weight + self.bias, mean, std

    def denorm(self, y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        return (y - self.bias) / self.weight * std + mean


def top_lags(x: Tensor, k: int = 5) -> Tensor:
    """(B, L) -> (B, k) lags 1..L/2 with the largest circular autocorrelation (FFT)."""
    n = x.shape[1]
    f = torch.fft.rfft(x - x.mean(dim=1, keepdim=True), dim=1)
    corr = torch.fft.irfft(f * f.conj(), n=n, dim=1)[:, 1 : n // 2 + 1]
    return corr.topk(min(k, corr.shape[1]), dim=1).indices + 1


class ReprogrammingLayer(nn.Module):
    """Cross-attention from patch embeddings (B, n, d_model) to prototypes (P, C)."""

    def __init__(self, d_model: int, n_heads: int, d_llm: int, d_keys: int | None = None) -> None:
        super().__init__()
        d_keys = d_keys or d_model // n_heads
        self.n_heads, self.d_keys = n_heads, d_keys
        self.query = nn.Linear(d_model, d_keys * n_heads)
        self.key = nn.Linear(d_llm, d_keys * n_heads)
        self.value = nn.Linear(d_llm, d_keys * n_heads)
        self.out = nn.Linear(d_keys * n_heads, d_llm)

    def forward(self, patches: Tensor, prototypes: Tensor) -> Tensor:
        B, n, _ = patches.shape
        H, E = self.n_heads, self.d_keys
        q = self.query(patches).view(B, n, H, E).transpose(1, 2)  # (B, H, n, E)
        k = self.key(prototypes).view(-1, H, E).transpose(0, 1)  # (H, P, E)
        v = self.value(prototypes).view(-1, H, E).transpose(0, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(E), dim=-1)  # (B, H, n, P)
        y = (att @ v).transpose(1, 2).reshape(B, n, H * E)
        return self.out(y)  # (B, n, C)


class TimeLLM(nn.Module):
    """See the module docstring. ``forecast(x, horizon)``: (B, L) -> (B, H <= pred_len)."""

    def __init__(
        self,
        lm: FrozenLM,
        seq_len: int,
        pred_len: int,
        description: str = "a time series",
        patch_len: int = 16,
        stride: int = 8,
        d_model: int = 32,
        d_ff: int | None = None,
        n_heads: int = 4,
        num_prototypes: int = 100,
        dropout: float = 0.1,
        use_prompt: bool = True,
    ) -> None:
        super().__init__()
        if seq_len < patch_len:
            raise ConfigError(f"seq_len={seq_len} is shorter than one patch ({patch_len})")
        d_ff = min(64, lm.dim) if d_ff is None else d_ff
        if d_ff > lm.dim:
            raise ConfigError(f"d_ff={d_ff} exceeds the LM width {lm.dim}; lower d_ff")
        self.lm = lm
        self.seq_len, self.pred_len = seq_len, pred_len
        self.patch_len, self.stride = patch_len, stride
        self.n_patches = (seq_len - patch_len) // stride + 2
        self.d_ff, self.description, self.use_prompt = d_ff, description, use_prompt
        self.revin = RevIN()
        self.patch_embedding = nn.Linear(patch_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.mapping = nn.Linear(lm.vocab_size, num_prototypes)
        self.reprogramming = ReprogrammingLayer(d_model, n_heads, lm.dim)
        self.head = nn.Linear(d_ff * self.n_patches, pred_len)

    def prompts(self, xn: Tensor) -> list[str]:
        """One prompt per normalised window (B, L)."""
        lo, hi = xn.min(dim=1).values, xn.max(dim=1).values
        med = xn.median(dim=1).values
        trend = (xn[:, -1] - xn[:, 0]) > 0
        lags = top_lags(xn)
        return [
            f"{self.description}; forecast next {self.pred_len} steps from {self.seq_len}; "
            f"min {float(lo[i]):.2f} max {float(hi[i]):.2f} median {float(med[i]):.2f}; trend "
            f"{'up' if trend[i] else 'down'}; top lags {' '.join(str(int(v)) for v in lags[i])}:"
            for i in range(xn.shape[0])
        ]

    def _prompt_embeds(self, xn: Tensor) -> Tensor:
        ids = [self.lm.encode(t) for t in self.prompts(xn.detach())]
        n = max(len(i) for i in ids)
        tokens = torch.tensor([[32] * (n - len(i)) + i for i in ids], device=xn.device)
        return self.lm.embed(tokens)  # (B, Tp, C)

    def forward(self, x: Tensor) -> Tensor:  # (B, L) -> (B, pred_len)
        if x.shape[1] != self.seq_len:
            raise InputError(f"this Time-LLM reads {self.seq_len} values, got {x.shape[1]}")
        xn, mean, std = self.revin.norm(x)
        padded = torch.cat([xn, xn[:, -1:].expand(-1, self.stride)], dim=1)
        patches = padded.unfold(1, self.patch_len, self.stride)  # (B, n, patch_len)
        emb = self.dropout(self.patch_embedding(patches))  # (B, n, d_model)
        prototypes = self.mapping(self.lm.word_embeddings.T).T  # (P, C)
        reprogrammed = self.reprogramming(emb, prototypes)  # (B, n, C)
        if self.use_prompt:
            seq = torch.cat([self._prompt_embeds(xn), reprogrammed], dim=1)
        else:
            seq = reprogrammed
        hidden = self.lm.hidden(seq)[:, -self.n_patches :, : self.d_ff]  # (B, n, d_ff)
        y = self.head(hidden.transpose(1, 2).reshape(x.shape[0], -1))
        return self.revin.denorm(y, mean, std)

    def loss(self, x: Tensor, y: Tensor, pos: Tensor | None = None) -> Tensor:
        return nn.functional.mse_loss(self(x), y[:, : self.pred_len])

    @torch.no_grad()
    def forecast(self, x: Tensor, horizon: int, pos: Tensor | None = None) -> Tensor:
        if horizon > self.pred_len:
            raise InputError(
                f"this Time-LLM predicts {self.pred_len} steps; horizon {horizon} needs a model "
                f"trained with pred_len >= {horizon}"
            )
        return self(x)[:, :horizon]
