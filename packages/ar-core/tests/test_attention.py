"""attend() and the math / sdpa backends against a naive loop-over-queries attention."""

from __future__ import annotations

import math

import mask_reference as ref
import pytest
import torch
import torch.nn.functional as F
from mask_cases import CASES, IDS

from ar_core import attention, masks, registry
from ar_core.attention import MathBackend, SdpaBackend, attend, resolve_backend
from ar_core.errors import ConfigError, InputError, UnknownNameError

# (Tq, extra buffer keys, q_offset per row as a function of n, kv_len per row, Hkv)
SETTINGS = {
    "square": (None, 0, lambda n: [0, 0], lambda n: [n, n], 2),
    "chunk_in_longer_buffer": (4, 5, lambda n: [n - 4, 3], lambda n: [n, 7], 1),
    "decode": (1, 3, lambda n: [n - 1, 5], lambda n: [n, 6], 4),
}


def reference_visibility(see: ref.Pair, q_len: int, k_len: int, offsets, kv_lens) -> torch.Tensor:
    """(B, Tq, Tk) from the Python-loop mask, keys past kv_len[b] hidden."""
    out = torch.zeros(len(offsets), q_len, k_len, dtype=torch.bool)
    for b, (offset, kv_len) in enumerate(zip(offsets, kv_lens)):
        for i in range(q_len):
            for j in range(min(kv_len, k_len)):
                out[b, i, j] = see(b, offset + i, j)
    return out


def naive_attention(q, k, v, visible, scale=None) -> torch.Tensor:
    """One query at a time in float64: softmax over the visible keys; none visible -> 0."""
    batch, heads, q_len, dim = q.shape
    groups = heads // k.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    out = torch.zeros(batch, heads, q_len, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            kv_head = h // groups
            for i in range(q_len):
                keys = visible[b, i].nonzero().flatten()
                if keys.numel() == 0:
                    continue
                scores = torch.stack(
                    [q[b, h, i].double() @ k[b, kv_head, j].double() for j in keys]
                )
                weights = torch.softmax(scores * scale, dim=0)
                out[b, h, i] = (weights[:, None] * v[b, kv_head, keys].double()).sum(0)
    return out


def make_qkv(batch, heads, kv_heads, q_len, k_len, dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, k_len, dim, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, k_len, dim, generator=g).to(dtype)
    return q, k, v


