"""ar-kernels' plugin: registers its attention backends (``flex``, ``xformers``, ``triton``)
and its benchmark."""

from __future__ import annotations

from ar_core.hookspecs import Register, hookimpl
from ar_kernels.flex import FlexBackend
from ar_kernels.triton_backend import TritonBackend
from ar_kernels.xformers_backend import XformersBackend


@hookimpl
def register_attention_backends(register: Register) -> None:
    register("flex", FlexBackend())
    register("xformers", XformersBackend())
    register("triton", TritonBackend())


@hookimpl
def register_benchmarks(register: Register) -> None:
    from ar_core.benchmarks import lazy_benchmark  # the module itself imports when it runs

    register("flex_vs_sdpa", lazy_benchmark("ar_kernels.benchmarks.flex_vs_sdpa"))
