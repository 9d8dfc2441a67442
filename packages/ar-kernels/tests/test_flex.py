"""FlexBackend: its BlockMask equals the MaskSpec's dense form at every (query, key), and
its outputs equal the math reference backend (itself checked against a naive loop
attention in ar-core's tests)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import BlockMask, create_mask

from ar_core import masks, registry
from ar_core.attention import MathBackend, attend, resolve_backend
from ar_core.errors import ConfigError
from ar_kernels.flex import FlexBackend

STEPS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 5, 5, 5, 5, 6, 7, 7, 7]  # N = 20
PARENTS = [-1, 0, 0, 1, 1, 2, -1, 6, 7, 3]  # M = 10
DOCS = [0] * 5 + [1] * 7 + [2] * 3 + [3] * 5  # N = 20

MASKS = {
    "none": None,
    "causal": masks.causal(),
    "prefix": masks.prefix(7),
    "prefix_per_row": masks.prefix(torch.tensor([3, 9])),
    "block_causal": masks.block_causal(STEPS),
    "block_causal_any_order": masks.block_causal(
        torch.randperm(20, generator=torch.Generator().manual_seed(0)) % 6
    ),
    "two_stream": masks.two_stream(STEPS[:10]),
    "two_stream_own_step": masks.two_stream(STEPS[:10], query_sees_own_step=True),
    "sliding_window": masks.sliding_window(5),
    "sets": masks.sets(4, [3, 5, 2], 6),
    "tree": masks.tree(PARENTS, 10),
    "tree_per_row": masks.tree(PARENTS, torch.tensor([6, 10])),
    "document": masks.document(DOCS),
    "window_and_document": masks.sliding_window(4) & masks.document(DOCS),
    "prefix_or_document": masks.prefix(5) | masks.document(DOCS),
    "document_bidirectional": masks.document(DOCS, causal=False),
    "causal_and_key_padding_per_row": masks.causal()
    & masks.key_padding(torch.arange(40).reshape(2, 20) % 7 != 3),
}
N = 20  # every mask above covers 20 positions (or is unbounded)

# name -> (Tq, Tk, q_offset, kv_len): a full square, a chunk in a longer cache buffer
# (ragged), a ragged decode step, and a row that sees no key at all
SETTINGS = {
    "square": (N, N, [0, 0], [N, N]),
    "ragged_chunk": (7, N + 9, [N - 7, 4], [N, 11]),
    "decode": (1, N + 3, [N - 1, 10], [N, 11]),
    "empty_row": (5, N, [3, 0], [0, N]),
}


def expected_visibility(mask, q_len, k_len, q_offset, kv_len) -> torch.Tensor:
    """(B, Tq, Tk) from the MaskSpec's dense form plus the kv_len bound."""
    batch = len(q_offset)
    k_used = min(k_len, max(kv_len))
    out = torch.zeros(batch, q_len, k_len, dtype=torch.bool)
    if mask is None:
        out[:, :, :k_used] = True
    else:
        out[:, :, :k_used] = mask.to_dense(q_len, k_used, q_offset=torch.tensor(q_offset))
    keys = torch.arange(k_len)
    return out & (keys[None, None, :] < torch.tensor(kv_len)[:, None, None])


def materialise(block_mask: BlockMask, q_len: int, k_len: int) -> torch.Tensor:
    """(B, Tq, Tk) bool as the kernel sees it: full blocks are all True, partial blocks
    ask mask_mod, every other block is skipped."""
    q_block, k_block = block_mask.BLOCK_SIZE
    any_block = block_mask.to_dense().bool()  # (B, 1, nQ, nK): partial | full
    partial = (
        BlockMask.from_kv_blocks(
            block_mask.kv_num_blocks,
            block_mask.kv_indices,
            BLOCK_SIZE=block_mask.BLOCK_SIZE,
            seq_lengths=block_mask.seq_lengths,
        )
        .to_dense()
        .bool()
    )
    full = any_block & ~partial

    def per_element(blocks: torch.Tensor) -> torch.Tensor:
        dense = blocks.repeat_interleave(q_block, dim=-2).repeat_interleave(k_block, dim=-1)
        return dense[..., :q_len, :k_len]

    batch = any_block.shape[0]
    mod = create_mask(block_mask.mask_mod, batch, 1, q_len, k_len, device="cpu")
    return (per_element(full) | (per_element(partial) & mod))[:, 0]


def make_qkv(q_len, k_len, heads=4, kv_heads=2, dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, q_len, dim, generator=g).to(dtype)
    k = torch.randn(2, kv_heads, k_len, dim, generator=g).to(dtype)
    v = torch.randn(2, kv_heads, k_len, dim, generator=g).to(dtype)
    return q, k, v


# -- BlockMask == dense mask --------------------------------------------------------


