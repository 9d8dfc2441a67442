"""A Gaussian-mixture head: K components with diagonal covariance per token, their
weights, means and scales computed from the backbone's hidden state.

Bishop, "Mixture Density Networks" (1994); used as the continuous output of AR models
e.g. by DiCoDe (Li et al. 2024, arXiv:2412.04446) over its deep tokens. The loss is the
exact negative log-likelihood ``-log sum_k pi_k prod_j N(x_j; mu_kj, sigma_kj^2)``
computed with a log-sum-exp; a draw picks a component then adds Gaussian noise (one
network call, whatever ``steps`` says).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError

from .base import check_hidden, check_steps, check_target

__all__ = ["GMMHead"]

LOG_STD_RANGE = (-7.0, 5.0)  # keeps the NLL finite while a component collapses


class GMMHead(nn.Module):
    """``components`` diagonal Gaussians over ``dim``-dimensional values given
    ``cond_dim``-wide hidden states, through an MLP of ``width`` (0 = a linear map)."""

    default_steps = 1

    def __init__(self, dim: int, cond_dim: int, *, components: int = 4, width: int = 128) -> None:
        super().__init__()
        if dim < 1 or cond_dim < 1 or components < 1:
            raise ConfigError(
                f"GMMHead: dim, cond_dim and components must be >= 1, got {dim}, {cond_dim}, "
                f"{components}"
            )
        self.dim, self.cond_dim, self.components = dim, cond_dim, components
        n_out = components * (1 + 2 * dim)
        last = nn.Linear(cond_dim if width == 0 else width, n_out)
        self.net: nn.Module = (
            last if width == 0 else nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), last)
        )
        # components start at distinct means (a unit-Gaussian spread of the output bias):
        # from one shared mean at zero, a component that straddles two modes is a stable
        # local optimum the NLL rarely leaves
        with torch.no_grad():
            last.bias[components:].view(components, 2, dim)[:, 0].normal_()  # the means

    def network_calls(self, steps: int | None = None, method: str | None = None) -> int:
        check_steps(self, steps)
        return 1

    def params(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log_weights (..., K), means (..., K, d), log_stds (..., K, d))."""
        check_hidden(self, hidden)
        K, d = self.components, self.dim
        out = self.net(hidden)
        logits, rest = out.split([K, 2 * K * d], dim=-1)
        mean, log_std = rest.unflatten(-1, (K, 2 * d)).split([d, d], dim=-1)
        return logits.log_softmax(-1), mean, log_std.clamp(*LOG_STD_RANGE)

    def log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """log p(target | hidden): (..., C), (..., d) -> (...)."""
        check_target(self, hidden, target)
        log_w, mean, log_std = self.params(hidden)
        z = (target.float()[..., None, :] - mean) * torch.exp(-log_std)  # (..., K, d)
        comp = (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)  # (..., K)
        return torch.logsumexp(log_w + comp, dim=-1)

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-example negative log-likelihood (nats): (..., C), (..., d) -> (...)."""
        return -self.log_prob(hidden, target)

    @torch.no_grad()
    def sample(
        self, hidden: Tensor, *, generator: torch.Generator | None = None, steps: int | None = None
    ) -> Tensor:
        """One draw per hidden state: (..., C) -> (..., d)."""
        check_steps(self, steps)
        log_w, mean, log_std = self.params(hidden)
        lead = log_w.shape[:-1]
        K, d = self.components, self.dim
        k = torch.multinomial(log_w.reshape(-1, K).exp(), 1, generator=generator)  # (N, 1)
        idx = k[:, :, None].expand(-1, 1, d)
        mu = mean.reshape(-1, K, d).gather(1, idx)[:, 0]  # (N, d)
        std = log_std.reshape(-1, K, d).gather(1, idx)[:, 0].exp()
        noise = torch.randn(mu.shape, generator=generator, device=mu.device)
        return (mu + std * noise).reshape(*lead, d)
