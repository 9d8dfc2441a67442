"""A MAR-style per-token diffusion head: a small AdaLN MLP denoises one token's value given
the backbone's hidden state, trained with a cosine schedule, sampled by DDPM (ancestral)
or DDIM (deterministic, few steps).

Li et al., "Autoregressive Image Generation without Vector Quantization" (MAR, 2024,
arXiv:2406.11838), section 3.2: the loss of a token is ``E_{eps,t} ||eps - eps_theta(x_t |
t, z)||^2`` with ``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps`` and ``z`` the AR hidden
state; sampling runs the reverse process on the head alone. The cosine schedule is Nichol
& Dhariwal's (2021, arXiv:2102.09672): ``abar(t) = cos^2(pi/2 · (t + s) / (1 + s))``,
normalised to 1 at t = 0 and clipped at ``abar_min`` near t = 1. DDIM is Song et al.
(2021, arXiv:2010.02502) with eta = 0.

Time is continuous, ``t`` in [0, 1]; a sampler with ``steps`` S visits ``t = 1, (S-1)/S,
..., 0`` and makes S network calls per draw. ``prediction="eps"`` is MAR's target;
``"v"`` (Salimans & Ho 2022, arXiv:2202.00512) keeps one- and two-step DDIM stable
because the clean estimate never divides by ``sqrt(abar_t)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError

from .base import check_hidden, check_steps, check_target
from .mlp import AdaLNMLP

__all__ = ["DiffusionHead", "cosine_alpha_bar"]

METHODS = ("ddpm", "ddim")


def cosine_alpha_bar(t: Tensor, s: float = 0.008, min_value: float = 1e-4) -> Tensor:
    """``abar(t)`` of the cosine schedule on ``t`` in [0, 1]: 1 at t = 0, ``min_value`` at
    most near t = 1 (a finite signal-to-noise ratio everywhere)."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return (f / f0).clamp(min=min_value, max=1.0)


class DiffusionHead(nn.Module):
    """Per-token diffusion over ``dim``-dimensional values given ``cond_dim``-wide hidden
    states (see the module docstring). ``method`` ``ddpm`` or ``ddim`` with
    ``default_steps`` calls per draw unless ``sample`` is told otherwise; ``temperature``
    scales DDPM's injected noise (MAR's temperature; 1 = the model's distribution)."""

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        *,
        width: int = 128,
        depth: int = 3,
        prediction: str = "eps",
        method: str = "ddpm",
        default_steps: int = 50,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if prediction not in ("eps", "v"):
            raise ConfigError(f"DiffusionHead: prediction must be 'eps' or 'v', got {prediction!r}")
        if method not in METHODS:
            raise ConfigError(f"DiffusionHead: method must be one of {METHODS}, got {method!r}")
        if dim < 1 or cond_dim < 1:
            raise ConfigError(
                f"DiffusionHead: dim and cond_dim must be >= 1, got {dim}, {cond_dim}"
            )
        if temperature < 0:
            raise ConfigError(f"DiffusionHead: temperature must be >= 0, got {temperature}")
        self.dim, self.cond_dim = dim, cond_dim
        self.prediction, self.method, self.temperature = prediction, method, temperature
        self.default_steps = check_steps(self, default_steps)
        self.net = AdaLNMLP(dim, cond_dim, width, depth)

    def network_calls(self, steps: int | None = None, method: str | None = None) -> int:
        """Calls of the denoiser per draw (one per step for both samplers)."""
        return check_steps(self, steps)

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-example denoising loss: hidden (..., C), target (..., d) -> (...)."""
        check_target(self, hidden, target)
        lead = target.shape[:-1]
        x = target.reshape(-1, self.dim).float()  # (N, d)
        z = hidden.reshape(-1, self.cond_dim)  # (N, C)
        t = torch.rand(x.shape[0], device=x.device)  # (N,)
        ab = cosine_alpha_bar(t)[:, None]  # (N, 1)
        eps = torch.randn_like(x)
        xt = ab.sqrt() * x + (1 - ab).sqrt() * eps
        want = eps if self.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x
        out = self.net(xt, t, z)
        return ((out - want) ** 2).mean(-1).reshape(lead)

    def _estimates(self, xt: Tensor, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) at time t from the network's prediction."""
        ab = cosine_alpha_bar(t)[:, None]
        out = self.net(xt, t, z)
        if self.prediction == "eps":
            x0 = (xt - (1 - ab).sqrt() * out) / ab.sqrt()
            return x0, out
        x0 = ab.sqrt() * xt - (1 - ab).sqrt() * out
        eps = (1 - ab).sqrt() * xt + ab.sqrt() * out
        return x0, eps

    @torch.no_grad()
    def sample(
        self,
        hidden: Tensor,
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        method: str | None = None,
    ) -> Tensor:
        """One draw per hidden state: (..., C) -> (..., d), ``steps`` denoiser calls."""
        check_hidden(self, hidden)
        n_steps = check_steps(self, steps)
        method = method or self.method
        if method not in METHODS:
            raise ConfigError(f"DiffusionHead: method must be one of {METHODS}, got {method!r}")
        lead = hidden.shape[:-1]
        z = hidden.reshape(-1, self.cond_dim)  # (N, C)
        N, dev = z.shape[0], z.device
        x = torch.randn(N, self.dim, generator=generator, device=dev)  # (N, d)
        times = torch.linspace(1.0, 0.0, n_steps + 1, device=dev)
        for i in range(n_steps):
            t, s = times[i].expand(N), times[i + 1].expand(N)
            x0, eps = self._estimates(x, t, z)
            ab_t, ab_s = cosine_alpha_bar(t)[:, None], cosine_alpha_bar(s)[:, None]
            if i == n_steps - 1:  # s = 0: the clean estimate itself
                x = x0
            elif method == "ddim":
                x = ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps
            else:  # the Gaussian posterior q(x_s | x_t, x0_hat)
                alpha = ab_t / ab_s
                beta = 1 - alpha
                mean = (ab_s.sqrt() * beta * x0 + alpha.sqrt() * (1 - ab_s) * x) / (1 - ab_t)
                var = beta * (1 - ab_s) / (1 - ab_t)
                noise = torch.randn(N, self.dim, generator=generator, device=dev)
                x = mean + self.temperature * var.sqrt() * noise
        return x.reshape(*lead, self.dim)
