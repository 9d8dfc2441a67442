"""The ``triton`` backend: its tile lists reproduce every mask, it refuses clearly where
it cannot run, and its kernels equal the ``math`` reference backend.

The kernel tests are marked slow: they run in Triton's CPU interpreter (``nox -s
triton`` sets ``TRITON_INTERPRET=1``) at tiny shapes, in float32 (atol 1e-5) and float16
(atol 2e-3, the rounding of half-precision probabilities), and on CUDA when the machine
has one (``tools/gpu_check.sh``). Without either they skip, naming the reason.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ar_core import masks, registry
from ar_core.attention import MathBackend, attend, resolve_backend, visible_keys
from ar_core.cache import StaticKVCache
from ar_core.errors import ConfigError, InputError
from ar_kernels import triton_backend
from ar_kernels.block_sparsity import tile_lists
from ar_kernels.triton_backend import TritonBackend

torch.set_num_threads(1)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REASON = TritonBackend().unsupported_reason(
    device=torch.device(DEVICE), dtype=torch.float32, mask=None
)
needs_kernels = pytest.mark.skipif(REASON is not None, reason=str(REASON))
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.float16]

N = 40  # positions most masks cover; not a multiple of the 16-wide tiles (partial edges)
STEPS = [i // 8 for i in range(N)]
PARENTS = [-1, 0, 0, 1, 1, 2, -1, 6, 7, 3, 9, 9]  # M = 12
DOCS = [0] * 9 + [1] * 14 + [2] * 5 + [3] * 12
MASKS = {
    "none": None,
    "causal": masks.causal(),
    "block_causal": masks.block_causal(STEPS),
    "tree_per_row": masks.tree(PARENTS, torch.tensor([20, 28])),
    "two_stream_own_step": masks.two_stream(STEPS[:20], query_sees_own_step=True),
    "document": masks.document(DOCS),
    "causal_and_key_padding": masks.causal()
    & masks.key_padding(torch.arange(2 * N).reshape(2, N) % 7 != 3),
}
# name -> (Tq, Tk, q_offset, kv_len): a full square, a chunk in a longer cache buffer
# (ragged), and a row that sees no key at all
SETTINGS = {
    "square": (N, N, [0, 0], [N, N]),
    "ragged_chunk": (12, N + 9, [N - 12, 4], [N, 16]),
    "empty_row": (5, N, [3, 0], [0, N]),
}


def make_qkv(q_len, k_len, *, heads=4, kv_heads=2, dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, q_len, dim, generator=g).to(DEVICE, dtype)
    k = torch.randn(2, kv_heads, k_len, dim, generator=g).to(DEVICE, dtype)
    v = torch.randn(2, kv_heads, k_len, dim, generator=g).to(DEVICE, dtype)
    return q, k, v


def as_tensors(q_offset, kv_len):
    return (
        torch.tensor(q_offset, device=DEVICE),
        torch.tensor(kv_len, device=DEVICE),
    )


def assert_matches_math(got, q, k, v, mask, q_offset, kv_len, dtype):
    want = MathBackend().attend(q, k, v, mask=mask, q_offset=q_offset, kv_len=kv_len, scale=None)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


# -- registration and refusals (fast, no kernel runs) ---------------------------------


def test_triton_is_registered_and_refuses_cpu_naming_the_fix(monkeypatch):
    assert isinstance(registry.attention_backends.get("triton"), TritonBackend)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(
        ConfigError,
        match=r"'triton' cannot run here: the Triton kernels need a CUDA device \(got cpu\); "
        r"use 'sdpa' or 'flex', or set TRITON_INTERPRET=1 .*Backends that can: .*'sdpa'",
    ):
        resolve_backend("triton", "cpu", torch.float32, masks.causal())
    monkeypatch.setattr(triton_backend.importlib.util, "find_spec", lambda name: None)
    reason = TritonBackend().unsupported_reason(
        device=torch.device("cuda"), dtype=torch.float16, mask=None
    )
    assert reason is not None and reason.startswith("Triton is not installed: pip install triton")
    monkeypatch.setattr(triton_backend.importlib.util, "find_spec", lambda name: object())
    reason = TritonBackend().unsupported_reason(
        device=torch.device("cuda"), dtype=torch.float64, mask=None
    )
    assert reason is not None and "(got torch.float64)" in reason
    with pytest.raises(ConfigError, match="block_n must be a power of two >= 16, got 24"):
        TritonBackend(block_n=24)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_interpreter_setting_is_accepted_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reason = TritonBackend().unsupported_reason(
        device=torch.device("cpu"), dtype=torch.float16, mask=None
    )
    assert reason is None


# -- tile lists (plain torch) -------------------------------------------------------


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(MASKS))
def test_tile_lists_reproduce_the_visibility(name, setting):
    q_len, k_len, q_offset, kv_len = SETTINGS[setting]
    visible = visible_keys(MASKS[name], torch.tensor(q_offset), torch.tensor(kv_len), q_len, k_len)
    tiles = tile_lists(visible, 16, 16)
    torch.testing.assert_close(tiles.to_dense(), visible)
    torch.testing.assert_close(tiles.has_key, visible.any(dim=-1))
    # each list is ascending, and a key block is listed at most once (partial or full)
    for b in range(2):
        for qb in range(tiles.full_count.shape[1]):
            partial = tiles.partial_index[b, qb, : int(tiles.partial_count[b, qb])].tolist()
            full = tiles.full_index[b, qb, : int(tiles.full_count[b, qb])].tolist()
            assert partial == sorted(partial) and full == sorted(full)
            assert not set(partial) & set(full)


def test_block_causal_visits_only_the_lower_triangle_of_tiles():
    """4 blocks of 16 with 16-wide tiles: every tile is full or empty, and only the
    4 * 5 / 2 = 10 tiles on and below the diagonal are visited."""
    spec = masks.block_causal([i // 16 for i in range(64)])
    visible = visible_keys(spec, torch.tensor([0]), torch.tensor([64]), 64, 64)
    tiles = tile_lists(visible, 16, 16)
    assert (tiles.visited_tiles, tiles.total_tiles) == (10, 16)
    assert tiles.partial_masks.shape[0] == 0 and int(tiles.partial_count.sum()) == 0
    assert tiles.full_count[0].tolist() == [1, 2, 3, 4]
    # a tree is partial around the diagonal: its masks are stored per tile
    tree = masks.tree(PARENTS, 20)
    tiles = tile_lists(visible_keys(tree, torch.tensor([0]), torch.tensor([32]), 32, 32), 16, 16)
    assert tiles.partial_masks.shape[0] >= 1


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(st.integers(0, 5), min_size=1, max_size=50),
    parents=st.integers(1, 12).flatmap(
        lambda m: st.tuples(*(st.integers(-1, i - 1) for i in range(m)))
    ),
    start=st.integers(0, 20),
    tiles=st.sampled_from([(16, 16), (16, 32), (32, 16)]),
)
def test_tile_lists_reproduce_random_block_causal_and_tree_masks(steps, parents, start, tiles):
    n, m = len(steps), len(parents)
    zero = torch.zeros(1, dtype=torch.long)
    for spec, length in (
        (masks.block_causal(steps), n),
        (masks.tree(list(parents), start), start + m),
    ):
        visible = visible_keys(spec, zero, torch.tensor([length]), length, length)
        torch.testing.assert_close(tile_lists(visible, *tiles).to_dense(), visible)


def test_decode_entry_points_refuse_bad_input():
    from ar_kernels.triton_decode import cache_decode_attention, decode_attention

    cache = StaticKVCache(2, 3, 2, 16, 8)
    with pytest.raises(InputError, match=r"layer 2 not in \[0, 2\)"):
        cache_decode_attention(torch.zeros(3, 4, 1, 16), cache, 2)
    with pytest.raises(InputError, match=r"q \(B, Hq, Tq, D\) = \(3, 3, 1, 16\) does not fit"):
        cache_decode_attention(torch.zeros(3, 3, 1, 16), cache, 0)
    with pytest.raises(InputError, match="q is torch.float16 but the cache holds torch.float32"):
        cache_decode_attention(torch.zeros(3, 4, 1, 16, dtype=torch.float16), cache, 0)
    q, k = torch.zeros(1, 2, 1, 16), torch.zeros(1, 1, 8, 16)
    with pytest.raises(InputError, match="needs q_offset"):
        decode_attention(q, k, k, torch.tensor([3]), causal=True)
    with pytest.raises(InputError, match="num_splits must be >= 1, got 0"):
        decode_attention(q, k, k, torch.tensor([3]), num_splits=0)


def test_tile_lists_refuse_bad_input():
    with pytest.raises(ConfigError, match="power of two >= 16"):
        tile_lists(torch.ones(1, 4, 4, dtype=torch.bool), 8, 16)
    with pytest.raises(ConfigError, match=r"\(B, Tq, Tk\) bool"):
        tile_lists(torch.ones(4, 4, dtype=torch.bool), 16, 16)


# -- the flash forward against math (interpreter or CUDA) -----------------------------


@pytest.mark.slow
@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", [n for n in MASKS if n not in ("none", "causal")])
def test_flash_forward_equals_math(name, setting, dtype):
    q_len, k_len, q_offset, kv_len = SETTINGS[setting]
    q, k, v = make_qkv(q_len, k_len, dtype=dtype)
    qo, kl = as_tensors(q_offset, kv_len)
    backend = TritonBackend(block_m=16, block_n=16)
    got = backend.attend(q, k, v, mask=MASKS[name], q_offset=qo, kv_len=kl, scale=None)
    assert_matches_math(got, q, k, v, MASKS[name], qo, kl, dtype)


@pytest.mark.slow
@needs_kernels
def test_flash_forward_through_attend_with_a_scale_and_a_large_query_chunk():
    """The registered backend (64-wide tiles) through ``ar_core.attention.attend``; a
    causal chunk of 40 queries x 4 groups is too many rows for the decode kernel."""
    q, k, v = make_qkv(N, N, heads=8, kv_heads=2)
    got = attend(q, k, v, mask=masks.causal(), q_offset=0, kv_len=N, scale=0.3, backend="triton")
    want = attend(q, k, v, mask=masks.causal(), q_offset=0, kv_len=N, scale=0.3, backend="math")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@needs_kernels
def test_a_head_dim_that_is_not_a_power_of_two_and_rectangular_tiles():
    """Head dim 24 (padded to 32 in the kernels) and 16 x 32 tiles, on both kernels."""
    mask = masks.block_causal(STEPS)
    q, k, v = make_qkv(N, N, dim=24)
    qo, kl = as_tensors([0, 0], [N, N - 5])
    got = TritonBackend(block_m=16, block_n=32).attend(
        q, k, v, mask=mask, q_offset=qo, kv_len=kl, scale=None
    )
    assert_matches_math(got, q, k, v, mask, qo, kl, torch.float32)
    q1 = q[:, :, :1]
    got = TritonBackend(decode_block_n=16).attend(
        q1, k, v, mask=None, q_offset=kl - 1, kv_len=kl, scale=None
    )
    assert_matches_math(got, q1, k, v, None, kl - 1, kl, torch.float32)


@pytest.mark.slow
@needs_kernels
def test_flash_forward_never_reads_skipped_tiles():
    """NaN in keys and values that lie in tiles no query sees: a kernel that read them
    would return NaN (a masked score is -inf, but 0 * NaN values still poison the sum).
    Two-stream content queries never see the query stream (keys 32..63 here); a ragged
    chunk never sees keys past 48 (kv_len 40, tiles of 16)."""
    backend = TritonBackend(block_m=16, block_n=16)
    two_stream = masks.two_stream([i // 8 for i in range(32)])
    for mask, q_len, k_len, q_offset, kv_len, hidden in (
        (two_stream, 32, 64, [0, 0], [64, 64], slice(32, 64)),
        (masks.causal(), 16, 64, [24, 24], [40, 40], slice(48, 64)),
    ):
        q, k, v = make_qkv(q_len, k_len)
        qo, kl = as_tensors(q_offset, kv_len)
        want = MathBackend().attend(q, k, v, mask=mask, q_offset=qo, kv_len=kl, scale=None)
        k[:, :, hidden], v[:, :, hidden] = float("nan"), float("nan")
        got = backend.attend(q, k, v, mask=mask, q_offset=qo, kv_len=kl, scale=None)
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# -- the decode kernel against math ---------------------------------------------------


@pytest.mark.slow
@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("q_len", [1, 3])
@pytest.mark.parametrize("splits", [1, 2, 5])
def test_decode_over_a_ragged_static_cache_equals_math(splits, q_len, dtype):
    """Three rows of 37, 0 and 9 committed entries, ``q_len`` new entries each written
    (pending) with ``cache.write``; NaN fills every slot past the pending entries, which
    the kernel must never read."""
    from ar_kernels.triton_decode import cache_decode_attention

    cache = StaticKVCache(2, 3, 2, 16, 64, dtype=dtype, device=DEVICE)
    g = torch.Generator().manual_seed(splits)
    committed = torch.tensor([37, 0, 9], device=DEVICE)
    for layer in range(2):  # the context: row b's first committed[b] entries
        kv = torch.randn(2, 3, 2, 37, 16, generator=g).to(DEVICE, dtype)
        cache.write(layer, kv[0], kv[1])
    cache.set_lengths(committed)
    for b, n in enumerate(committed.tolist()):  # (L, B, H, S, D) storage past each row
        cache._k[:, b, :, n:] = float("nan")
        cache._v[:, b, :, n:] = float("nan")
    q_new = torch.randn(3, 4, q_len, 16, generator=g).to(DEVICE, dtype)  # (B, Hq, Tq, D)
    kv_new = torch.randn(2, 3, 2, q_len, 16, generator=g).to(DEVICE, dtype)
    k_buf, v_buf = cache.write(1, kv_new[0], kv_new[1])
    got = cache_decode_attention(q_new, cache, 1, num_splits=splits, block_n=16)
    clean_k, clean_v = k_buf.nan_to_num(0.0), v_buf.nan_to_num(0.0)
    q_offset, kv_len = committed, committed + q_len
    assert bool(torch.isfinite(got).all())
    assert_matches_math(got, q_new, clean_k, clean_v, masks.causal(), q_offset, kv_len, dtype)


@pytest.mark.slow
@needs_kernels
def test_decode_rows_without_keys_return_zeros_and_long_caches_split():
    """kv_len 0 gives zeros (as math does); 150 keys in 16-key blocks over 4 splits
    equals one split and math; a row's splits past its length do nothing; a length past
    the buffer is clamped to it."""
    from ar_kernels.triton_decode import decode_attention

    q, k, v = make_qkv(1, 160, heads=4, kv_heads=1)
    kv_len = torch.tensor([150, 0], device=DEVICE)
    outs = [decode_attention(q, k, v, kv_len, num_splits=s, block_n=16) for s in (1, 4)]
    assert bool((outs[1][1] == 0).all())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
    assert_matches_math(outs[1], q, k, v, None, kv_len - 1, kv_len, torch.float32)
    # lengths past the 160-slot buffer read the whole buffer, never beyond it
    past = decode_attention(
        q, k, v, torch.tensor([500, 161], device=DEVICE), num_splits=3, block_n=16
    )
    full = torch.tensor([160, 160], device=DEVICE)
    assert_matches_math(past, q, k, v, None, full - 1, full, torch.float32)


@pytest.mark.slow
@needs_kernels
def test_cached_generation_on_triton_equals_uncached_math():
    """A 2-layer GQA Transformer: prefill (flash kernel, causal chunk over a cache buffer)
    and decode steps (decode kernel) over ragged prompts give the tokens and logits of
    the uncached math model."""
    from ar_core.generation import GenerationConfig, generate
    from ar_core.model import Transformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig.from_name(
        "tiny", dim=64, n_heads=4, n_kv_heads=2, attention_backend="triton"
    )
    model = Transformer(cfg).to(DEVICE).eval()
    ref_model = Transformer(cfg.model_copy(update={"attention_backend": "math"}))
    ref_model.load_state_dict(model.state_dict())
    ref_model = ref_model.to(DEVICE).eval()
    lengths = [40, 23]  # 40 queries x 2 groups: more rows than the decode kernel takes
    x = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    out = generate(model, x.to(DEVICE), GenerationConfig(max_new_tokens=4), prompt_lengths=lengths)
    with torch.no_grad():
        for b, n in enumerate(lengths):
            seq = x[b, :n].tolist()
            for _ in range(4):
                logits = ref_model(torch.tensor([seq], device=DEVICE)).logits[0, -1]
                seq.append(int(logits.argmax()))
            assert out.sequences[b, : n + 4].tolist() == seq, f"row {b}"
