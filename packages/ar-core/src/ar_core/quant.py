"""Weight layouts for decoding: ``ar.quantize(model, "int8")`` and ``ar.prepack(model)``.

Batch-1 decoding reads every weight once per token, so its speed is set by the bytes of
the weights (gpt-fast, PyTorch blog "Accelerating Generative AI with PyTorch II: GPT,
Fast", 2023). Storing each linear's weight as int8 with one float scale per output channel
(symmetric absmax, as in LLM.int8's vector-wise quantisation without the outlier split:
Dettmers et al. 2022, arXiv:2208.07339) reads a quarter of float32's bytes.

Every ``nn.Linear`` of the model becomes an :class:`Int8Linear` (in place): the fused
``wqkv``/``w13``, ``wo``, ``w2`` and the output head; the embedding table stays (a decode
step reads one row of it). The matmul is ``torch._weight_int8pack_mm`` (PyTorch's CPU/CUDA
weight-only int8 kernel) with the activations in bfloat16, which it needs to be fast on
the CPU (with float32 activations it measured ~8x slower than the float32 matmul); where
the kernel is missing, a dequantise-then-matmul in the activations' dtype. The output is
cast back to the activations' dtype.

Error: per-channel absmax rounding changes each weight by at most scale/2 (scale = the
row's max |w| / 127), plus the bf16 rounding of the activations. The logit error and the
held-out perplexity change are measured by ``ar bench decode`` (docs/benchmarks.md) and
bounded in ``tests/test_quantize.py``.

``ar.prepack(model)`` keeps the float weights but lays each linear out twice for the CPU,
once per kind of decode pass (:class:`PackedLinear`): measured on this project's 2-core
AMD EPYC (1 thread, a 3072 x 768 float32 weight, 40 of them so none stays in cache):

- one token (batch-1 greedy): ``F.linear`` runs MKL's GEMV over the (out, in) weight at
  ~13 GB/s; ``x @ w_t`` over the transposed, (in, out)-contiguous copy runs at the plain
  read speed (~19 GB/s): 742 -> 470 us;
- 2..k tokens (a speculative verify over ``[last, d_0 .. d_{k-1}]``, a Jacobi window, an
  MTP block): MKL's GEMM re-packs the whole weight on every call, so 5 tokens cost 1.7x
  one token (1246 us); oneDNN's blocked weight, packed once
  (``torch.ops.mkldnn._reorder_linear_weight``), streams it once instead: 516 us, i.e. a
  5-token pass costs ~1.1 one-token passes - the regime speculative decoding needs.

Prefill-sized inputs also run faster on the blocked weight (160 x 768: 21.4 -> 11.6 ms).
Results equal ``F.linear``'s up to float rounding (other accumulation orders: not
bit-identical); ``tests/test_quantize.py`` bounds the difference and checks greedy output.
Under ``torch.compile`` one-row inputs use ``x @ w_t``; multi-row inputs call the blocked
weight through the opaque custom op ``ar_core::packed_linear`` (tracing cannot take the
oneDNN tensor itself, so the op finds it by the module's handle), and inductor fuses
everything between the linears: a compiled 5-token verification of a 16 x 768 model
measured 36.9 ms against 41.0 ms eager and 32.2 ms for a compiled one-token step.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import ConfigError

__all__ = ["Int8Linear", "PackedLinear", "prepack", "quantize", "quantize_weight_int8"]

QUANT_MODES = ("int8",)


def quantize_weight_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8: ``(q (out, in) int8, scale (out,) float32)``
    with ``weight ~= q * scale[:, None]``; an all-zero row gets scale 1 (q = 0)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)  # (out,)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _has_int8pack_kernel(device: torch.device) -> bool:
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        x = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
        w = torch.zeros(32, 32, dtype=torch.int8, device=device)
        torch._weight_int8pack_mm(x, w, torch.ones(32, dtype=torch.bfloat16, device=device))
    except (RuntimeError, NotImplementedError):
        return False
    return True


class Int8Linear(nn.Module):
    """A bias-free linear with an int8 weight (out, in) and per-channel scales (out,).

    ``kernel="int8pack"``: ``torch._weight_int8pack_mm`` on bfloat16 activations;
    ``"dequant"``: ``F.linear(x, q.to(x.dtype)) * scale`` (exact in the activations'
    dtype, slower on the CPU)."""

    weight: Tensor
    scale: Tensor
    scale_bf16: Tensor
    kernel: Literal["int8pack", "dequant"]

    def __init__(self, linear: nn.Linear, kernel: Literal["int8pack", "dequant"]) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ConfigError("quantize: ar's int8 linear has no bias; this linear has one")
        self.in_features: int = linear.in_features
        self.out_features: int = linear.out_features
        self.kernel = kernel
        q, scale = quantize_weight_int8(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel == "dequant":
            return F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        shape = x.shape
        y = torch._weight_int8pack_mm(
            x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.scale_bf16
        )
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> Tensor:
        """The float32 weight the int8 one stands for: (out, in)."""
        return self.weight.float() * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


def _linears(model: nn.Module, caller: str, why: str) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every plain ``nn.Linear`` of ``model`` as (parent, attribute name, linear); a
    ``ConfigError`` naming ``caller`` when there is none."""
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    if not found:
        raise ConfigError(f"{caller}: {type(model).__name__} has no nn.Linear {why}")
    return found


