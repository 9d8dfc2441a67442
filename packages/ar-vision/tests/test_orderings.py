"""The image orderings: valid Plans of the right steps, and clear errors."""

from __future__ import annotations

import pytest
import torch

import ar_core
from ar_core import registry
from ar_vision.orderings import CoarseToFine, NextFrequency, NextScale


@pytest.mark.parametrize("cls", [NextScale, NextFrequency])
def test_multiscale_steps_are_whole_scales(cls: type) -> None:
    plan = cls(scales=[1, 2, 4, 8]).plan((85,))
    assert plan.step_sizes == [1, 4, 16, 64]
    assert plan.steps[1].tolist() == [1, 2, 3, 4]  # scale 2 follows the single scale-1 token
    assert plan.order().tolist() == list(range(85))


@pytest.mark.parametrize("cls", [NextScale, NextFrequency])
def test_multiscale_shape_mismatch_names_the_fix(cls: type) -> None:
    with pytest.raises(ar_core.ConfigError, match="needs 85 tokens"):
        cls().plan((64,))
    with pytest.raises(ar_core.ConfigError, match="positive"):
        cls(scales=[0, 2])


def test_coarse_to_fine_is_n_coarse_steps_then_one_fine_step() -> None:
    plan = CoarseToFine().plan((32,))
    assert plan.num_steps == 17
    assert plan.step_sizes == [1] * 16 + [16]
    assert plan.steps[-1].tolist() == list(range(16, 32))
    assert CoarseToFine(n=16).plan((2, 4, 4)).step_sizes == [1] * 16 + [16]
    with pytest.raises(ar_core.ConfigError, match="2N positions"):
        CoarseToFine(n=5).plan((32,))
    with pytest.raises(ar_core.ConfigError, match="2N positions"):
        CoarseToFine().plan((7,))


def test_orderings_are_registered_by_the_plugin() -> None:
    for name, cls in [
        ("next-scale", NextScale),
        ("next-frequency", NextFrequency),
        ("coarse-to-fine", CoarseToFine),
    ]:
        assert registry.orderings.get(name) is cls
        assert registry.orderings.provider(name) == "vision"
    assert isinstance(NextScale(), ar_core.Ordering)


def test_plans_pass_ar_core_validation_for_other_scales() -> None:
    plan = NextScale(scales=[1, 3, 5]).plan((35,))
    assert plan.step_sizes == [1, 9, 25]
    assert torch.equal(plan.step_ids()[:10], torch.tensor([0] + [1] * 9))