@pytest.mark.parametrize("block_size", [4, 128])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(MASKS))
def test_block_mask_equals_dense_mask_everywhere(name, setting, block_size):
    q_len, k_len, q_offset, kv_len = SETTINGS[setting]
    backend = FlexBackend(block_size=block_size)
    block_mask = backend.block_mask(
        MASKS[name], torch.tensor(q_offset), torch.tensor(kv_len), q_len, k_len
    )
    got = materialise(block_mask, q_len, k_len)
    torch.testing.assert_close(
        got, expected_visibility(MASKS[name], q_len, k_len, q_offset, kv_len)
    )


@st.composite
def random_tree(draw: st.DrawFn) -> list[int]:
    m = draw(st.integers(1, 12))
    return [draw(st.integers(-1, i - 1)) for i in range(m)]


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(st.integers(0, 6), min_size=1, max_size=24),
    parents=random_tree(),
    start=st.integers(0, 6),
    own=st.booleans(),
)
def test_block_mask_equals_dense_mask_for_random_steps_and_trees(steps, parents, start, own):
    backend = FlexBackend(block_size=4)
    n, m = len(steps), len(parents)
    zero = torch.zeros(1, dtype=torch.long)
    for spec, length in (
        (masks.block_causal(steps), n),
        (masks.two_stream(steps, query_sees_own_step=own), 2 * n),
        (masks.tree(parents, start), start + m),
    ):
        kv_len = torch.tensor([length])
        got = materialise(backend.block_mask(spec, zero, kv_len, length, length), length, length)
        torch.testing.assert_close(got, spec.to_dense(length, length))
    # the tree's verification chunk: queries are the nodes
    spec = masks.tree(parents, start)
    chunk = backend.block_mask(spec, torch.tensor([start]), torch.tensor([start + m]), m, start + m)
    torch.testing.assert_close(
        materialise(chunk, m, start + m), spec.to_dense(m, start + m, q_offset=start)
    )


# -- the BlockMask cache --------------------------------------------------------------


def test_block_mask_cache_hits_only_for_the_same_mask_shape_and_offsets():
    backend = FlexBackend(block_size=8)
    spec = masks.block_causal(STEPS)
    q_offset, kv_len = torch.tensor([0, 4]), torch.tensor([N, 12])
    first = backend.block_mask(spec, q_offset, kv_len, 8, N)
    assert backend.block_mask(spec, q_offset.clone(), kv_len.clone(), 8, N) is first
    assert backend.block_mask(masks.block_causal(list(STEPS)), q_offset, kv_len, 8, N) is first
    assert backend.block_mask_builds == 1
    # a KV cache bumps its lengths in place: the cached mask must not follow silently
    q_offset += 2
    moved = backend.block_mask(spec, q_offset, kv_len, 8, N)
    assert moved is not first and backend.block_mask_builds == 2
    torch.testing.assert_close(
        materialise(first, 8, N), expected_visibility(spec, 8, N, [0, 4], [N, 12])
    )
    torch.testing.assert_close(
        materialise(moved, 8, N), expected_visibility(spec, 8, N, [2, 6], [N, 12])
    )
    backend.block_mask(spec, q_offset, torch.tensor([N, 13]), 8, N)
    backend.block_mask(masks.block_causal(STEPS[::-1]), q_offset, torch.tensor([N, 13]), 8, N)
    assert backend.block_mask_builds == 4


def test_block_mask_cache_is_bounded():
    backend = FlexBackend(block_size=8, max_cached_masks=2)
    for offset in range(4):
        backend.block_mask(masks.causal(), torch.tensor([offset]), torch.tensor([N]), 4, N)
    assert len(backend._block_masks) == 2


def test_block_mask_refuses_positions_past_the_mask():
    with pytest.raises(ConfigError, match="covers 20 positions .* queries up to 23"):
        FlexBackend().block_mask(
            masks.block_causal(STEPS), torch.tensor([16]), torch.tensor([N]), 7, N
        )


