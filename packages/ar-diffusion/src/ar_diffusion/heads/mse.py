"""The regression baseline: an MLP predicts the value itself under a squared error. Its
"sample" is the conditional mean, so on a multimodal target it lands between the modes;
the diffusion, flow and mixture heads are compared against it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError

from .base import check_hidden, check_steps, check_target

__all__ = ["MSEHead"]


class MSEHead(nn.Module):
    """Predicts the mean of a ``dim``-dimensional value from ``cond_dim``-wide hidden states."""

    default_steps = 1

    def __init__(self, dim: int, cond_dim: int, *, width: int = 128) -> None:
        super().__init__()
        if dim < 1 or cond_dim < 1:
            raise ConfigError(f"MSEHead: dim and cond_dim must be >= 1, got {dim}, {cond_dim}")
        self.dim, self.cond_dim = dim, cond_dim
        self.net = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, dim))

    def network_calls(self, steps: int | None = None, method: str | None = None) -> int:
        check_steps(self, steps)
        return 1

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-example mean squared error: (..., C), (..., d) -> (...)."""
        check_target(self, hidden, target)
        return ((self.net(hidden) - target.float()) ** 2).mean(-1)

    @torch.no_grad()
    def sample(
        self, hidden: Tensor, *, generator: torch.Generator | None = None, steps: int | None = None
    ) -> Tensor:
        """The predicted mean (deterministic): (..., C) -> (..., d)."""
        check_hidden(self, hidden)
        check_steps(self, steps)
        out: Tensor = self.net(hidden)
        return out
