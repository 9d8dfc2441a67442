"""A flow-matching head: a small AdaLN MLP predicts the velocity that carries Gaussian
noise to the value of one token given the backbone's hidden state; sampled with Euler or
Heun steps.

Lipman et al., "Flow Matching for Generative Modeling" (2023, arXiv:2210.02747) and Liu
et al., "Flow Straight and Fast" (rectified flow, 2023, arXiv:2209.03003): with ``x_t = (1
- t) x_0 + t x_1``, ``x_0 ~ N(0, I)`` and ``x_1`` the data, the network regresses the
velocity ``x_1 - x_0``; sampling integrates ``dx/dt = v(x_t, t | z)`` from t = 0 to 1.
Euler makes one call per step, Heun (the trapezoid corrector) two per step except that
the last corrector is skipped (EDM's rule, Karras et al. 2022), ``2 S - 1`` calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError

from .base import check_hidden, check_steps, check_target
from .mlp import AdaLNMLP

__all__ = ["FlowHead", "integrate"]

METHODS = ("euler", "heun")


class FlowHead(nn.Module):
    """Per-token flow matching over ``dim``-dimensional values given ``cond_dim``-wide
    hidden states; ``method`` ``euler`` or ``heun`` with ``default_steps`` steps unless
    ``sample`` is told otherwise."""

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        *,
        width: int = 128,
        depth: int = 3,
        method: str = "euler",
        default_steps: int = 32,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"FlowHead: method must be one of {METHODS}, got {method!r}")
        if dim < 1 or cond_dim < 1:
            raise ConfigError(f"FlowHead: dim and cond_dim must be >= 1, got {dim}, {cond_dim}")
        self.dim, self.cond_dim, self.method = dim, cond_dim, method
        self.default_steps = check_steps(self, default_steps)
        self.net = AdaLNMLP(dim, cond_dim, width, depth)

    def network_calls(self, steps: int | None = None, method: str | None = None) -> int:
        n = check_steps(self, steps)
        return n if (method or self.method) == "euler" else 2 * n - 1

    def velocity(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """v(x (N, d), t (N,), z (N, C)) -> (N, d)."""
        return self.net(x, t, z)

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-example velocity regression: hidden (..., C), target (..., d) -> (...)."""
        check_target(self, hidden, target)
        lead = target.shape[:-1]
        x1 = target.reshape(-1, self.dim).float()  # (N, d)
        z = hidden.reshape(-1, self.cond_dim)
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return ((self.velocity(xt, t, z) - (x1 - x0)) ** 2).mean(-1).reshape(lead)

    @torch.no_grad()
    def sample(
        self,
        hidden: Tensor,
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        method: str | None = None,
    ) -> Tensor:
        """One draw per hidden state: (..., C) -> (..., d) with ``steps`` ODE steps."""
        check_hidden(self, hidden)
        n_steps = check_steps(self, steps)
        method = method or self.method
        if method not in METHODS:
            raise ConfigError(f"FlowHead: method must be one of {METHODS}, got {method!r}")
        lead = hidden.shape[:-1]
        z = hidden.reshape(-1, self.cond_dim)
        N, dev = z.shape[0], z.device
        x = torch.randn(N, self.dim, generator=generator, device=dev)
        return integrate(self.velocity, x, z, n_steps, method).reshape(*lead, self.dim)


def integrate(
    velocity: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    z: Tensor,
    steps: int,
    method: str,
) -> Tensor:
    """Integrate dx/dt = velocity(x, t, z) from t = 0 to 1 in ``steps`` equal steps."""
    N = x.shape[0]
    times = torch.linspace(0.0, 1.0, steps + 1, device=x.device)
    for i in range(steps):
        t, s = times[i].expand(N), times[i + 1].expand(N)
        dt = times[i + 1] - times[i]
        v = velocity(x, t, z)
        if method == "heun" and i < steps - 1:
            x_euler = x + dt * v
            x = x + dt * 0.5 * (v + velocity(x_euler, s, z))
        else:
            x = x + dt * v
    return x
