import pytest

import ar_core
from ar_zigzag import ZigZag, zigzag_positions


def test_jpeg_order_4x4():
    # The JPEG zig-zag scan of a 4x4 block, written out by hand.
    expected = [0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15]
    assert zigzag_positions(4, 4) == expected


def test_plan_is_a_partition():
    plan = ZigZag().plan((3, 5))
    assert sorted(plan.order().tolist()) == list(range(15))
    assert plan.num_steps == 15


def test_one_dimensional_shape_is_refused():
    with pytest.raises(ar_core.ConfigError, match="2-D"):
        ZigZag().plan((16,))
