"""ar-zigzag: an example ar plugin that adds the ``zigzag`` ordering.

The zig-zag order visits a (H, W) grid anti-diagonal by anti-diagonal (d = row + col),
alternating direction, as JPEG orders DCT coefficients: low "frequencies" (top-left) come
first. Each step generates one position, so every step model of ar can train and sample
with it through ``ar_core.registry.orderings.get("zigzag")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

import ar_core
from ar_core.errors import ConfigError

__version__ = "0.1.0"


def zigzag_positions(height: int, width: int) -> list[int]:
    """Row-major flat positions of a (height, width) grid in zig-zag order."""
    order = []
    for d in range(height + width - 1):
        cells = [(r, d - r) for r in range(height) if 0 <= d - r < width]
        if d % 2 == 0:
            cells.reverse()  # even diagonals run bottom-left -> top-right
        order.extend(r * width + c for r, c in cells)
    return order


class ZigZag:
    """One position a step, in zig-zag order over the last two dimensions of the shape."""

    name = "zigzag"

    def plan(
        self, shape: Sequence[int], *, generator: torch.Generator | None = None
    ) -> ar_core.Plan:
        if len(shape) < 2:
            raise ConfigError(
                f"zigzag orders 2-D grids; got shape {tuple(shape)}: use 'raster' for 1-D data"
            )
        *lead, height, width = (int(s) for s in shape)
        grid = zigzag_positions(height, width)
        steps = [
            [block * height * width + p]
            for block in range(math.prod(lead) if lead else 1)
            for p in grid
        ]
        return ar_core.Plan(steps, shape)


@ar_core.hookimpl
def register_orderings(register):  # type: ignore[no-untyped-def]
    register("zigzag", ZigZag)
