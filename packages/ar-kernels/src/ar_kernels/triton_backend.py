"""The ``triton`` attention backend: ar-kernels' own Triton kernels behind ``attend``.

Two kernels, chosen per forward by :meth:`TritonBackend.prepare`:

* **decode** (:mod:`ar_kernels.triton_decode`): a few queries per row (``G * Tq`` rows
  at most ``decode_max_rows``) over a KV cache with the plain visibility of decoding
  (``mask=None``: every key below ``kv_len[b]``; ``causal``: also ``j <= q_offset[b] +
  i``). Split-K over long caches, per-row lengths read on the device, no host sync.
* **flash forward** (:mod:`ar_kernels.triton_flash`): every other case, any
  ``MaskSpec``. The mask is evaluated once per forward into
  :class:`~ar_kernels.block_sparsity.TileLists`; fully masked tiles are skipped.

The backend runs on CUDA. On a machine without CUDA it refuses with a reason that names
the fix, unless ``TRITON_INTERPRET=1`` was set before the first import of the kernels
(Triton's CPU interpreter: exact but slow, for tests). Triton is imported only when a
kernel runs, so registering the backend costs nothing.

Notation: B batch, Hq query heads, Hkv key/value heads, G = Hq / Hkv, Tq queries,
Tk keys, D head dim.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ar_core.attention import visible_keys
from ar_core.errors import ConfigError
from ar_core.masks import MaskSpec
from ar_kernels.block_sparsity import TileLists, tile_lists

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TRUE = ("1", "true", "on", "yes")


def interpreting() -> bool:
    """``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


@dataclass(frozen=True)
class DecodePlan:
    """One forward on the decode kernel: visibility ``j < kv_len[b]`` (and, when
    ``causal``, ``j <= q_offset[b] + i``)."""

    q_offset: Tensor
    kv_len: Tensor
    causal: bool


@dataclass(frozen=True)
class FlashPlan:
    """One forward on the flash kernel: the tiles to visit (built once for all layers)."""

    tiles: TileLists


