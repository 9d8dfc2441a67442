"""Plans are validated partitions; the built-in orderings produce them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ar_core as ar
from ar_core.ordering import Block, PlanError, RandomOrder, Raster


@pytest.mark.parametrize(
    ("steps", "shape", "needle"),
    [
        ([[0], [0, 1]], (2,), "position 0 appears 2 times (steps [0, 1])"),
        ([[0], [2]], (3,), "positions 1 are in no step"),
        ([[0, 1], [5]], (2, 2), "position 5 is outside shape (2, 2) (positions 0..3)"),
        ([[0], []], (1,), "step 1 is empty"),
        ([], (1,), "at least one step"),
        ([[0.5]], (1,), "must be integers"),
        ([[0]], (0,), "positive sizes"),
    ],
)
def test_a_plan_that_is_not_a_partition_is_refused(steps, shape, needle):
    with pytest.raises(PlanError) as err:
        ar.Plan(steps, shape)
    assert needle in str(err.value)


def test_plan_error_is_a_config_error():
    with pytest.raises(ar.ConfigError):
        ar.Plan([[1]], (1,))


def test_raster_and_block():
    assert Raster().plan((2, 3)).order().tolist() == list(range(6))
    plan = Block(4).plan((10,))
    assert plan.step_sizes == [4, 4, 2]
    assert plan.step_ids().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(ar.ConfigError, match="block_size must be >= 1"):
        Block(0)


def test_random_order_is_seeded_by_the_generator():
    a = RandomOrder().plan((5, 5), generator=torch.Generator().manual_seed(3))
    b = RandomOrder().plan((5, 5), generator=torch.Generator().manual_seed(3))
    c = RandomOrder().plan((5, 5), generator=torch.Generator().manual_seed(4))
    assert a == b and a != c


@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.integers(0, 2**31 - 1))
def test_step_ids_invert_the_steps(step_of, seed):
    # Build steps from an arbitrary assignment of positions to (non-empty) steps.
    used = sorted(set(step_of))
    steps = [[i for i, s in enumerate(step_of) if s == u] for u in used]
    perm = torch.randperm(len(steps), generator=torch.Generator().manual_seed(seed)).tolist()
    plan = ar.Plan([steps[p] for p in perm], (len(step_of),))
    ids = plan.step_ids()
    for k, step in enumerate(plan.steps):
        assert (ids[step] == k).all()
    assert sorted(plan.order().tolist()) == list(range(len(step_of)))
