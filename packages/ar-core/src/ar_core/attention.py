"""Scaled dot-product attention over a ``MaskSpec``, with pluggable backends.

``attend(q, k, v, mask=..., q_offset=..., kv_len=...)`` is the one attention call of
ar ("Attention Is All You Need", Vaswani et al. 2017, arXiv:1706.03762), with
grouped-query attention ("GQA", Ainslie et al. 2023, arXiv:2305.13245) handled by the
backend. Query ``i`` of row ``b`` sits at absolute index ``q_offset[b] + i``; key ``j``
at ``j``. Key ``j`` is visible to it iff ``j < kv_len[b]`` and ``mask.mask_mod(b, h,
q_offset[b] + i, j)``. A query with no visible key returns zeros.

Backends are objects registered under the ``register_attention_backends`` hook: ar-core
registers ``math`` (the reference: dense boolean mask, float32 softmax) and ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``); ar-kernels adds ``flex`` and
``xformers``. ``backend="auto"`` picks one for the device, mask and length.

Notation: B batch, Hq query heads, Hkv key/value heads, Tq queries, Tk keys, D head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core import registry
from ar_core.errors import ConfigError, InputError
from ar_core.masks import MaskSpec

# "auto" switches to FlexAttention for structured masks from these key lengths on.
FLEX_MIN_KEYS_CUDA = 1024
FLEX_MIN_KEYS_CPU = 2048


@runtime_checkable
class AttentionBackend(Protocol):
    """An attention implementation (see the module docstring for the semantics)."""

    name: str

    def unsupported_reason(
        self, *, device: torch.device, dtype: torch.dtype, mask: MaskSpec | None
    ) -> str | None:
        """Why this backend cannot run these inputs, or None when it can."""
        ...

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
        """(B, Hq, Tq, D) attention output in the dtype of ``q``."""
        ...


# ----------------------------------------------------------------------------------
# Shared pieces: the dense visibility of keys, and rows that see no key
# ----------------------------------------------------------------------------------


def visible_keys(
    mask: MaskSpec | None, q_offset: Tensor, kv_len: Tensor, q_len: int, k_len: int
) -> Tensor:
    """(B, Tq, Tk) bool: may query ``i`` of row ``b`` attend to key ``j``.

    The mask is evaluated only on keys below ``max(kv_len)``, so a KV-cache buffer longer
    than the mask's sequence is fine.
    """
    device = q_offset.device
    batch = q_offset.shape[0]
    keys = torch.arange(k_len, device=device)
    in_len = keys[None, None, :] < kv_len[:, None, None]  # (B, 1, Tk)
    if mask is None:
        return in_len.expand(batch, q_len, k_len)
    if mask.is_causal and torch.compiler.is_compiling():
        # a compiled multi-token pass: the causal rule on every slot, no host read (static
        # shapes; key j of row b is visible to query i iff j <= q_offset[b] + i < kv_len[b])
        q_pos = q_offset[:, None, None] + torch.arange(q_len, device=device)[None, :, None]
        return (keys[None, None, :] <= q_pos) & in_len  # (B, Tq, Tk)
    if torch.compiler.is_compiling():  # any other mask: evaluated on every slot (static)
        dense = mask.to_dense(q_len, k_len, q_offset=q_offset, batch_size=batch, device=device)
        return dense & in_len
    k_used = min(k_len, int(kv_len.max())) if batch > 0 else 0
    dense = mask.to_dense(q_len, k_used, q_offset=q_offset, batch_size=batch, device=device)
    if k_used < k_len:  # keys past every row's kv_len: never visible
        dense = F.pad(dense, (0, k_len - k_used), value=False)  # (B, Tq, Tk)
    return dense & in_len


def rescue_empty_rows(visible: Tensor) -> tuple[Tensor, Tensor]:
    """Let rows that see no key see key 0 instead, so softmax stays finite (and so do its
    gradients); the caller zeroes those rows' outputs with the returned ``has_key``.

    ``visible``: (B, Tq, Tk) bool. Returns (``visible_safe`` (B, Tq, Tk), ``has_key`` (B, Tq)).
    """
    has_key = visible.any(dim=-1)  # (B, Tq)
    first = torch.zeros_like(visible)
    first[..., 0] = True
    return visible | (first & ~has_key[..., None]), has_key


def zero_empty_rows(out: Tensor, has_key: Tensor) -> Tensor:
    """``out``: (B, H, Tq, D); rows where ``has_key`` (B, Tq) is False become 0."""
    return torch.where(has_key[:, None, :, None], out, torch.zeros((), dtype=out.dtype))


def is_plain_causal(
    mask: MaskSpec | None, q_offset: Tensor, kv_len: Tensor, q_len: int, k_len: int
) -> bool:
    """True when ``is_causal=True`` of SDPA/xformers gives exactly this visibility."""
    return (
        mask is not None
        and mask.is_causal
        and q_len == k_len
        and bool((q_offset == 0).all())
        and bool((kv_len >= k_len).all())
    )


def _float_dtype_reason(dtype: torch.dtype) -> str | None:
    if not dtype.is_floating_point:
        return f"attention needs floating-point q, k, v, got {dtype}"
    return None


# ----------------------------------------------------------------------------------
# The built-in backends
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseVisibility:
    """A prepared dense mask, shared by every layer of one forward.

    ``visible``: (B, 1, Tq, Tk) bool, or None for "every key" (no padding, no mask);
    ``causal``: SDPA's ``is_causal`` gives exactly the visibility; ``has_key``: (B, Tq)
    rows that see at least one key, or None when every row provably does.
    """

    visible: Tensor | None
    causal: bool = False
    has_key: Tensor | None = None


def dense_visibility(
    mask: MaskSpec | None,
    q_offset: Tensor,
    kv_len: Tensor,
    q_len: int,
    k_len: int,
    *,
    keys_all_valid: bool = False,
) -> DenseVisibility:
    """Build the dense visibility once per forward (not once per layer).

    ``keys_all_valid``: the caller knows ``kv_len == k_len`` for every row (no KV-cache
    buffer padding), which saves the check. With ``mask=None`` and a padded buffer the
    visibility is ``key < kv_len[b]``; the caller guarantees ``kv_len >= 1`` (a forward
    writes its own queries' keys first), so no row is empty. Neither path reads a tensor
    value on the host, so decoding under ``torch.compile`` neither breaks nor recompiles.
    """
    if mask is None:
        if keys_all_valid:
            return DenseVisibility(visible=None)
        keys = torch.arange(k_len, device=kv_len.device)
        in_len = keys[None, :] < kv_len[:, None]  # (B, Tk)
        return DenseVisibility(visible=in_len[:, None, None, :])  # (B, 1, 1, Tk)
    if mask.is_causal and keys_all_valid and q_len == k_len and bool((q_offset == 0).all()):
        return DenseVisibility(visible=None, causal=True)
    visible = visible_keys(mask, q_offset, kv_len, q_len, k_len)
    visible, has_key = rescue_empty_rows(visible)  # (B, Tq, Tk), (B, Tq)
    return DenseVisibility(visible=visible[:, None], has_key=has_key)


class _DenseMaskBackend:
    """Backends whose prepared state is the dense mask of :func:`dense_visibility`."""

    def prepare(
        self,
        *,
        mask: MaskSpec | None,
        q_offset: Tensor,
        kv_len: Tensor,
        q_len: int,
        k_len: int,
        keys_all_valid: bool = False,
    ) -> DenseVisibility:
        """The mask of one forward, built once; see :func:`dense_visibility`."""
        return dense_visibility(mask, q_offset, kv_len, q_len, k_len, keys_all_valid=keys_all_valid)


class MathBackend(_DenseMaskBackend):
    """The reference: explicit (B, Tq, Tk) boolean mask, GQA by repeating K/V heads,
    softmax in float32. Slow and memory-hungry; use it to check the others."""

    name = "math"

    def attend_prepared(
        self, q: Tensor, k: Tensor, v: Tensor, state: DenseVisibility, scale: float | None
    ) -> Tensor:
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)  # (B, Hq, Tk, D)
        v = v.repeat_interleave(groups, dim=1)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, Hq, Tq, Tk)
        if state.causal:
            q_len, k_len = q.shape[2], k.shape[2]
            tri = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~tri, float("-inf"))
        elif state.visible is not None:
            scores = scores.masked_fill(~state.visible, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v.float()  # (B, Hq, Tq, D)
        if state.has_key is not None:
            out = zero_empty_rows(out, state.has_key)
        return out.to(q.dtype)

    def unsupported_reason(
        self, *, device: torch.device, dtype: torch.dtype, mask: MaskSpec | None
    ) -> str | None:
        return _float_dtype_reason(dtype)

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
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)  # (B, Hq, Tk, D)
        v = v.repeat_interleave(groups, dim=1)  # (B, Hq, Tk, D)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        visible = visible_keys(mask, q_offset, kv_len, q.shape[2], k.shape[2])
        visible, has_key = rescue_empty_rows(visible)  # (B, Tq, Tk), (B, Tq)
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, Hq, Tq, Tk)
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = probs @ v.float()  # (B, Hq, Tq, D)
        return zero_empty_rows(out, has_key).to(q.dtype)


# up to this many queries per row, compiled CPU attention runs as grouped matmuls that
# inductor fuses (eager: one query only; the fused kernel is faster for more, measured)
FEW_QUERIES = 16


def _few_queries(
    q: Tensor, k: Tensor, v: Tensor, state: DenseVisibility, scale: float | None
) -> Tensor:
    """A few queries per row on the CPU (a decode step, a compiled verification pass):
    grouped matmuls, no head repeat, the dense mask applied once per KV head.

    For one query the fused SDPA kernel's set-up costs more than the two small matmuls
    (~30 us per layer on a 512-entry cache). For a compiled 5-token pass of a 16 x 768
    model the fused matmuls measured 33.8 ms against 34.6 ms with the kernel; eager, the
    kernel was faster (37.6-38.2 against 38.5-39.3 ms), so eager passes of 2+ queries
    keep it. The result is the same attention.
    """
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    # (B, Hkv, G * Tq, D): the G query heads of each KV head, their queries in a row
    qg = q.reshape(B, Hkv, G * Tq, D)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = (qg @ k.transpose(-2, -1)) * scale  # (B, Hkv, G * Tq, Tk)
    if state.causal:  # Tq == Tk, every key valid
        tri = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
        scores = scores.view(B, Hkv, G, Tq, Tk).masked_fill(~tri, float("-inf"))
    elif state.visible is not None:  # (B, 1, Tq or 1, Tk)
        visible = state.visible.view(B, 1, 1, state.visible.shape[2], Tk)
        scores = scores.view(B, Hkv, G, Tq, Tk).masked_fill(~visible, float("-inf"))
    # the softmax in float32 at least (as SDPA's CPU kernel accumulates), then v's dtype
    acc = torch.promote_types(scores.dtype, torch.float32)
    probs = torch.softmax(scores.view(B, Hkv, G * Tq, Tk), dim=-1, dtype=acc)
    out = (probs.to(v.dtype) @ v).view(B, H, Tq, D)  # (B, H, Tq, D)
    if state.has_key is not None:
        out = zero_empty_rows(out, state.has_key)
    return out


class SdpaBackend(_DenseMaskBackend):
    """``torch.nn.functional.scaled_dot_product_attention``: the ``is_causal`` fast path
    when it is exact, else a dense boolean mask; GQA through ``enable_gqa``."""

    name = "sdpa"

    def attend_prepared(
        self, q: Tensor, k: Tensor, v: Tensor, state: DenseVisibility, scale: float | None
    ) -> Tensor:
        if q.device.type == "cpu" and (
            q.shape[2] == 1 or (q.shape[2] <= FEW_QUERIES and torch.compiler.is_compiling())
        ):
            return _few_queries(q, k, v, state, scale)
        gqa = q.shape[1] != k.shape[1]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=state.visible, is_causal=state.causal, scale=scale, enable_gqa=gqa
        )  # (B, Hq, Tq, D)
        if state.has_key is not None:
            out = zero_empty_rows(out, state.has_key)
        return out

    def unsupported_reason(
        self, *, device: torch.device, dtype: torch.dtype, mask: MaskSpec | None
    ) -> str | None:
        return _float_dtype_reason(dtype)

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
        q_len, k_len = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]
        if is_plain_causal(mask, q_offset, kv_len, q_len, k_len):
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=gqa
            )
        if mask is None and bool((kv_len >= k_len).all()):
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
        visible = visible_keys(mask, q_offset, kv_len, q_len, k_len)
        visible, has_key = rescue_empty_rows(visible)  # (B, Tq, Tk), (B, Tq)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=visible[:, None], scale=scale, enable_gqa=gqa
        )  # (B, Hq, Tq, D)
        return zero_empty_rows(out, has_key)


# ----------------------------------------------------------------------------------
# Choosing a backend, and the call everyone uses
# ----------------------------------------------------------------------------------

_BUILTIN_SDPA = SdpaBackend()


def _runnable(device: torch.device, dtype: torch.dtype, mask: MaskSpec | None) -> list[str]:
    return [
        name
        for name, backend in registry.attention_backends.items()
        if backend.unsupported_reason(device=device, dtype=dtype, mask=mask) is None
    ]


def _auto_choice(device: torch.device, mask: MaskSpec | None, k_len: int) -> str:
    """The backend name ``"auto"`` prefers: FlexAttention for structured masks over long
    sequences (block sparsity pays off), SDPA otherwise."""
    structured = mask is not None and not mask.is_causal
    min_keys = FLEX_MIN_KEYS_CUDA if device.type == "cuda" else FLEX_MIN_KEYS_CPU
    if structured and k_len >= min_keys:
        return "flex"
    return "sdpa"


def resolve_backend(
    name: str,
    device: torch.device | str,
    dtype: torch.dtype,
    mask: MaskSpec | None,
    *,
    k_len: int = 0,
) -> AttentionBackend:
    """The backend registered as ``name`` (or chosen by ``"auto"`` for ``k_len`` keys).

    Unknown names raise the registry's ``UnknownNameError``; a backend that cannot run on
    this device/dtype/mask raises ``ConfigError`` naming the reason and what can run.
    ``"auto"`` always finds one: ar-core's SDPA is the last resort, also when plugins are
    switched off.
    """
    device = torch.device(device)
    if name == "auto":
        preferred = _auto_choice(device, mask, k_len)
        for candidate in dict.fromkeys((preferred, "sdpa")):
            if candidate in registry.attention_backends:
                backend = registry.attention_backends.get(candidate)
                if backend.unsupported_reason(device=device, dtype=dtype, mask=mask) is None:
                    return backend
        return _BUILTIN_SDPA
    backend = registry.attention_backends.get(name)
    reason = backend.unsupported_reason(device=device, dtype=dtype, mask=mask)
    if reason is not None:
        others = [n for n in _runnable(device, dtype, mask) if n != name]
        alternatives = ", ".join(repr(n) for n in others) or "none"
        raise ConfigError(
            f"attention backend {name!r} cannot run here: {reason}. "
            f"Backends that can: {alternatives} (or backend='auto')"
        )
    return backend


def _as_batch_vector(x: Tensor | int, batch: int, device: torch.device, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        return torch.full((batch,), int(x), dtype=torch.long, device=device)
    if x.shape != (batch,) or x.dtype.is_floating_point:
        raise InputError(
            f"{what} must be a ({batch},) integer tensor (one value per row), got shape "
            f"{tuple(x.shape)} and dtype {x.dtype}"
        )
    return x.to(device=device, dtype=torch.long)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError(
            f"attend needs q (B, Hq, Tq, D) and k, v (B, Hkv, Tk, D), got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise InputError(
            f"attend: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must share "
            f"B and D, and k and v must have the same shape"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise InputError(
            f"attend: query heads ({q.shape[1]}) must be a multiple of key/value heads "
            f"({k.shape[1]})"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise InputError(f"attend: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: MaskSpec | None,
    q_offset: Tensor | int,
    kv_len: Tensor | int,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Masked attention. ``q``: (B, Hq, Tq, D); ``k``, ``v``: (B, Hkv, Tk, D);
    ``q_offset``, ``kv_len``: (B,) long (an int is taken for every row).
    Returns (B, Hq, Tq, D) in the dtype of ``q``."""
    _check_qkv(q, k, v)
    batch = q.shape[0]
    q_offset = _as_batch_vector(q_offset, batch, q.device, "q_offset")
    kv_len = _as_batch_vector(kv_len, batch, q.device, "kv_len")
    impl = resolve_backend(backend, q.device, q.dtype, mask, k_len=k.shape[2])
    if k.shape[2] == 0:  # no keys at all: every query sees nothing
        return torch.zeros_like(q)
    return impl.attend(q, k, v, mask=mask, q_offset=q_offset, kv_len=kv_len, scale=scale)


@dataclass(frozen=True)
class AttentionPlan:
    """What every layer of one forward shares: the resolved backend and, when the backend
    can prepare one, its mask built once (a dense mask, a BlockMask, ...)."""

    backend: AttentionBackend
    mask: MaskSpec | None
    q_offset: Tensor
    kv_len: Tensor
    state: Any = None
    # keys at or past k_len are invisible to every row: attend_planned passes only the
    # first k_len keys of a longer cache buffer (an eager multi-token pass over the used
    # slots of a static cache, not all of them)
    k_len: int | None = None


def plan_attention(
    *,
    backend: str,
    mask: MaskSpec | None,
    q_offset: Tensor,
    kv_len: Tensor,
    q_len: int,
    k_len: int,
    device: torch.device,
    dtype: torch.dtype,
    keys_all_valid: bool = False,
) -> AttentionPlan:
    """Resolve the backend and prepare the mask once for all layers of a forward.

    Backends may implement ``prepare(mask=, q_offset=, kv_len=, q_len=, k_len=,
    keys_all_valid=)`` and ``attend_prepared(q, k, v, state, scale)``; others are called
    through ``attend`` per layer. Semantics are those of :func:`attend`.
    """
    impl = resolve_backend(backend, device, dtype, mask, k_len=k_len)
    prepare = getattr(impl, "prepare", None)
    state = None
    if prepare is not None and k_len > 0:
        state = prepare(
            mask=mask,
            q_offset=q_offset,
            kv_len=kv_len,
            q_len=q_len,
            k_len=k_len,
            keys_all_valid=keys_all_valid,
        )
    return AttentionPlan(impl, mask, q_offset, kv_len, state, k_len)


def attend_planned(
    q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan, scale: float | None = None
) -> Tensor:
    """:func:`attend` with a plan from :func:`plan_attention` (no per-layer checks).
    ``k``/``v`` may be longer than the plan's ``k_len`` (a cache buffer): the keys past it
    are invisible to every row and are not passed on."""
    if plan.k_len is not None and k.shape[2] > plan.k_len:
        k, v = k[:, :, : plan.k_len], v[:, :, : plan.k_len]
    if plan.state is not None:
        out: Tensor = plan.backend.attend_prepared(q, k, v, plan.state, scale)  # type: ignore[attr-defined]
        return out
    if k.shape[2] == 0:
        return torch.zeros_like(q)
    return plan.backend.attend(
        q, k, v, mask=plan.mask, q_offset=plan.q_offset, kv_len=plan.kv_len, scale=scale
    )


__all__ = [
    "AttentionBackend",
    "AttentionPlan",
    "DenseVisibility",
    "MathBackend",
    "SdpaBackend",
    "attend",
    "attend_planned",
    "dense_visibility",
    "is_plain_causal",
    "plan_attention",
    "rescue_empty_rows",
    "resolve_backend",
    "visible_keys",
    "zero_empty_rows",
]
