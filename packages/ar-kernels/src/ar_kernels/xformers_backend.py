"""xformers backend: ``xformers.ops.memory_efficient_attention`` on CUDA.

"Self-attention Does Not Need O(n^2) Memory" (Rabe & Staats, 2021, arXiv:2112.05682),
as implemented by xformers. The plain causal mask (queries and keys aligned, every key
in range) uses xformers' ``LowerTriangularMask``; every other ``MaskSpec`` becomes a
dense additive bias (0 = visible, -inf = hidden). GQA repeats the key/value heads.

xformers is an optional extra (``pip install 'ar-kernels[xformers]'``) and is imported
only when attention runs.

Notation: B batch, Hq query heads, Hkv key/value heads, Tq queries, Tk keys, D head dim.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ar_core.attention import is_plain_causal, rescue_empty_rows, visible_keys, zero_empty_rows
from ar_core.masks import MaskSpec

XFORMERS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# xformers wants the bias' last dimension 16-byte aligned: allocate it padded, then slice.
_BIAS_ALIGN = 8


def additive_bias(visible: Tensor, heads: int, dtype: torch.dtype) -> Tensor:
    """(B, Tq, Tk) bool -> (B, H, Tq, Tk) additive bias (0 / -inf), with an aligned last
    dimension as xformers requires."""
    batch, q_len, k_len = visible.shape
    padded = -(-k_len // _BIAS_ALIGN) * _BIAS_ALIGN
    storage = torch.full(
        (batch, 1, q_len, padded), float("-inf"), dtype=dtype, device=visible.device
    )
    bias = storage[..., :k_len]  # (B, 1, Tq, Tk), aligned rows
    bias.masked_fill_(visible[:, None], 0.0)
    return bias.expand(batch, heads, q_len, k_len)


class XformersBackend:
    """``xformers.ops.memory_efficient_attention`` (CUDA only)."""

    name = "xformers"

    def unsupported_reason(
        self, *, device: torch.device, dtype: torch.dtype, mask: MaskSpec | None
    ) -> str | None:
        if device.type != "cuda":
            return f"xformers needs a CUDA device (got {device.type}); use 'sdpa' or 'flex'"
        if importlib.util.find_spec("xformers") is None:
            return "xformers is not installed: pip install 'ar-kernels[xformers]'"
        if dtype not in XFORMERS_DTYPES:
            names = ", ".join(str(d) for d in XFORMERS_DTYPES)
            return f"xformers supports {names} (got {dtype}); use 'sdpa'"
        return None

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: MaskSpec | None,
        q_offset: Tensor,
        kv_len: Tensor,
        scale: float | None,
    ) -> Tensor:
        import xformers.ops as xops

        heads, q_len, k_len = q.shape[1], q.shape[2], k.shape[2]
        groups = heads // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)  # (B, Hq, Tk, D)
        v = v.repeat_interleave(groups, dim=1)  # (B, Hq, Tk, D)
        # xformers' layout is (B, T, H, D)
        q_bthd, k_bthd, v_bthd = (t.transpose(1, 2) for t in (q, k, v))
        if is_plain_causal(mask, q_offset, kv_len, q_len, k_len):
            out = xops.memory_efficient_attention(
                q_bthd, k_bthd, v_bthd, attn_bias=xops.LowerTriangularMask(), scale=scale
            )
            return out.transpose(1, 2)  # (B, Hq, Tq, D)
        visible = visible_keys(mask, q_offset, kv_len, q_len, k_len)
        visible, has_key = rescue_empty_rows(visible)  # (B, Tq, Tk), (B, Tq)
        bias = additive_bias(visible, heads, q.dtype)  # (B, Hq, Tq, Tk)
        out = xops.memory_efficient_attention(q_bthd, k_bthd, v_bthd, attn_bias=bias, scale=scale)
        return zero_empty_rows(out.transpose(1, 2), has_key)  # (B, Hq, Tq, D)
