"""ar-kernels' plugin: registers its attention backends."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl


@hookimpl
def register_attention_backends(register: Register) -> None:
    # Backends are added by the ar-core/ar-kernels modelling issue (flex, xformers).
    return None