def setting_inputs(setting: str, n: int):
    q_len, extra, offsets, kv_lens, kv_heads = SETTINGS[setting]
    q_len = n if q_len is None else q_len
    q, k, v = make_qkv(2, 4, kv_heads, q_len, n + extra, seed=n)
    return q, k, v, torch.tensor(offsets(n)), torch.tensor(kv_lens(n))


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize(("name", "spec", "see", "n"), CASES, ids=IDS)
def test_math_and_sdpa_match_naive_attention(name, spec, see, n, setting):
    q, k, v, q_offset, kv_len = setting_inputs(setting, n)
    visible = reference_visibility(see, q.shape[2], k.shape[2], q_offset.tolist(), kv_len.tolist())
    want = naive_attention(q, k, v, visible).float()
    for backend in ("math", "sdpa"):
        got = attend(q, k, v, mask=spec, q_offset=q_offset, kv_len=kv_len, backend=backend)
        assert got.shape == q.shape and got.dtype == q.dtype
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=backend)
        # the prepared path models use (one CPU query: grouped matmuls)
        got = planned(q, k, v, spec, q_offset, kv_len, backend)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{backend} prepared")


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_no_mask_means_every_key_below_kv_len(backend):
    q, k, v = make_qkv(3, 4, 2, 5, 9)
    kv_len = torch.tensor([9, 4, 1])
    visible = torch.arange(9)[None, None, :] < kv_len[:, None, None]  # (B, 1, Tk)
    want = naive_attention(q, k, v, visible.expand(3, 5, 9)).float()
    got = attend(q, k, v, mask=None, q_offset=0, kv_len=kv_len, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_custom_scale(backend):
    q, k, v = make_qkv(1, 2, 2, 6, 6)
    visible = ref.dense(ref.causal(), 6, 6, [0])
    want = naive_attention(q, k, v, visible, scale=0.3).float()
    got = attend(q, k, v, mask=masks.causal(), q_offset=0, kv_len=6, scale=0.3, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# -- rows that see no key -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_rows_without_visible_keys_are_zero_with_finite_gradients(backend):
    q, k, v = make_qkv(2, 4, 2, 4, 6)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    # row 0: no keys at all (kv_len 0); row 1: window 1 at offset 0..3 but keys >= 2 only
    nothing_before_2 = masks.MaskSpec(lambda b, h, qi, kv: kv >= 2, name="from2") & masks.causal()
    out0 = attend(
        q, k, v, mask=masks.causal(), q_offset=0, kv_len=torch.tensor([0, 6]), backend=backend
    )
    out1 = attend(q, k, v, mask=nothing_before_2, q_offset=0, kv_len=6, backend=backend)
    assert torch.equal(out0[0], torch.zeros_like(out0[0]))
    assert out0[1].abs().sum() > 0
    assert torch.equal(out1[:, :, :2], torch.zeros_like(out1[:, :, :2]))  # queries 0, 1
    assert out1[:, :, 2:].abs().min() > 0
    (out0.sum() + out1.sum()).backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_no_keys_at_all_gives_zeros():
    q, k, v = make_qkv(2, 2, 2, 3, 0)
    out = attend(q, k, v, mask=masks.causal(), q_offset=0, kv_len=0)
    assert torch.equal(out, torch.zeros_like(q))


# -- the SDPA fast path ---------------------------------------------------------------


def test_sdpa_takes_the_causal_fast_path_only_when_exact(monkeypatch):
    calls: list[dict] = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    q, k, v = make_qkv(2, 4, 2, 6, 6)
    causal = masks.causal()
    exact = attend(q, k, v, mask=causal, q_offset=0, kv_len=6, backend="sdpa")
    assert calls[-1].get("is_causal") is True and calls[-1].get("attn_mask") is None
    # same shapes but row 1 is a chunk at offset 2 (top-left causal alignment would be wrong)
    offset = attend(q, k, v, mask=causal, q_offset=torch.tensor([0, 2]), kv_len=6, backend="sdpa")
    assert calls[-1].get("attn_mask") is not None
    short = attend(q, k, v, mask=causal, q_offset=0, kv_len=torch.tensor([6, 4]), backend="sdpa")
    assert calls[-1].get("attn_mask") is not None
    for out, offsets, kv_lens in (
        (exact, [0, 0], [6, 6]),
        (offset, [0, 2], [6, 6]),
        (short, [0, 0], [6, 4]),
    ):
        visible = reference_visibility(ref.causal(), 6, 6, offsets, kv_lens)
        torch.testing.assert_close(
            out, naive_attention(q, k, v, visible).float(), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_low_precision_keeps_the_dtype(backend):
    q, k, v = make_qkv(1, 4, 2, 8, 8, dtype=torch.bfloat16)
    spec = masks.block_causal([0, 0, 1, 1, 2, 2, 3, 3])
    got = attend(q, k, v, mask=spec, q_offset=0, kv_len=8, backend=backend)
    assert got.dtype == torch.bfloat16
    visible = spec.to_dense(8, 8)
    want = naive_attention(q.float(), k.float(), v.float(), visible).float()
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


# -- choosing a backend ---------------------------------------------------------------


def test_builtin_backends_are_registered_and_satisfy_the_protocol():
    for name, cls in (("math", MathBackend), ("sdpa", SdpaBackend)):
        backend = registry.attention_backends.get(name)
        assert isinstance(backend, cls) and backend.name == name
        assert isinstance(backend, attention.AttentionBackend)


def test_unknown_backend_is_the_registry_error():
    with pytest.raises(
        UnknownNameError, match="unknown attention backend 'nope'; available: .*math"
    ):
        resolve_backend("nope", "cpu", torch.float32, None)


class _NeverRuns:
    name = "never"

    def unsupported_reason(self, *, device, dtype, mask):
        return f"never runs on {device.type}"

    def attend(self, q, k, v, *, mask, q_offset, kv_len, scale):  # pragma: no cover
        raise AssertionError("must not be called")


def test_a_backend_that_cannot_run_raises_config_error_with_alternatives(monkeypatch):
    registry.attention_backends.names()  # load the plugins first
    monkeypatch.setitem(registry.attention_backends._items, "never", _NeverRuns())
    with pytest.raises(
        ConfigError, match="'never' cannot run here: never runs on cpu.*'math'.*'sdpa'"
    ):
        resolve_backend("never", "cpu", torch.float32, None)
    q, k, v = make_qkv(1, 2, 2, 3, 3)
    with pytest.raises(ConfigError, match="never runs on cpu"):
        attend(q, k, v, mask=None, q_offset=0, kv_len=3, backend="never")


def test_float_dtypes_only():
    with pytest.raises(ConfigError, match="floating-point .* got torch.int64"):
        resolve_backend("sdpa", "cpu", torch.int64, None)


@pytest.mark.parametrize(
    ("device", "mask", "k_len", "want"),
    [
        ("cpu", masks.causal(), 8192, "sdpa"),
        ("cpu", None, 8192, "sdpa"),
        ("cpu", masks.sliding_window(64), 2047, "sdpa"),
        ("cpu", masks.sliding_window(64), 2048, "flex"),
        ("cuda", masks.sliding_window(64), 1023, "sdpa"),
        ("cuda", masks.sliding_window(64), 1024, "flex"),
        ("cuda", masks.causal(), 4096, "sdpa"),
    ],
)
def test_auto_prefers_flex_for_long_structured_masks(device, mask, k_len, want):
    assert attention._auto_choice(torch.device(device), mask, k_len) == want


def test_auto_always_resolves_to_a_backend_that_can_run():
    for mask, k_len in ((masks.causal(), 16), (masks.sliding_window(4), 16)):
        backend = resolve_backend("auto", "cpu", torch.float32, mask, k_len=k_len)
        assert (
            backend.unsupported_reason(device=torch.device("cpu"), dtype=torch.float32, mask=mask)
            is None
        )


# -- bad inputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            ((2, 3, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8)),
            r"query heads \(3\) must be a multiple of key/value heads \(2\)",
        ),
        (((2, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8)), r"got shapes \(2, 4, 8\)"),
        (((2, 4, 4, 8), (2, 2, 4, 8), (2, 2, 5, 8)), "same shape"),
        (((2, 4, 4, 8), (2, 2, 4, 16), (2, 2, 4, 16)), "share B and D"),
    ],
)
def test_bad_shapes_raise_input_error(shapes, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(InputError, match=message):
        attend(q, k, v, mask=None, q_offset=0, kv_len=4)


def test_bad_offsets_raise_input_error():
    q, k, v = make_qkv(2, 2, 2, 3, 3)
    with pytest.raises(
        InputError, match=r"q_offset must be a \(2,\) integer tensor .* got shape \(3,\)"
    ):
        attend(q, k, v, mask=None, q_offset=torch.zeros(3, dtype=torch.long), kv_len=3)
    with pytest.raises(InputError, match="kv_len .* dtype torch.float32"):
        attend(q, k, v, mask=None, q_offset=0, kv_len=torch.ones(2))


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_a_mask_shorter_than_the_keys_in_use_is_refused(backend):
    q, k, v = make_qkv(1, 2, 2, 2, 8)
    spec = masks.block_causal([0, 0, 1, 1, 2])
    with pytest.raises(ConfigError, match="covers 5 positions .* keys up to 6"):
        attend(q, k, v, mask=spec, q_offset=4, kv_len=6, backend=backend)
    # a longer cache buffer is fine as long as kv_len stays inside the mask
    out = attend(q, k, v, mask=spec, q_offset=3, kv_len=5, backend=backend)
    visible = reference_visibility(ref.block_causal([0, 0, 1, 1, 2]), 2, 8, [3], [5])
    torch.testing.assert_close(out, naive_attention(q, k, v, visible).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_math_and_sdpa_match_naive_attention_on_cuda(setting):
    for _, spec, see, n in CASES:
        q, k, v, q_offset, kv_len = setting_inputs(setting, n)
        visible = reference_visibility(
            see, q.shape[2], k.shape[2], q_offset.tolist(), kv_len.tolist()
        )
        want = naive_attention(q, k, v, visible).float()
        cuda = [t.cuda() for t in (q, k, v, q_offset, kv_len)]
        for backend in (MathBackend(), SdpaBackend()):  # not via plugins: runs on a bare GPU box
            got = backend.attend(*cuda[:3], mask=spec, q_offset=cuda[3], kv_len=cuda[4], scale=None)
            assert got.device.type == "cuda"
            torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4, msg=backend.name)


def planned(q, k, v, spec, q_offset, kv_len, backend, k_len=None):
    """attend through plan_attention + attend_planned (the prepared path models use)."""
    plan = attention.plan_attention(
        backend=backend, mask=spec, q_offset=q_offset, kv_len=kv_len, q_len=q.shape[2],
        k_len=k.shape[2] if k_len is None else k_len, device=q.device, dtype=q.dtype,
    )  # fmt: skip
    return attention.attend_planned(q, k, v, plan)


def test_sdpa_few_queries_path_matches_the_kernel(monkeypatch):
    # eager CPU: one query takes the grouped-matmul path, more take the fused kernel;
    # under torch.compile up to FEW_QUERIES take it. 5 queries of 2 rows against a 40-slot
    # buffer, ragged kv_len, GQA 4:2: the grouped path equals the kernel
    q, k, v = make_qkv(2, 4, 2, 5, 40, seed=3)
    q_offset, kv_len = torch.tensor([10, 30]), torch.tensor([15, 35])
    spec = masks.causal()
    calls = []
    real = attention._few_queries
    monkeypatch.setattr(
        attention, "_few_queries", lambda *a: calls.append(a[0].shape[2]) or real(*a)
    )
    planned(q, k, v, spec, q_offset, kv_len, "sdpa")
    planned(q[:, :, :1], k, v, spec, q_offset + 4, kv_len, "sdpa")
    assert calls == [1], "eager: only the one-query pass takes the grouped path"
    plan = attention.plan_attention(
        backend="sdpa", mask=spec, q_offset=q_offset, kv_len=kv_len, q_len=5, k_len=40,
        device=q.device, dtype=q.dtype,
    )  # fmt: skip
    got = real(q, k, v, plan.state, None)
    visible = attention.visible_keys(spec, q_offset, kv_len, 5, 40)
    kernel = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None], enable_gqa=True)
    torch.testing.assert_close(got, kernel, atol=1e-6, rtol=1e-5)
    # bf16: softmax in float32, close to the float32 result at bf16's resolution
    got16 = real(q.bfloat16(), k.bfloat16(), v.bfloat16(), plan.state, None)
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.float(), kernel, atol=3e-2, rtol=3e-2)
    # float64 stays float64 all the way (no float32 softmax)
    q64, k64, v64 = q.double(), k.double(), v.double()
    kernel64 = F.scaled_dot_product_attention(
        q64, k64, v64, attn_mask=visible[:, None], enable_gqa=True
    )
    torch.testing.assert_close(
        real(q64, k64, v64, plan.state, None), kernel64, atol=1e-12, rtol=1e-12
    )


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_plan_k_len_drops_the_buffer_keys_past_it(backend):
    # a plan for the first 12 keys of a 30-slot buffer: the rest (junk) are never read
    q, k, v = make_qkv(2, 4, 2, 3, 30, seed=4)
    q_offset, kv_len = torch.tensor([5, 9]), torch.tensor([8, 12])
    spec = masks.causal()
    junk_k, junk_v = k.clone(), v.clone()
    junk_k[:, :, 12:], junk_v[:, :, 12:] = float("nan"), float("nan")
    got = planned(q, junk_k, junk_v, spec, q_offset, kv_len, backend, k_len=12)
    want = planned(q, k[:, :, :12], v[:, :, :12], spec, q_offset, kv_len, backend)
    full = planned(q, k, v, spec, q_offset, kv_len, backend)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)
