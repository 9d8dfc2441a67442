"""The log-linear schedule: the NELBO weight is -alpha'/(1 - alpha) = 1/t; antithetic
times put exactly one time in each of n equal strata."""

import pytest
import torch

from ar_core.errors import ConfigError
from ar_diffusion.schedule import LogLinearSchedule, antithetic_times


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1])
def test_weight_is_minus_alpha_prime_over_mask_rate(eps: float) -> None:
    sched = LogLinearSchedule(eps=eps)
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64, requires_grad=True)
    (d_alpha,) = torch.autograd.grad(sched.alpha(t).sum(), t)
    expected = -d_alpha / (1 - sched.alpha(t))
    torch.testing.assert_close(sched.weight(t.detach()), expected.detach())
    torch.testing.assert_close(sched.mask_rate(t), 1 - sched.alpha(t))
    torch.testing.assert_close(torch.exp(-sched.sigma(t)), sched.alpha(t))


def test_antithetic_times_one_per_stratum() -> None:
    g = torch.Generator().manual_seed(0)
    for n in (1, 4, 17):
        t = antithetic_times(n, generator=g)
        strata = torch.sort((t * n).floor().long()).values
        assert torch.equal(strata, torch.arange(n))


def test_clip_and_bad_ranges() -> None:
    sched = LogLinearSchedule(t_min=0.3, t_max=0.8)
    u = torch.tensor([0.0, 0.5, 0.999])
    t = sched.clip(u)
    assert bool((t >= 0.3).all() and (t < 0.8).all())
    with pytest.raises(ValueError, match="t_min"):
        LogLinearSchedule(t_min=0.8, t_max=0.3)
    with pytest.raises(ConfigError, match="n >= 1"):
        antithetic_times(0)