class TritonBackend:
    """Triton kernels: a block-sparse flash forward for any MaskSpec and a split-K decode
    kernel over KV caches with per-row lengths."""

    name = "triton"

    def __init__(
        self,
        *,
        block_m: int = 64,
        block_n: int = 64,
        decode_block_n: int = 64,
        decode_max_rows: int = 64,
        num_splits: int | None = None,
        num_warps: int | None = None,
        num_stages: int | None = None,
    ) -> None:
        """``block_m`` x ``block_n``: the flash kernel's tiles (powers of two >= 16);
        ``decode_block_n``: keys per step of the decode kernel; ``decode_max_rows``: the
        most ``G * Tq`` query rows a decode program holds; ``num_splits``: split-K chunks
        per row (None = enough to fill the GPU); ``num_warps``, ``num_stages``: the flash
        kernel's Triton launch options (None = Triton's defaults)."""
        for name, size in (
            ("block_m", block_m),
            ("block_n", block_n),
            ("decode_block_n", decode_block_n),
        ):
            if size < 16 or size & (size - 1):
                raise ConfigError(f"TritonBackend: {name} must be a power of two >= 16, got {size}")
        self.block_m = block_m
        self.block_n = block_n
        self.decode_block_n = decode_block_n
        self.decode_max_rows = decode_max_rows
        self.num_splits = num_splits
        self.num_warps = num_warps
        self.num_stages = num_stages

    # -- capability -------------------------------------------------------------------
    def unsupported_reason(
        self, *, device: torch.device, dtype: torch.dtype, mask: MaskSpec | None
    ) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return (
                "Triton is not installed: pip install triton (Linux wheels of torch with "
                "CUDA bring it); or use 'sdpa' or 'flex'"
            )
        if device.type == "cpu" and interpreting():
            pass  # Triton's interpreter runs the kernels on CPU tensors
        elif device.type != "cuda":
            return (
                f"the Triton kernels need a CUDA device (got {device.type}); use 'sdpa' or "
                f"'flex', or set TRITON_INTERPRET=1 before starting Python to run them in "
                f"Triton's CPU interpreter (slow; for tests)"
            )
        if dtype not in TRITON_DTYPES:
            names = ", ".join(str(d) for d in TRITON_DTYPES)
            return f"the Triton kernels support {names} (got {dtype}); use 'math' or 'sdpa'"
        return None

    def _check_kernels_mode(self, device: torch.device) -> None:
        """Kernels imported without the interpreter cannot take CPU tensors."""
        from ar_kernels import triton_flash

        if device.type == "cpu" and not triton_flash.INTERPRETED:
            raise ConfigError(
                "the Triton kernels were imported without TRITON_INTERPRET=1, so they cannot "
                "run on the CPU; set TRITON_INTERPRET=1 before starting Python, or use 'sdpa'"
            )

    # -- planning ---------------------------------------------------------------------
    def uses_decode_kernel(self, mask: MaskSpec | None, q_len: int, groups: int) -> bool:
        """Decode kernel for few queries under the plain decode visibility; the flash
        kernel otherwise."""
        plain = mask is None or mask.is_causal
        return plain and groups * q_len <= self.decode_max_rows

    def prepare(
        self,
        *,
        mask: MaskSpec | None,
        q_offset: Tensor,
        kv_len: Tensor,
        q_len: int,
        k_len: int,
        keys_all_valid: bool = False,
        groups: int = 1,
    ) -> DecodePlan | FlashPlan:
        """The plan of one forward, shared by its layers. The decode plan reads nothing on
        the host; the flash plan evaluates the mask once into tile lists. ``groups`` (Hq /
        Hkv) is unknown before the layers run: the decode kernel is chosen for
        ``q_len <= decode_max_rows`` and re-checked per call."""
        if self.uses_decode_kernel(mask, q_len, groups):
            return DecodePlan(q_offset=q_offset, kv_len=kv_len, causal=mask is not None)
        visible = visible_keys(mask, q_offset, kv_len, q_len, k_len)  # (B, Tq, Tk)
        return FlashPlan(tile_lists(visible, self.block_m, self.block_n))

    def _flash_plan(self, plan: DecodePlan, q_len: int, k_len: int) -> FlashPlan:
        mask = None
        if plan.causal:
            from ar_core.masks import causal

            mask = causal()
        visible = visible_keys(mask, plan.q_offset, plan.kv_len, q_len, k_len)
        return FlashPlan(tile_lists(visible, self.block_m, self.block_n))

    # -- attention ----------------------------------------------------------------------
    def attend_prepared(
        self, q: Tensor, k: Tensor, v: Tensor, state: Any, scale: float | None
    ) -> Tensor:
        self._check_kernels_mode(q.device)
        groups = q.shape[1] // k.shape[1]
        if isinstance(state, DecodePlan):
            if not self.uses_decode_kernel(None, q.shape[2], groups):  # too many rows
                state = self._flash_plan(state, q.shape[2], k.shape[2])
            else:
                from ar_kernels.triton_decode import decode_attention

                return decode_attention(
                    q,
                    k,
                    v,
                    state.kv_len,
                    q_offset=state.q_offset,
                    causal=state.causal,
                    scale=scale,
                    num_splits=self.num_splits,
                    block_n=self.decode_block_n,
                )
        from ar_kernels.triton_flash import flash_attention

        return flash_attention(
            q, k, v, state.tiles, scale, num_warps=self.num_warps, num_stages=self.num_stages
        )

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
        state = self.prepare(
            mask=mask,
            q_offset=q_offset,
            kv_len=kv_len,
            q_len=q.shape[2],
            k_len=k.shape[2],
            groups=q.shape[1] // k.shape[1],
        )
        return self.attend_prepared(q, k, v, state, scale)


__all__ = ["DecodePlan", "FlashPlan", "TritonBackend", "interpreting"]
