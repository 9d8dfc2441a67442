"""The log-linear noise schedule of masked diffusion, and antithetic time sampling.

Sahoo et al., "Simple and Effective Masked Diffusion Language Models" (MDLM, 2024,
arXiv:2406.07524), section 3: the absorbing-state forward process keeps a token with
probability ``alpha_t`` and replaces it by [MASK] otherwise. The log-linear schedule is
``alpha_t = 1 - (1 - eps) t`` (total noise ``sigma_t = -log alpha_t``), so the mask rate
(the "move chance") is ``1 - alpha_t = (1 - eps) t``. The continuous-time NELBO weight
of a masked position is ``-alpha'_t / (1 - alpha_t) = (1 - eps) / ((1 - eps) t) = 1 / t``
exactly, for every ``eps``.

Arriola et al., "Block Diffusion" (BD3-LM, 2025, arXiv:2503.09573), section 5: training
with t drawn from a clipped range ``[t_min, t_max]`` lowers the variance of the
estimator (the weight stays ``1 / t``).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from ar_core.errors import ConfigError

__all__ = ["LogLinearSchedule", "antithetic_times"]


class LogLinearSchedule(BaseModel):
    """``alpha_t = 1 - (1 - eps) t`` on ``t`` in ``[t_min, t_max]`` (the clipped range
    training draws from; ``[0, 1]`` is MDLM's full range)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # MDLM's 1e-3: at t = 1 a token survives with probability eps (alpha_1 > 0 keeps
    # sigma finite); the NELBO weight 1/t does not depend on it
    eps: float = Field(default=1e-3, ge=0, lt=1)
    # BD3-LM clips the mask rate to lower the loss variance; [0, 1] = no clipping
    t_min: float = Field(default=0.0, ge=0, le=1)
    t_max: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> LogLinearSchedule:
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min={self.t_min} must be below t_max={self.t_max}")
        return self

    def alpha(self, t: Tensor) -> Tensor:
        """Probability that a token is still clean at time ``t``."""
        return 1.0 - (1.0 - self.eps) * t

    def mask_rate(self, t: Tensor) -> Tensor:
        """Probability that a token is [MASK] at time ``t``: ``1 - alpha_t``."""
        return (1.0 - self.eps) * t

    def sigma(self, t: Tensor) -> Tensor:
        """Total noise ``-log alpha_t``."""
        return -torch.log1p(-(1.0 - self.eps) * t)

    def weight(self, t: Tensor) -> Tensor:
        """The NELBO weight of a masked position, ``-alpha'_t / (1 - alpha_t) = 1 / t``."""
        return 1.0 / t

    def clip(self, u: Tensor) -> Tensor:
        """Map ``u`` in ``[0, 1)`` to ``t`` in ``[t_min, t_max)`` (kept above 0)."""
        t = self.t_min + (self.t_max - self.t_min) * u
        return t.clamp_min(1e-6)


def antithetic_times(
    n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """``n`` times in ``[0, 1)`` that cover the interval evenly: ``(u + i / n) mod 1`` for
    one uniform ``u`` (MDLM's low-discrepancy sampler; each is still uniform, so the
    estimator stays unbiased, with lower variance than ``n`` independent draws)."""
    if n < 1:
        raise ConfigError(f"antithetic_times needs n >= 1, got {n}")
    u = torch.rand((), generator=generator, device=device)
    return (u + torch.arange(n, device=device, dtype=torch.float32) / n) % 1.0
