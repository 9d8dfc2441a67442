"""Weight-only int8 quantisation for decoding: ``ar.quantize(model, "int8")``.

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
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import ConfigError

__all__ = ["Int8Linear", "quantize", "quantize_weight_int8"]

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
    linears = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    if not linears:
        raise ConfigError(
            f"quantize: {type(model).__name__} has no nn.Linear to quantise (already quantised?)"
        )
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
