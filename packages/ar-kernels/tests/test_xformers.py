"""XformersBackend: clear errors where it cannot run; on a CUDA machine with xformers,
outputs equal the math reference backend."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ar_core import masks, registry
from ar_core.attention import MathBackend, attend, resolve_backend
from ar_core.errors import ConfigError
from ar_kernels import xformers_backend
from ar_kernels.xformers_backend import XformersBackend, additive_bias

HAS_CUDA = torch.cuda.is_available()
HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


def test_xformers_is_registered():
    assert isinstance(registry.attention_backends.get("xformers"), XformersBackend)


def test_xformers_on_cpu_names_the_reason_and_the_alternatives():
    with pytest.raises(
        ConfigError,
        match=r"'xformers' cannot run here: xformers needs a CUDA device \(got cpu\); "
        r"use 'sdpa' or 'flex'\. Backends that can: 'flex', 'math', 'sdpa'",
    ):
        resolve_backend("xformers", "cpu", torch.float32, masks.causal())
    q = k = v = torch.zeros(1, 2, 3, 8)
    with pytest.raises(ConfigError, match=r"needs a CUDA device \(got cpu\)"):
        attend(q, k, v, mask=None, q_offset=0, kv_len=3, backend="xformers")


def test_missing_xformers_tells_how_to_install(monkeypatch):
    monkeypatch.setattr(xformers_backend.importlib.util, "find_spec", lambda name: None)
    reason = XformersBackend().unsupported_reason(
        device=torch.device("cuda"), dtype=torch.float16, mask=None
    )
    assert reason == "xformers is not installed: pip install 'ar-kernels[xformers]'"


def test_unsupported_dtype_is_named(monkeypatch):
    monkeypatch.setattr(xformers_backend.importlib.util, "find_spec", lambda name: object())
    reason = XformersBackend().unsupported_reason(
        device=torch.device("cuda"), dtype=torch.float64, mask=None
    )
    assert reason is not None and "got torch.float64" in reason


def test_additive_bias_is_zero_where_visible_and_aligned():
    visible = torch.tensor([[[True, False, True], [False, False, True]]])  # (1, 2, 3)
    bias = additive_bias(visible, heads=4, dtype=torch.float32)
    assert bias.shape == (1, 4, 2, 3)
    want = torch.tensor([[0.0, float("-inf"), 0.0], [float("-inf"), float("-inf"), 0.0]])
    for h in range(4):
        torch.testing.assert_close(bias[0, h], want)
    assert bias.stride(-2) % 8 == 0  # xformers reads 16-byte aligned rows


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.skipif(not HAS_XFORMERS, reason="needs xformers: pip install 'ar-kernels[xformers]'")
@pytest.mark.parametrize(
    ("mask", "q_len", "k_len", "q_offset", "kv_len"),
    [
        (masks.causal(), 40, 40, [0, 0], [40, 40]),  # LowerTriangularMask path
        (masks.causal(), 1, 48, [39, 20], [40, 21]),  # decode, ragged
        (masks.block_causal(torch.arange(40) // 8), 40, 40, [0, 0], [40, 33]),
        (
            masks.two_stream(torch.arange(20) // 4, query_sees_own_step=True),
            40,
            40,
            [0, 0],
            [40, 40],
        ),
        (masks.tree([-1, 0, 0, 1, 2, -1], torch.tensor([30, 20])), 6, 40, [30, 20], [36, 0]),
        (None, 8, 40, [0, 0], [40, 17]),
    ],
)
def test_xformers_matches_math_on_cuda(mask, q_len, k_len, q_offset, kv_len):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, q_len, 64, device="cuda", generator=g)
    k = torch.randn(2, 2, k_len, 64, device="cuda", generator=g)
    v = torch.randn(2, 2, k_len, 64, device="cuda", generator=g)
    args = dict(
        mask=mask,
        q_offset=torch.tensor(q_offset, device="cuda"),
        kv_len=torch.tensor(kv_len, device="cuda"),
        scale=None,
    )
    want = MathBackend().attend(q, k, v, **args)
    got32 = XformersBackend().attend(q, k, v, **args)
    torch.testing.assert_close(got32, want, atol=2e-4, rtol=2e-4)
    half = XformersBackend().attend(q.half(), k.half(), v.half(), **args)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), want, atol=2e-2, rtol=2e-2)
