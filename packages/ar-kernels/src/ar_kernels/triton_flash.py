"""A Triton flash-attention forward over a block-sparse mask (any ``MaskSpec``).

"FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness" (Dao et
al., 2022, arXiv:2205.14135) and "FlashAttention-2" (Dao, 2023, arXiv:2307.08691): one
program per (query block, row, query head) keeps its queries in registers and streams
key/value blocks through an online softmax, never writing the score matrix. The key
blocks come from :class:`~ar_kernels.block_sparsity.TileLists`: empty tiles are never
visited (their keys and values are not read); one loop runs the partial tiles, each with
its stored (BLOCK_M x BLOCK_N) mask, and a second loop the full tiles, with no mask and
no bounds checks. Block-causal, tree and two-stream
masks are mostly empty and full tiles, so the work follows the visible area.

Grouped-query attention: query head ``h`` reads key/value head ``h // (Hq // Hkv)``.
Scores and the softmax are float32; float32 inputs use IEEE products (no TF32), so the
output matches the ``math`` backend to float32 rounding. A query that sees no key
returns zeros.

Runs on CUDA, or on the CPU in Triton's interpreter when ``TRITON_INTERPRET=1`` is set
before this module is imported (tests).

Notation: B batch, Hq query heads, Hkv key/value heads, Tq queries, Tk keys, D head dim.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ar_kernels.block_sparsity import TileLists

LOG2E = 1.4426950408889634


@triton.jit
def _online_softmax_step(
    q,
    k,
    v,
    m_i,
    l_i,
    acc,
    visible,
    scale_log2,
    MASKED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One key block of FlashAttention's online softmax; ``visible`` (BM, BN) applies only
    when ``MASKED``. Returns the new (running max, denominator, numerator)."""
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale_log2  # (BM, BN)
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])  # (BM, BN)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _flash_forward_kernel(
    Q,
    K,
    V,
    O,
    PARTIAL_COUNT,
    PARTIAL_INDEX,
    PARTIAL_START,
    PARTIAL_MASKS,
    FULL_COUNT,
    FULL_INDEX,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    n_heads,
    groups,
    q_len,
    k_len,
    n_q_blocks,
    n_k_blocks,
    scale_log2,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    q_block = tl.program_id(0)
    row_head = tl.program_id(1)
    b = (row_head // n_heads).to(tl.int64)
    h = row_head % n_heads
    kv_h = (h // groups).to(tl.int64)

    offs_m = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt
    q = tl.load(
        q_ptrs + offs_d[None, :] * stride_qd,
        mask=(offs_m[:, None] < q_len) & d_ok[None, :],
        other=0.0,
    )  # (BLOCK_M, BLOCK_D)
    k_ptrs = K + b * stride_kb + kv_h * stride_kh + offs_d[None, :] * stride_kd
    v_ptrs = V + b * stride_vb + kv_h * stride_vh + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running numerator
    block_at = b * n_q_blocks + q_block
    list_at = block_at * n_k_blocks

    # partial tiles: keys may run past k_len, and the tile's stored mask applies
    tile_rows = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + offs_n[None, :]  # (BM, BN)
    first_mask = tl.load(PARTIAL_START + block_at).to(tl.int64)
    for slot in range(0, tl.load(PARTIAL_COUNT + block_at)):
        keys = tl.load(PARTIAL_INDEX + list_at + slot) * BLOCK_N + offs_n
        kv_ok = (keys[:, None] < k_len) & d_ok[None, :]
        k = tl.load(k_ptrs + keys[:, None] * stride_kt, mask=kv_ok, other=0.0)  # (BN, BD)
        v = tl.load(v_ptrs + keys[:, None] * stride_vt, mask=kv_ok, other=0.0)
        tile = PARTIAL_MASKS + (first_mask + slot) * (BLOCK_M * BLOCK_N)
        visible = tl.load(tile + tile_rows) != 0
        m_i, l_i, acc = _online_softmax_step(
            q, k, v, m_i, l_i, acc, visible, scale_log2, True, INPUT_PRECISION
        )

    # full tiles: every key is in range and visible; no mask at all
    for slot in range(0, tl.load(FULL_COUNT + block_at)):
        keys = tl.load(FULL_INDEX + list_at + slot) * BLOCK_N + offs_n
        if BLOCK_D == HEAD_DIM:
            k = tl.load(k_ptrs + keys[:, None] * stride_kt)
            v = tl.load(v_ptrs + keys[:, None] * stride_vt)
        else:
            k = tl.load(k_ptrs + keys[:, None] * stride_kt, mask=d_ok[None, :], other=0.0)
            v = tl.load(v_ptrs + keys[:, None] * stride_vt, mask=d_ok[None, :], other=0.0)
        m_i, l_i, acc = _online_softmax_step(
            q, k, v, m_i, l_i, acc, None, scale_log2, False, INPUT_PRECISION
        )

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # rows that saw no key: 0
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot
    tl.store(
        o_ptrs + offs_d[None, :] * stride_od,
        out.to(O.dtype.element_ty),
        mask=(offs_m[:, None] < q_len) & d_ok[None, :],
    )


# True when TRITON_INTERPRET=1 was set at import: the kernels then run on CPU tensors.
INTERPRETED = type(_flash_forward_kernel).__name__ == "InterpretedFunction"


def head_block(head_dim: int) -> int:
    """The padded head dimension a kernel tiles with: a power of two, at least 16."""
    return max(16, triton.next_power_of_2(head_dim))


def input_precision(dtype: torch.dtype) -> str:
    """IEEE float32 products for float32 inputs (no TF32), the default otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


def launch_options(num_warps: int | None, num_stages: int | None) -> dict[str, int]:
    """Triton launch options that were set (unset ones keep Triton's defaults)."""
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return {name: value for name, value in options.items() if value is not None}


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tiles: TileLists,
    scale: float | None = None,
    *,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> Tensor:
    """Attention of ``q`` (B, Hq, Tq, D) over ``k``, ``v`` (B, Hkv, Tk, D), visiting only
    the tiles of ``tiles`` (built for this Tq, Tk). Returns (B, Hq, Tq, D) in q's dtype.
    ``num_warps``, ``num_stages``: Triton launch options (None = Triton's default)."""
    batch, heads, q_len, head_dim = q.shape
    k_len = k.shape[2]
    if (tiles.q_len, tiles.k_len) != (q_len, k_len) or tiles.full_count.shape[0] != batch:
        raise ValueError(
            f"tile lists were built for B={tiles.full_count.shape[0]}, Tq={tiles.q_len}, "
            f"Tk={tiles.k_len} but attention got B={batch}, Tq={q_len}, Tk={k_len}"
        )
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(q)
    n_q_blocks, n_k_blocks = tiles.full_index.shape[1], tiles.full_index.shape[2]
    masks = tiles.partial_masks
    if masks.numel() == 0:  # no partial tile: the kernel never reads it, but needs a pointer
        masks = torch.zeros(1, dtype=torch.int8, device=q.device)
    grid = (n_q_blocks, batch * heads)
    _flash_forward_kernel[grid](
        q,
        k,
        v,
        out,
        tiles.partial_count,
        tiles.partial_index,
        tiles.partial_start,
        masks,
        tiles.full_count,
        tiles.full_index,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        heads,
        heads // k.shape[1],
        q_len,
        k_len,
        n_q_blocks,
        n_k_blocks,
        scale * LOG2E,
        HEAD_DIM=head_dim,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_D=head_block(head_dim),
        INPUT_PRECISION=input_precision(q.dtype),
        **launch_options(num_warps, num_stages),
    )
    return out


__all__ = ["flash_attention", "head_block", "input_precision", "launch_options"]
