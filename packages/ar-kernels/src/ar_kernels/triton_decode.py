"""A Triton decode-attention kernel over a KV cache: per-row lengths and split-K.

Decoding reads the whole cache for a handful of queries, so it is bound by memory
bandwidth, not arithmetic. Two ideas make the kernel read each cached key and value
once, with the whole GPU busy:

* **Grouped queries share a load**: one program serves every query head of a key/value
  head (GQA, Ainslie et al. 2023, arXiv:2305.13245) and every new query of the row, a
  (G * Tq, D) block against each (BLOCK_N, D) key block.
* **Split-K** ("Flash-Decoding for long-context inference", Dao, Haziza, Massa and
  Sizov, 2023, the PyTorch/Stanford CRFM blog): the keys of each row are cut into
  ``num_splits`` chunks processed by separate programs, each writing an unnormalised
  partial output with its running max and denominator; a second kernel merges the
  chunks (the log-sum-exp combination of FlashAttention's online softmax).

Per-row lengths (ragged batches, :class:`~ar_core.cache.StaticKVCache.lengths`) are read
inside the kernel: row ``b`` splits only its ``kv_len[b]`` keys, so a short row costs
little and nothing past its length is read; a row of length 0 returns zeros. No value is
read on the host, so a decode step never waits for the device.

Visibility: key ``j`` of row ``b`` is visible to query ``i`` iff ``j < kv_len[b]``, and
with ``causal`` also ``j <= q_offset[b] + i`` (several new queries written after the
context, as in speculative verification of a chain).

Notation: B batch, Hq query heads, Hkv key/value heads, G = Hq / Hkv, Tq new queries,
S cache slots, D head dim, R = G * Tq query rows of one program.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ar_core.cache import StaticKVCache
from ar_core.errors import InputError
from ar_kernels.triton_flash import LOG2E, head_block, input_precision


@triton.jit
def _decode_split_kernel(
    Q,
    K,
    V,
    KV_LEN,
    Q_OFFSET,
    ACC,
    M,
    L,
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
    n_kv_heads,
    groups,
    q_len,
    head_dim,
    n_slots,
    n_splits,
    scale_log2,
    CAUSAL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    row_head = tl.program_id(1)  # b * Hkv + kv_h
    b = (row_head // n_kv_heads).to(tl.int64)
    kv_h = (row_head % n_kv_heads).to(tl.int64)

    rows = tl.arange(0, BLOCK_R)  # row r: query head kv_h * G + r // Tq, query r % Tq
    row_ok = rows < groups * q_len
    head = kv_h * groups + rows // q_len
    query = rows % q_len
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q = tl.load(
        Q
        + b * stride_qb
        + head[:, None] * stride_qh
        + query[:, None] * stride_qt
        + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # (BLOCK_R, BLOCK_D)

    n_keys = tl.minimum(tl.load(KV_LEN + b).to(tl.int32), n_slots)  # never past the buffer
    chunk = tl.cdiv(tl.cdiv(n_keys, n_splits), BLOCK_N) * BLOCK_N  # this row's split size
    start = split * chunk
    end = tl.minimum(start + chunk, n_keys)
    if CAUSAL:
        last_key = tl.load(Q_OFFSET + b).to(tl.int32) + query  # (BLOCK_R,)

    k_base = K + b * stride_kb + kv_h * stride_kh
    v_base = V + b * stride_vb + kv_h * stride_vh
    m_i = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for block_start in range(start, end, BLOCK_N):
        keys = block_start + offs_n
        key_ok = keys < end
        kv_ok = key_ok[:, None] & d_ok[None, :]
        k = tl.load(
            k_base + keys[:, None] * stride_kt + offs_d[None, :] * stride_kd, mask=kv_ok, other=0.0
        )  # (BLOCK_N, BLOCK_D)
        v = tl.load(
            v_base + keys[:, None] * stride_vt + offs_d[None, :] * stride_vd, mask=kv_ok, other=0.0
        )
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale_log2  # (BR, BN)
        visible = key_ok[None, :]
        if CAUSAL:
            visible = visible & (keys[None, :] <= last_key[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new

    part = row_head * n_splits + split  # partials: (B * Hkv, splits, BLOCK_R[, BLOCK_D])
    tl.store(M + part * BLOCK_R + rows, m_i)
    tl.store(L + part * BLOCK_R + rows, l_i)
    tl.store(ACC + (part * BLOCK_R + rows[:, None]) * BLOCK_D + offs_d[None, :], acc)


@triton.jit
def _decode_combine_kernel(
    ACC,
    M,
    L,
    O,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    n_kv_heads,
    groups,
    q_len,
    head_dim,
    n_splits,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row_head = tl.program_id(0)
    b = (row_head // n_kv_heads).to(tl.int64)
    kv_h = (row_head % n_kv_heads).to(tl.int64)
    rows = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    m_all = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    l_all = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc_all = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for split in range(0, n_splits):
        part = row_head * n_splits + split
        m_s = tl.load(M + part * BLOCK_R + rows)
        l_s = tl.load(L + part * BLOCK_R + rows)
        acc_s = tl.load(ACC + (part * BLOCK_R + rows[:, None]) * BLOCK_D + offs_d[None, :])
        m_new = tl.maximum(m_all, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        w_all = tl.exp2(m_all - m_safe)
        w_s = tl.exp2(m_s - m_safe)
        l_all = l_all * w_all + l_s * w_s
        acc_all = acc_all * w_all[:, None] + acc_s * w_s[:, None]
        m_all = m_new
    out = acc_all / tl.where(l_all > 0.0, l_all, 1.0)[:, None]  # rows that saw no key: 0
    head = kv_h * groups + rows // q_len
    query = rows % q_len
    o_ptrs = O + b * stride_ob + head[:, None] * stride_oh + query[:, None] * stride_ot
    tl.store(
        o_ptrs + offs_d[None, :] * stride_od,
        out.to(O.dtype.element_ty),
        mask=(rows[:, None] < groups * q_len) & (offs_d[None, :] < head_dim),
    )


def choose_splits(batch_kv_heads: int, max_keys: int, block_n: int, device: torch.device) -> int:
    """Splits that give about four programs per streaming multiprocessor (enough loads in
    flight to keep memory busy; the partial outputs they add are a few hundred bytes per
    program), each split at least two key blocks long (one split off CUDA: the
    interpreter runs programs in turn)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = -(-4 * sms // max(1, batch_kv_heads))
    longest = max(1, -(-max_keys // (2 * block_n)))
    return max(1, min(wanted, longest))


def decode_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_len: Tensor,
    *,
    q_offset: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    num_splits: int | None = None,
    block_n: int = 64,
) -> Tensor:
    """Attention of a few queries ``q`` (B, Hq, Tq, D) over cache buffers ``k``, ``v``
    (B, Hkv, S, D), row ``b`` reading its first ``kv_len[b]`` keys ((B,) integer tensor).

    ``causal``: query ``i`` also needs ``j <= q_offset[b] + i``. ``num_splits``: key
    chunks per row (split-K), None = :func:`choose_splits`. Returns (B, Hq, Tq, D).
    """
    batch, heads, q_len, head_dim = q.shape
    n_kv_heads, max_keys = k.shape[1], k.shape[2]
    if causal and q_offset is None:
        raise InputError("decode_attention(causal=True) needs q_offset, one per row")
    if num_splits is not None and num_splits < 1:
        raise InputError(f"decode_attention: num_splits must be >= 1, got {num_splits}")
    groups = heads // n_kv_heads
    splits = num_splits or choose_splits(batch * n_kv_heads, max_keys, block_n, q.device)
    block_r = max(16, triton.next_power_of_2(groups * q_len))
    block_d = head_block(head_dim)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    parts = batch * n_kv_heads * splits
    acc = torch.empty(parts, block_r, block_d, dtype=torch.float32, device=q.device)
    m = torch.empty(parts, block_r, dtype=torch.float32, device=q.device)
    lse = torch.empty(parts, block_r, dtype=torch.float32, device=q.device)
    offsets = kv_len if q_offset is None else q_offset  # unread unless causal
    _decode_split_kernel[(splits, batch * n_kv_heads)](
        q,
        k,
        v,
        kv_len,
        offsets,
        acc,
        m,
        lse,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        n_kv_heads,
        groups,
        q_len,
        head_dim,
        max_keys,
        splits,
        scale * LOG2E,
        CAUSAL=causal,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        INPUT_PRECISION=input_precision(q.dtype),
    )
    out = torch.empty_like(q)
    _decode_combine_kernel[(batch * n_kv_heads,)](
        acc,
        m,
        lse,
        out,
        *out.stride(),
        n_kv_heads,
        groups,
        q_len,
        head_dim,
        splits,
        BLOCK_R=block_r,
        BLOCK_D=block_d,
    )
    return out


def cache_decode_attention(
    q: Tensor,
    cache: StaticKVCache,
    layer: int,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    block_n: int = 64,
) -> Tensor:
    """Decode attention over ``cache`` for queries whose keys and values were just
    written (pending) with ``cache.write(layer, ...)``: query ``i`` of row ``b`` sits at
    cache index ``cache.lengths[b] + i`` and sees every key up to and including its own
    (the committed context of its row, ragged, and the new entries before it).

    ``q``: (B, Hq, Tq, D). Returns (B, Hq, Tq, D).
    """
    if not 0 <= layer < cache.n_layers:
        raise InputError(f"cache_decode_attention: layer {layer} not in [0, {cache.n_layers})")
    batch, heads, q_len, head_dim = q.shape
    if batch != cache.batch_size or head_dim != cache.head_dim or heads % cache.n_kv_heads:
        raise InputError(
            f"cache_decode_attention: q (B, Hq, Tq, D) = {tuple(q.shape)} does not fit the "
            f"cache (B={cache.batch_size}, Hkv={cache.n_kv_heads}, D={cache.head_dim}); Hq "
            f"must be a multiple of Hkv"
        )
    if q.dtype != cache.dtype:
        raise InputError(
            f"cache_decode_attention: q is {q.dtype} but the cache holds {cache.dtype}"
        )
    q_offset = cache.lengths
    return decode_attention(
        q,
        cache.k[layer],
        cache.v[layer],
        q_offset + q_len,
        q_offset=q_offset,
        causal=q_len > 1,
        scale=scale,
        num_splits=num_splits,
        block_n=block_n,
    )


__all__ = ["cache_decode_attention", "choose_splits", "decode_attention"]