def quantize(
    model: nn.Module,
    mode: str = "int8",
    *,
    kernel: Literal["auto", "int8pack", "dequant"] = "auto",
) -> nn.Module:
    """Quantise ``model``'s ``nn.Linear`` weights in place (weight-only); returns it.

    ``mode``: ``"int8"`` (per-channel symmetric). ``kernel``: ``"auto"`` picks
    ``torch._weight_int8pack_mm`` where it runs on the model's device, else the
    dequantise-matmul. The model is for inference afterwards (int8 buffers, no gradients);
    keep the float checkpoint and quantise after loading (int8 weights do not load into a
    float Transformer)."""
    if mode not in QUANT_MODES:
        raise ConfigError(
            f"quantize: unknown mode {mode!r}; available: {', '.join(QUANT_MODES)} (int4 "
            f"groupwise is not implemented: see docs/packages/ar-core.md)"
        )
    if kernel not in ("auto", "int8pack", "dequant"):
        raise ConfigError(
            f"quantize: kernel must be 'auto', 'int8pack' or 'dequant', got {kernel!r}"
        )
    linears = _linears(model, "quantize", "to quantise (already quantised?)")
    device = linears[0][2].weight.device
    chosen: Literal["int8pack", "dequant"]
    if kernel == "auto":
        chosen = "int8pack" if _has_int8pack_kernel(device) else "dequant"
    else:
        chosen = kernel
    with torch.no_grad():
        for parent, name, child in linears:
            setattr(parent, name, Int8Linear(child, chosen).to(device))
    model.eval()
    return model


