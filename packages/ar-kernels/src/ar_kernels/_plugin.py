"""ar-kernels' plugin: registers its attention backends (``flex``, ``xformers``)."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl
from ar_kernels.flex import FlexBackend
from ar_kernels.xformers_backend import XformersBackend


@hookimpl
def register_attention_backends(register: Register) -> None:
    register("flex", FlexBackend())
    register("xformers", XformersBackend())
