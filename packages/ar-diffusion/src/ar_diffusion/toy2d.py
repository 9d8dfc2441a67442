"""Two-dimensional toy distributions and sample-based distances for continuous generators.

Data: ``8gaussians`` (eight Gaussians of std 0.1 evenly spaced on a circle of
radius 2), ``moons`` (two interleaved half circles with noise 0.1, centred and scaled), and
``checkerboard`` (uniform on the dark squares of a 4×4 board on [-2, 2]^2) – the usual
benchmarks of flow-matching papers (e.g. Lipman et al. 2023, Grathwohl et al. 2019).

Distances between two sample sets: the sliced Wasserstein-1 distance (Bonneel et al.
2015; the mean over random directions of the 1-D Wasserstein distance of the
projections, sorted samples matched in order) and the squared maximum mean discrepancy
with a sum of Gaussian kernels (Gretton et al. 2012; the unbiased U-statistic).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError

__all__ = ["DATASETS", "mmd2", "sample_2d", "sliced_wasserstein"]

DATASETS = ("8gaussians", "moons", "checkerboard")


def sample_2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws (n, 2) from the toy distribution ``name`` (one of :data:`DATASETS`)."""
    if n < 1:
        raise ConfigError(f"sample_2d: n must be >= 1, got {n}")
    g = generator
    if name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g)
        angle = k.float() * (2 * math.pi / 8)
        centre = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
        return centre + 0.1 * torch.randn(n, 2, generator=g)
    if name == "moons":
        upper = torch.rand(n, generator=g) < 0.5
        angle = torch.rand(n, generator=g) * math.pi
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        pts = torch.stack([x - 0.5, y - 0.25], dim=-1) * 1.6
        return pts + 0.1 * torch.randn(n, 2, generator=g)
    if name == "checkerboard":
        # a cell (i, j) of the 4x4 board on [-2, 2]^2 is dark when i + j is even
        i = torch.randint(0, 4, (n,), generator=g)
        j = 2 * torch.randint(0, 2, (n,), generator=g) + (i % 2)
        u = torch.rand(n, 2, generator=g)
        return torch.stack([i.float() + u[:, 0], j.float() + u[:, 1]], dim=-1) - 2.0
    raise ConfigError(f"unknown 2-D dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _check_pair(x: Tensor, y: Tensor, what: str) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise InputError(
            f"{what}: both sample sets must be (n, d) with the same d, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise InputError(f"{what}: the samples hold NaN/inf values (a diverged sampler?)")


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-1 distance between equal-size sample sets x, y (n, d)."""
    _check_pair(x, y, "sliced_wasserstein")
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"sliced_wasserstein: use equal sample counts, got {x.shape[0]} and {y.shape[0]}"
        )
    dirs = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)  # (d, P) unit directions
    px = (x.double() @ dirs).sort(dim=0).values  # (n, P)
    py = (y.double() @ dirs).sort(dim=0).values
    return float((px - py).abs().mean())


def mmd2(x: Tensor, y: Tensor, *, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0)) -> float:
    """Unbiased squared MMD with the kernel sum_h exp(-|a - b|^2 / (2 h^2))."""
    _check_pair(x, y, "mmd2")
    x, y = x.double(), y.double()

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b) ** 2
        return sum((torch.exp(-d2 / (2 * h * h)) for h in bandwidths), torch.zeros_like(d2))

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())