def _onednn_ok(weight: Tensor) -> bool:
    """Whether oneDNN's blocked linear runs here for ``weight``'s device and dtype."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return False
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    try:
        w = torch.zeros(8, 16, dtype=weight.dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 8)
        torch.ops.mkldnn._linear_pointwise(
            torch.zeros(2, 16, dtype=weight.dtype), packed, None, "none", [], ""
        )
    except (RuntimeError, NotImplementedError, AttributeError):
        return False
    return True


# the row count the blocked layout is tuned for (a verify pass of a few draft tokens)
PACK_ROWS_HINT = 8
# fewer rows are padded with zero rows to this many: measured (3072 x 768, 1 thread) 2 rows
# 802 us, 3 rows 730 us, but 4 rows 546 us and 5 rows 516 us
PACK_MIN_ROWS = 4


# handle -> PackedLinear, for the custom op a compiled graph calls (weak: a dropped model
# leaves no weights behind)
_PACKED: weakref.WeakValueDictionary[int, PackedLinear] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()


@torch.library.custom_op("ar_core::packed_linear", mutates_args=())
def packed_linear(x: Tensor, handle: int, out_features: int) -> Tensor:
    """``x`` (rows, in) times the blocked weight of the :class:`PackedLinear` with this
    handle: (rows, out). An opaque call for compiled graphs."""
    return _PACKED[handle]._blocked_mm(x).clone()


@packed_linear.register_fake
def _packed_linear_fake(x: Tensor, handle: int, out_features: int) -> Tensor:
    return x.new_empty(x.shape[0], out_features)


class PackedLinear(nn.Module):
    """A linear for CPU decoding with two layouts of one float weight (``prepack``):
    ``weight_t`` (in, out) contiguous for one-row inputs and a oneDNN blocked copy for
    more rows (``blocked``; None where oneDNN is missing: ``x @ weight_t`` then).

    Inference only: no gradients, and ``state_dict`` holds ``weight_t`` (save the model
    before prepacking it)."""

    weight_t: Tensor
    bias: Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features: int = linear.in_features
        self.out_features: int = linear.out_features
        w = linear.weight.detach()
        self.register_buffer("weight_t", w.t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.blocked: Tensor | None = (
            torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), PACK_ROWS_HINT)
            if _onednn_ok(w)
            else None
        )
        self._register()

    def _register(self) -> None:
        """A fresh handle for the compiled graphs' custom op (copies get their own)."""
        self.handle = next(_HANDLES)
        _PACKED[self.handle] = self

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedLinear:
        """A copy packed afresh from ``weight_t`` (the opaque oneDNN tensor cannot be
        copied), with its own handle."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight = nn.Parameter(self.weight_t.t().clone(), requires_grad=False)
            if self.bias is not None:
                linear.bias = nn.Parameter(self.bias.clone(), requires_grad=False)
        out = PackedLinear(linear)
        out.train(self.training)
        memo[id(self)] = out
        return out

    def _blocked_mm(self, flat: Tensor) -> Tensor:
        """(rows, in) @ the blocked weight (+ bias): (rows, out)."""
        rows = flat.shape[0]
        if rows < PACK_MIN_ROWS:  # oneDNN's 2-3 row kernel is slower than its 4-row one
            flat = torch.cat([flat, flat.new_zeros(PACK_MIN_ROWS - rows, self.in_features)])
        y = torch.ops.mkldnn._linear_pointwise(flat, self.blocked, self.bias, "none", [], "")
        return y[:rows]

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if rows > 1 and self.blocked is not None:
            flat = x.reshape(rows, self.in_features)
            if torch.compiler.is_compiling():  # the opaque op: tracing cannot take `blocked`
                y = packed_linear(flat, self.handle, self.out_features)
            else:
                y = self._blocked_mm(flat)
            return y.reshape(*x.shape[:-1], self.out_features)
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to()/.cuda()/.half() would leave the blocked oneDNN copy behind: refuse
        if self.blocked is not None:
            probe = fn(torch.zeros((), dtype=self.weight_t.dtype))
            if probe.dtype != self.weight_t.dtype or probe.device.type != "cpu":
                raise ConfigError(
                    "a prepacked model cannot change dtype or device: prepack after .to(...)"
                )
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        layout = "oneDNN blocked + transposed" if self.blocked is not None else "transposed"
        return f"in={self.in_features}, out={self.out_features}, layout={layout}"


def prepack(model: nn.Module) -> nn.Module:
    """Lay every ``nn.Linear`` of ``model`` out for CPU decoding, in place; returns it.

    Each becomes a :class:`PackedLinear` (the module docstring has the measurements):
    one-token steps read a transposed copy, multi-token passes (verify, Jacobi/lookahead
    windows, MTP blocks, prefill) a oneDNN blocked copy. Outputs equal the float model's
    up to rounding. Inference only; apply after loading and after ``.to(dtype)``. Float32
    or bfloat16 weights on the CPU (elsewhere: a ``ConfigError``; on a GPU the default
    kernels need no repacking)."""
    linears = _linears(model, "prepack", "to lay out (already prepacked or quantised?)")
    for _, name, child in linears:
        w = child.weight
        if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16):
            raise ConfigError(
                f"prepack: {name} is {w.dtype} on {w.device}; prepack is for float32 or "
                f"bfloat16 weights on the CPU (on a GPU the default kernels need no repacking)"
            )
    with torch.no_grad():
        for parent, name, child in linears:
            setattr(parent, name, PackedLinear(child))
    model.eval()
    return model
