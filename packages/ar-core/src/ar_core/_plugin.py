"""ar-core's own plugin: the built-ins, registered exactly like a third-party plugin."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl
from ar_core.ordering import Block, RandomOrder, Raster


@hookimpl
def register_orderings(register: Register) -> None:
    register("raster", Raster)
    register("random", RandomOrder)
    register("block", Block)
