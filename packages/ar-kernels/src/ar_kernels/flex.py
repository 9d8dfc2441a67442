"""FlexAttention backend: a ``MaskSpec`` becomes a block-sparse ``BlockMask``.

"FlexAttention: A Programming Model for Generating Optimized Attention Kernels"
(Dong et al., 2024, arXiv:2412.05496). ``create_block_mask`` evaluates the mask once
per (BLOCK_SIZE x BLOCK_SIZE) tile; the compiled kernel skips empty tiles, runs full
tiles without a mask and evaluates ``mask_mod`` only inside partial tiles. That makes
block-structured masks (block-causal, documents, sliding windows) cheaper than a dense
boolean mask, on CPU and CUDA alike.

The MaskSpec's ``mask_mod`` takes absolute indices; the backend wraps it so that query
``i`` of row ``b`` is at ``q_offset[b] + i`` and keys ``j >= kv_len[b]`` are hidden.
Block masks are cached per (mask, B, Tq, Tk, device, q_offset values, kv_len values):
the tile structure depends on the offsets, so a mask built for other offsets is never
reused. ``flex_attention`` is compiled with ``torch.compile`` on first use (once per
backend object; without compilation it would materialise the full score matrix).

Compilation is static (``dynamic=False``): each new kind of mask and each new shape
costs one compile (a model needs about two: prefill and decode over a static KV cache).
Dynamic shapes are avoided on purpose: with torch 2.15 the CPU kernel recompiled for
dynamic shapes failed in Inductor's C++ codegen ("'cur_qSplitSize8' was not declared").
torch's ``recompile_limit`` (8 by default) caps the variants, past which dynamo runs the
slow unfused path with a warning.

Notation: B batch, Hq query heads, Hkv key/value heads, Tq queries, Tk keys, D head dim.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

from ar_core.masks import MaskMod, MaskSpec

FLEX_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def bounded_mask_mod(mask_mod: MaskMod | None, q_offset: Tensor, kv_len: Tensor) -> MaskMod:
    """``mask_mod`` in chunk coordinates: query ``i`` of row ``b`` is at absolute index
    ``q_offset[b] + i``, and keys at or past ``kv_len[b]`` are invisible.

    ``q_offset``, ``kv_len``: (B,) long, captured by the returned function; pass private
    copies (a KV cache bumps its lengths in place).
    """
    if mask_mod is None:

        def keys_in_range(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return kv_idx < kv_len[b]

        return keys_in_range

    def offset_and_bounded(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx < kv_len[b]) & mask_mod(b, h, q_idx + q_offset[b], kv_idx)

    return offset_and_bounded


class FlexBackend:
    """``torch.nn.attention.flex_attention`` over a cached ``BlockMask``."""

    name = "flex"

    def __init__(
        self, *, block_size: int = 128, max_cached_masks: int = 32, compile: bool = True
    ) -> None:
        """``compile=False`` runs FlexAttention's unfused reference path (debugging and
        tests only: it materialises the full score matrix)."""
        self.block_size = block_size
        self.max_cached_masks = max_cached_masks
        self.compile = compile
        self._block_masks: OrderedDict[Hashable, Any] = OrderedDict()
        self._compiled_flex: Callable[..., Tensor] | None = None
        self.block_mask_builds = 0  # how many BlockMasks were built (cache misses)

    # -- capability -------------------------------------------------------------------
    def unsupported_reason(
        self, *, device: torch.device, dtype: torch.dtype, mask: MaskSpec | None
    ) -> str | None:
        try:
            import torch.nn.attention.flex_attention
        except ImportError:
            return f"torch {torch.__version__} has no FlexAttention (needs torch>=2.5); use 'sdpa'"
        if device.type not in ("cpu", "cuda"):
            return f"FlexAttention runs on CPU and CUDA devices (got {device.type}); use 'sdpa'"
        if dtype not in FLEX_DTYPES:
            names = ", ".join(str(d) for d in FLEX_DTYPES)
            return f"FlexAttention supports {names} (got {dtype}); use 'math' or 'sdpa'"
        return None

    # -- block masks --------------------------------------------------------------------
    def block_mask(
        self,
        mask: MaskSpec | None,
        q_offset: Tensor,
        kv_len: Tensor,
        q_len: int,
        k_len: int,
    ) -> Any:
        """The ``BlockMask`` of ``mask`` for this chunk (from the cache when built before)."""
        from torch.nn.attention.flex_attention import create_block_mask

        device = q_offset.device
        offsets, lengths = tuple(q_offset.tolist()), tuple(kv_len.tolist())
        batch = len(offsets)
        key = (
            None if mask is None else mask.cache_key,
            batch,
            q_len,
            k_len,
            str(device),
            offsets,
            lengths,
        )
        cached = self._block_masks.get(key)
        if cached is not None:
            self._block_masks.move_to_end(key)
            return cached
        if mask is not None and batch > 0:
            mask.check_range(max(offsets) + q_len, min(k_len, max(lengths)))
        mod = bounded_mask_mod(
            None if mask is None else mask.mask_mod_for(device),
            q_offset.detach().clone(),
            kv_len.detach().clone(),
        )
        built = create_block_mask(
            mod, batch, None, q_len, k_len, device=device, BLOCK_SIZE=self.block_size
        )
        self.block_mask_builds += 1
        self._block_masks[key] = built
        if len(self._block_masks) > self.max_cached_masks:
            self._block_masks.popitem(last=False)
        return built

    # -- attention ----------------------------------------------------------------------
    def _flex(self) -> Callable[..., Tensor]:
        """``flex_attention`` compiled at the call site, once per backend object."""
        if self._compiled_flex is None:
            from torch.nn.attention.flex_attention import flex_attention

            self._compiled_flex = (
                torch.compile(flex_attention, dynamic=False) if self.compile else flex_attention
            )
        return self._compiled_flex

    def prepare(
        self,
        *,
        mask: MaskSpec | None,
        q_offset: Tensor,
        kv_len: Tensor,
        q_len: int,
        k_len: int,
        keys_all_valid: bool = False,
    ) -> Any:
        """The BlockMask of one forward, looked up (or built) once for all its layers:
        one host read of the offsets per forward instead of one per layer."""
        return self.block_mask(mask, q_offset, kv_len, q_len, k_len)

    def attend_prepared(
        self, q: Tensor, k: Tensor, v: Tensor, state: Any, scale: float | None
    ) -> Tensor:
        out = self._flex()(
            q, k, v, block_mask=state, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )  # (B, Hq, Tq, D); rows that see no key come out as 0
        return out

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
        block_mask = self.block_mask(mask, q_offset, kv_len, q.shape[2], k.shape[2])
        return self.attend_prepared(q, k, v, block_mask, scale)
