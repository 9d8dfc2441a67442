"""ar-decoding's plugin: registers its strategies."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl


@hookimpl
def register_strategies(register: Register) -> None:
    return None
