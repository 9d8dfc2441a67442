"""ARFlow's hybrid attention: softmax attention within an image, gated linear attention
(chunk-wise retention) across images, in a chunk-parallel form for training and a
recurrent form for sampling.

Hui et al., "ARFlow: Autoregressive Flow with Hybrid Linear Attention" (2025,
arXiv:2501.16085). A training item is a sequence of n images of one class (in the paper
at sorted noise levels, noisier first); each image is a chunk of P tokens. Within a
chunk attention is softmax and bidirectional; across chunks a layer carries a linear
attention state with a per-head decay ``gamma`` (retention, Sun et al. 2023,
arXiv:2307.08621):

    S_j = gamma · S_{j-1} + K_j^T V_j            (D x D per head)
    out_j = softmax(Q_j K_j^T / sqrt(D)) V_j + (Q_j / sqrt(D)) S_{j-1}

so image j sees the images before it only through S_{j-1} (never later ones). The
chunk-parallel form computes every ``S_{j-1}`` at once with the decay matrix
``M[j, i] = gamma^(j-1-i)`` for i < j; the recurrent form steps image by image with
constant memory. Notation: B batch, n images, P tokens per image, C width, H heads,
D = C / H.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError

__all__ = ["ARFlowBackbone", "HybridAttention"]


class HybridAttention(nn.Module):
    """One layer of the hybrid attention (module docstring); decays ``1 - 2^(-5 - h)``
    per head h (RetNet's choice)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"HybridAttention: heads={heads} must divide width={width}")
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        gamma = 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float32))
        self.gamma: Tensor
        self.register_buffer("gamma", gamma, persistent=False)  # (H,)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, n, P, C) -> q, k, v (B, H, n, P, D), q scaled by 1/sqrt(D)."""
        B, n, P, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, P, 3, self.heads, self.head_dim).permute(3, 0, 4, 1, 2, 5)
        return q * self.head_dim**-0.5, k, v

    def _out(self, y: Tensor) -> Tensor:
        """(B, H, n, P, D) -> (B, n, P, C)."""
        B, H, n, P, D = y.shape
        out: Tensor = self.proj(y.permute(0, 2, 3, 1, 4).reshape(B, n, P, H * D))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Chunk-parallel form over all n images: (B, n, P, C) -> (B, n, P, C)."""
        q, k, v = self._qkv(x)
        n = x.shape[1]
        intra = (q @ k.transpose(-1, -2)).softmax(-1) @ v  # (B, H, n, P, D)
        kv = k.transpose(-1, -2) @ v  # (B, H, n, D, D): each image's K^T V
        j = torch.arange(n, device=x.device)
        lag = (j[:, None] - 1 - j[None, :]).clamp(min=0).float()  # (n, n)
        decay = self.gamma[:, None, None] ** lag * (j[None, :] < j[:, None])  # (H, n, n)
        state = torch.einsum("hji,bhide->bhjde", decay, kv)  # S_{j-1} for every j
        return self._out(intra + q @ state)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(batch, self.heads, self.head_dim, self.head_dim, device=device)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Recurrent form, one image: x (B, P, C), state S_{j-1} (B, H, D, D) ->
        (out (B, P, C), S_j)."""
        q, k, v = self._qkv(x[:, None])  # (B, H, 1, P, D)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        intra = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        out = self._out((intra + q @ state)[:, :, None])[:, 0]
        new_state = self.gamma[None, :, None, None] * state + k.transpose(-1, -2) @ v
        return out, new_state


class ARFlowBackbone(nn.Module):
    """Pre-norm residual layers of :class:`HybridAttention` and an MLP over sequences of
    images given as token chunks (B, n, P, C); ``forward`` is chunk-parallel, ``step``
    the recurrent form (one image, one state per layer)."""

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.ModuleList(HybridAttention(width, heads) for _ in range(layers))
        self.norm1 = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.norm2 = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(layers)
        )
        self.width = width

    def _check(self, x: Tensor, dims: int) -> None:
        if x.dim() != dims or x.shape[-1] != self.width:
            shape = "(B, n, P, C)" if dims == 4 else "(B, P, C)"
            raise InputError(
                f"ARFlowBackbone: input must be {shape} with C={self.width}, got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x, 4)
        for attn, n1, n2, mlp in zip(self.attn, self.norm1, self.norm2, self.mlp, strict=True):
            x = x + attn(n1(x))
            x = x + mlp(n2(x))
        return x

    def init_states(self, batch: int, device: torch.device | str | None = None) -> list[Tensor]:
        return [self._layer(i).init_state(batch, device) for i in range(len(self.attn))]

    def _layer(self, i: int) -> HybridAttention:
        layer = self.attn[i]
        assert isinstance(layer, HybridAttention)
        return layer

    def step(self, x: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """One image (B, P, C) given each layer's state -> (out, new states)."""
        self._check(x, 3)
        new = []
        for i, (n1, n2, mlp, s) in enumerate(
            zip(self.norm1, self.norm2, self.mlp, states, strict=True)
        ):
            y, s2 = self._layer(i).step(n1(x), s)
            x = x + y
            x = x + mlp(n2(x))
            new.append(s2)
        return x, new
