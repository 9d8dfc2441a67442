"""A vector-quantisation codebook with EMA updates and dead-code restart.

* Nearest-code quantisation and the commitment loss: "Neural Discrete Representation
  Learning" (VQ-VAE, van den Oord et al. 2017, arXiv:1711.00937); codes move by an
  exponential moving average of the encoder outputs assigned to them (its appendix A.1),
  with Laplace smoothing of the counts.
* Dead-code restart: a code unused for ``dead_after`` consecutive updates is replaced by a
  random encoder output of the current batch ("Jukebox", Dhariwal et al. 2020,
  arXiv:2005.00341, section 3.1).
* :func:`codebook_neighbours`: each code's nearest other codes (used by LANTERN's relaxed
  acceptance, Jang et al. 2024, arXiv:2410.03355).

Notation: V codes, D code dimension, M vectors to quantise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError


class EMACodebook(nn.Module):
    """V codes of dimension D; ``quantize`` picks the nearest, ``update`` moves them (EMA)."""

    def __init__(
        self, size: int, dim: int, *, decay: float = 0.99, dead_after: int = 20, eps: float = 1e-5
    ) -> None:
        super().__init__()
        if size < 2 or dim < 1:
            raise ConfigError(f"a codebook needs size >= 2 and dim >= 1; got {size}, {dim}")
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"codebook decay must lie in [0, 1); got {decay}")
        if dead_after < 1:
            raise ConfigError(f"dead_after must be >= 1 update; got {dead_after}")
        self.size, self.dim, self.decay, self.dead_after, self.eps = (
            size,
            dim,
            decay,
            dead_after,
            eps,
        )
        self.register_buffer("embed", torch.zeros(size, dim))  # (V, D)
        self.register_buffer("embed_sum", torch.zeros(size, dim))  # (V, D) EMA of sums
        self.register_buffer("cluster_size", torch.zeros(size))  # (V,) EMA of counts
        self.register_buffer("unused_for", torch.zeros(size, dtype=torch.long))  # (V,) updates
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    embed: Tensor
    embed_sum: Tensor
    cluster_size: Tensor
    unused_for: Tensor
    initialized: Tensor

    def quantize(self, z: Tensor) -> Tensor:
        """Index of the nearest code (L2) for each row of ``z`` (M, D) -> (M,) long."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise InputError(f"quantize expects (M, {self.dim}) vectors; got {tuple(z.shape)}")
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin
        dist = self.embed.pow(2).sum(1)[None, :] - 2.0 * z @ self.embed.t()  # (M, V)
        return dist.argmin(dim=1)

    def lookup(self, idx: Tensor) -> Tensor:
        """Code vectors for ``idx`` (...) -> (..., D)."""
        return self.embed[idx]

    @torch.no_grad()
    def update(self, z: Tensor, idx: Tensor, generator: torch.Generator) -> int:
        """One EMA step from vectors ``z`` (M, D) assigned to codes ``idx`` (M,); restarts
        dead codes from random rows of ``z``. Returns the number of codes restarted."""
        z = z.detach().float()
        if not bool(self.initialized):
            # data-dependent initialisation: V random encoder outputs (with replacement)
            pick = torch.randint(z.shape[0], (self.size,), generator=generator, device=z.device)
            self.embed.copy_(z[pick])
            self.embed_sum.copy_(z[pick])
            self.cluster_size.fill_(1.0)
            self.initialized.fill_(True)
            idx = self.quantize(z)
        counts = torch.bincount(idx, minlength=self.size).float()  # (V,)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, z)  # (V, D)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        self.unused_for.add_(1).masked_fill_(counts > 0, 0)
        dead = self.unused_for >= self.dead_after  # (V,)
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(z.shape[0], (n_dead,), generator=generator, device=z.device)
            self.embed[dead] = z[pick]
            self.embed_sum[dead] = z[pick]
            self.cluster_size[dead] = 1.0
            self.unused_for[dead] = 0
        return n_dead


def code_usage(idx: Tensor, size: int) -> dict[str, float]:
    """Fraction of the ``size`` codes that ``idx`` uses, and the perplexity of its histogram
    (``exp`` of the entropy: ``size`` when all codes are equally used, 1 for one code)."""
    counts = torch.bincount(idx.flatten(), minlength=size).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"usage": float((counts > 0).double().mean()), "perplexity": math.exp(float(entropy))}


def codebook_neighbours(codebook: Tensor, k: int) -> Tensor:
    """For each of the V codes, the ``k`` nearest other codes by L2 distance, nearest first
    (ties broken by the smaller index): (V, D) -> (V, k) long."""
    if codebook.dim() != 2:
        raise InputError(f"codebook must be (V, D); got shape {tuple(codebook.shape)}")
    size = codebook.shape[0]
    if not 1 <= k < size:
        raise InputError(f"k must lie in [1, {size - 1}] for a codebook of {size} codes; got {k}")
    c = codebook.detach().double()
    dist = torch.cdist(c, c)  # (V, V)
    dist.fill_diagonal_(float("inf"))
    order = torch.sort(dist, dim=1, stable=True).indices  # ties keep index order
    return order[:, :k].contiguous()