# -- outputs against the math reference -----------------------------------------------


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("setting", ["ragged_chunk", "decode"])
@pytest.mark.parametrize("name", list(MASKS))
def test_unfused_flex_matches_math_for_every_mask(name, setting):
    """FlexAttention's unfused path (no compile: seconds, not minutes, for all masks)
    with our wrapped mask_mod, GQA and ragged offsets. The compiled kernel is checked
    below and, for every mask, in the slow run."""
    q_len, k_len, q_offset, kv_len = SETTINGS[setting]
    q, k, v = make_qkv(q_len, k_len, seed=len(name))
    args: dict[str, Any] = dict(
        mask=MASKS[name], q_offset=torch.tensor(q_offset), kv_len=torch.tensor(kv_len), scale=None
    )
    got = FlexBackend(block_size=8, compile=False).attend(q, k, v, **args)
    torch.testing.assert_close(got, MathBackend().attend(q, k, v, **args), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def compiled_flex():
    """One compiled backend for the module (compiling costs seconds per mask kind)."""
    return FlexBackend()


def check_compiled(backend, name, q_len, k_len, q_offset, kv_len, heads=4, kv_heads=2, seed=0):
    q, k, v = make_qkv(q_len, k_len, heads=heads, kv_heads=kv_heads, seed=seed)
    args: dict[str, Any] = dict(
        mask=MASKS[name], q_offset=torch.tensor(q_offset), kv_len=torch.tensor(kv_len), scale=None
    )
    got = backend.attend(q, k, v, **args)
    assert got.shape == q.shape and torch.isfinite(got).all()
    torch.testing.assert_close(got, MathBackend().attend(q, k, v, **args), atol=1e-5, rtol=1e-5)
    return got


def test_compiled_flex_causal_gqa_ragged_and_cache_invalidation(compiled_flex):
    # one compile: the same mask and shapes with different per-row offsets and lengths
    check_compiled(compiled_flex, "causal", 7, N + 9, [N - 7, 4], [N, 11])
    builds = compiled_flex.block_mask_builds
    check_compiled(compiled_flex, "causal", 7, N + 9, [N - 7, 4], [N, 11], seed=1)
    assert compiled_flex.block_mask_builds == builds  # cache hit
    check_compiled(compiled_flex, "causal", 7, N + 9, [N - 8, 0], [N - 1, 7], seed=2)
    check_compiled(compiled_flex, "causal", 7, N + 9, [N - 7, 4], [11, N], seed=3)
    assert compiled_flex.block_mask_builds == builds + 2


def test_compiled_flex_tree_per_row_over_a_long_sequence(compiled_flex):
    # > 128 keys, so the kernel sees several blocks, skips empty ones and runs full ones
    long_parents = [-1] + [i // 2 for i in range(63)]  # a binary tree of 64 nodes
    spec = masks.tree(long_parents, torch.tensor([150, 200]))
    q, k, v = make_qkv(64, 300)
    for kv_len in ([214, 264], [214, 0]):  # then row 1 sees no key at all
        args: dict[str, Any] = dict(
            mask=spec, q_offset=torch.tensor([150, 200]), kv_len=torch.tensor(kv_len), scale=None
        )
        got = compiled_flex.attend(q, k, v, **args)
        torch.testing.assert_close(got, MathBackend().attend(q, k, v, **args), atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1], torch.zeros_like(got[1]))


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(MASKS))
def test_compiled_flex_matches_math_for_every_mask(name, setting):
    torch._dynamo.reset()  # a fresh compile per case: no eager fallback past the limit
    with torch._dynamo.config.patch(recompile_limit=256):
        check_compiled(FlexBackend(), name, *SETTINGS[setting], seed=len(name))


# -- registration and capability -------------------------------------------------------


def test_flex_is_registered_and_auto_picks_it_for_long_structured_masks():
    assert isinstance(registry.attention_backends.get("flex"), FlexBackend)
    long_mask = masks.block_causal(torch.arange(4096) // 64)
    assert resolve_backend("auto", "cpu", torch.float32, long_mask, k_len=4096).name == "flex"
    assert resolve_backend("auto", "cpu", torch.float32, masks.causal(), k_len=4096).name == "sdpa"


def test_flex_refuses_float64_with_a_clear_error():
    with pytest.raises(
        ConfigError,
        match=r"'flex' cannot run here: FlexAttention supports .* \(got torch.float64\)",
    ):
        resolve_backend("flex", "cpu", torch.float64, masks.causal())
    q, k, v = make_qkv(4, 4, dtype=torch.float64)
    with pytest.raises(ConfigError, match="Backends that can: 'math', 'sdpa'"):
        attend(q, k, v, mask=masks.causal(), q_offset=0, kv_len=4, backend="flex")


# -- CUDA ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch._dynamo.config.patch(recompile_limit=256)
def test_compiled_flex_matches_math_on_cuda():
    backend = FlexBackend()
    runs = [(name, "ragged_chunk") for name in MASKS]
    runs += [
        (name, s) for name in ("block_causal", "tree_per_row") for s in ("decode", "empty_row")
    ]
    for name, setting in runs:
        q_len, k_len, q_offset, kv_len = SETTINGS[setting]
        q, k, v = (t.cuda() for t in make_qkv(q_len, k_len, dim=64))
        args: dict[str, Any] = dict(
            mask=MASKS[name],
            q_offset=torch.tensor(q_offset, device="cuda"),
            kv_len=torch.tensor(kv_len, device="cuda"),
            scale=None,
        )
        got = backend.attend(q, k, v, **args)
        assert got.device.type == "cuda" and torch.isfinite(got).all()
        want = MathBackend().attend(q, k, v, **args)
        torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4, msg=f"{name}/{setting}")
    # a long block-causal sequence in bfloat16: many skipped, full and partial blocks
    spec = masks.block_causal(torch.arange(2048) // 96)
    q, k, v = (t.cuda() for t in make_qkv(2048, 2048, dim=64, dtype=torch.bfloat16))
    args = dict(
        mask=spec,
        q_offset=torch.zeros(2, dtype=torch.long, device="cuda"),
        kv_len=torch.tensor([2048, 1500], device="cuda"),
        scale=None,
    )
    got = backend.attend(q, k, v, **args)
    assert got.dtype == torch.bfloat16
    want = MathBackend().attend(q, k, v, **args)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
