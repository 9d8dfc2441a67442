"""The small denoising network of the diffusion and flow heads: an MLP of residual blocks,
each modulated by adaptive LayerNorm (AdaLN) on a condition vector (the backbone's hidden
state plus a timestep embedding).

This follows the per-token denoiser of MAR (Li et al., "Autoregressive Image Generation
without Vector Quantization", 2024, arXiv:2406.11838, section 3 and appendix): the MLP
acts on one token's noisy value; the condition enters through per-block shift, scale and
gate; the modulations start at zero so every block starts as the identity.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import timestep_embedding

__all__ = ["AdaLNMLP"]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """x + gate · MLP(modulate(LN(x), shift, scale)), with (shift, scale, gate) from c."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        ada = nn.Linear(width, 3 * width)
        nn.init.zeros_(ada.weight)  # the block starts as the identity
        nn.init.zeros_(ada.bias)
        self.ada = nn.Sequential(nn.SiLU(), ada)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)  # each (N, W)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class AdaLNMLP(nn.Module):
    """``forward(x (N, d), t (N,), cond (N, C)) -> (N, d)``: ``depth`` AdaLN residual blocks
    of ``width`` on the value ``x``, conditioned on ``cond`` and the time ``t`` in [0, 1]."""

    def __init__(self, dim: int, cond_dim: int, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.width = width
        self.inp = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        final_ada = nn.Linear(width, 2 * width)
        nn.init.zeros_(final_ada.weight)
        nn.init.zeros_(final_ada.bias)
        self.final_ada = nn.Sequential(nn.SiLU(), final_ada)
        self.out = nn.Linear(width, dim)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        c = self.time(timestep_embedding(t, self.width)) + self.cond(cond)  # (N, W)
        h = self.inp(x)  # (N, W)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(h), shift, scale))  # (N, d)
