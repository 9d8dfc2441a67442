"""Gated LoRA: a low-rank update that is active only on the tokens a gate selects.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021, arXiv:2106.09685);
the gate is Samragh et al.'s ("Your LLM Knows the Future", 2025): ``y = W x + g * B A x``
with ``g = 1`` only on mask tokens, so every other token's output is exactly the frozen
base's (:mod:`ar_decoding.mtp`).

:func:`add_lora` replaces the chosen ``nn.Linear`` modules of an ar-core ``Transformer``'s
blocks (``DEFAULT_TARGETS``), or of a transformers decoder (``HF_TARGETS``; GPT-2's
``Conv1D`` too), in place with :class:`LoRALinear`. With a :class:`Gate`, the update is applied with
``torch.where(gate, W x + B A x, W x)``: ungated tokens get ``W x`` itself, bit for bit,
whatever A and B hold (no ``+ 0 * ...`` rounding). A gate given as a suffix
(``Gate.start``: MTP's mask tokens come after the real ones) computes the update on those
tokens only; at inference they go through the merged weight ``W + scale B A`` (one
matmul, cached per adapter version) and the tokens before them through ``W`` itself.
Without a gate (plain LoRA) every token gets the update. B starts at zero, so a fresh
adapter changes nothing.

Notation: r rank, d_in/d_out the layer's sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import ConfigError

__all__ = ["DEFAULT_TARGETS", "HF_TARGETS", "Gate", "LoRALinear", "add_lora", "lora_parameters"]

DEFAULT_TARGETS = ("wqkv", "wo", "w13", "w2")


class Gate:
    """The tokens the adapters act on while a gated forward runs: ``value`` (B, T, 1) bool,
    or ``start`` (an int: the tokens at sequence index >= ``start``, a contiguous suffix,
    which is cheaper: the update is computed on those tokens only). Both None: no token,
    the base model exactly."""

    def __init__(self) -> None:
        self.value: Tensor | None = None
        self.start: int | None = None


# the projections of common transformers families: Llama/Mistral/Qwen (q/k/v/o, gate/up/
# down), GPT-2 (Conv1D c_attn, c_proj, c_fc), GPT-NeoX/Bloom/Falcon (query_key_value, dense),
# OPT (fc1, fc2, out_proj)
HF_TARGETS = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    "c_attn", "c_proj", "c_fc", "query_key_value", "dense", "dense_h_to_4h",
    "dense_4h_to_h", "fc1", "fc2", "out_proj",
)  # fmt: skip


def _sizes(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2's linear,
    ``y = x W + b`` with W (d_in, d_out)); None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(w, Tensor) and w.ndim == 2:
        return int(w.shape[0]), int(w.shape[1])
    return None


def _fused_rows(parent: nn.Module, name: str) -> list[int] | None:
    """Row counts of the projections fused in ar-core's ``wqkv`` (q, k, v) and ``w13``
    (gate, up); None for any other linear."""
    q, kv = getattr(parent, "q_size", None), getattr(parent, "kv_size", None)
    if name == "wqkv" and isinstance(q, int) and isinstance(kv, int):
        return [q, kv, kv]
    hidden = getattr(parent, "hidden_dim", None)
    if name == "w13" and isinstance(hidden, int):
        return [hidden, hidden]
    return None


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(x))``, on the tokens of ``gate`` (all tokens when
    ``gate`` is None). ``parts`` (row counts of a fused linear such as ar-core's ``wqkv``)
    gives each part its own rank-``r`` adapter (A stacks the parts' A, B is block
    diagonal), the same as LoRA on the separate projections."""

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        gate: Gate | None,
        parts: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        sizes = _sizes(base)
        if sizes is None:
            raise ConfigError(
                f"LoRA wraps an nn.Linear or a transformers Conv1D, got {type(base).__name__}"
            )
        d_in, d_out = sizes
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(d_in, d_out):
            raise ConfigError(
                f"LoRA rank must be an int in [1, {min(d_in, d_out)}] for a {d_in} -> {d_out} "
                f"layer, got {rank!r}; a rank above the layer's smaller side adds nothing"
            )
        self.base, self.rank, self.scale, self.gate = base, rank, alpha / rank, gate
        w = base.weight
        assert isinstance(w, Tensor)
        self.parts = None if parts is None else [int(p) for p in parts]
        if self.parts is not None and sum(self.parts) != d_out:
            raise ConfigError(f"LoRA parts {self.parts} do not sum to the layer's {d_out} rows")
        n_parts = 1 if self.parts is None else len(self.parts)
        a = torch.empty(n_parts * rank, d_in, device=w.device, dtype=w.dtype)
        for block in a.split(rank):  # each part's A initialised as a separate adapter's
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.lora_a = nn.Parameter(a)
        self.lora_b = nn.Parameter(torch.zeros(d_out, rank, device=w.device, dtype=w.dtype))

    def delta(self, x: Tensor) -> Tensor:
        h = x @ self.lora_a.T  # (..., parts * r)
        if self.parts is None:
            return h @ self.lora_b.T * self.scale
        if not torch.is_grad_enabled():  # inference: one matmul with the block-diagonal B
            return h @ self._block_b().T
        pieces = zip(h.split(self.rank, dim=-1), self.lora_b.split(self.parts), strict=True)
        return torch.cat([hi @ bi.T for hi, bi in pieces], dim=-1) * self.scale

    def _block_b(self) -> Tensor:
        """``scale`` times the block-diagonal (d_out, parts * r) B of a fused linear, built
        once per value of ``lora_b`` (rebuilt after an update: keyed on its version)."""
        key = (self.lora_b._version, self.lora_b.data_ptr(), self.scale)
        cached = getattr(self, "_block_cache", None)
        if cached is None or cached[0] != key:
            assert self.parts is not None
            b = torch.block_diag(*self.lora_b.detach().split(self.parts)) * self.scale
            cached = (key, b)
            self._block_cache = cached
        return cached[1]

    def _merged(self) -> Tensor:
        """``W + scale * B A`` (d_out, d_in) of an ``nn.Linear`` base, built once per value of
        the adapters (keyed on their versions)."""
        assert isinstance(self.base, nn.Linear)
        w = self.base.weight
        key = (self.lora_a._version, self.lora_b._version, w._version, w.data_ptr(), self.scale)
        cached = getattr(self, "_merged_cache", None)
        if cached is None or cached[0] != key:
            a = self.lora_a.detach()
            if self.parts is None:
                b = self.lora_b.detach() * self.scale
            else:
                b = torch.block_diag(*self.lora_b.detach().split(self.parts)) * self.scale
            cached = (key, w.detach() + b @ a)
            self._merged_cache = cached
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        start = None if self.gate is None else self.gate.start
        if start is not None and isinstance(self.base, nn.Linear) and not torch.is_grad_enabled():
            # inference on a suffix: the suffix through the merged weight W + scale B A (one
            # matmul), the tokens before it through the base's own linear
            head = self.base(x[..., :start, :])
            tail = F.linear(x[..., start:, :], self._merged(), self.base.bias)
            return torch.cat([head, tail], -2)
        y = self.base(x)
        if self.gate is None:  # plain LoRA: every token
            return y + self.delta(x)
        s = self.gate.start
        if s is not None:  # a suffix of the sequence: the update on those tokens only
            return torch.cat([y[..., :s, :], y[..., s:, :] + self.delta(x[..., s:, :])], -2)
        g = self.gate.value
        if g is None:
            return y
        return torch.where(g, y + self.delta(x), y)


def add_lora(
    model: nn.Module,
    rank: int,
    *,
    alpha: float | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    gated: bool = True,
    blocks: Iterable[int] | None = None,
) -> Gate | None:
    """Wrap the linears named ``targets`` (``wqkv wo w13 w2`` of ar-core's blocks) of
    every block of ``model.layers`` (or, for a model without ``layers``, every such module
    under ``model``: e.g. a transformers decoder with ``targets=HF_TARGETS``; ``nn.Linear``
    and transformers' ``Conv1D``) in :class:`LoRALinear` of ``rank`` (in place). Returns
    the shared :class:`Gate` (``gated=True``) or None (plain LoRA). ``alpha`` defaults to
    ``rank`` (scale 1). ``blocks``: the indices of ``model.layers`` to adapt (default:
    all)."""
    layers = getattr(model, "layers", None)
    chosen = list(layers) if isinstance(layers, nn.ModuleList) else [model]
    if blocks is not None:
        index = list(blocks)
        if not isinstance(layers, nn.ModuleList):
            raise ConfigError(
                f"add_lora: blocks= picks from model.layers, and {type(model).__name__} has "
                f"no nn.ModuleList named layers"
            )
        bad = [
            i
            for i in index
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(layers)
        ]
        if bad or not index:
            raise ConfigError(
                f"add_lora: blocks must be indices in [0, {len(layers) - 1}] of the model's "
                f"{len(layers)} layers (at least one), got {index}"
            )
        chosen = [layers[i] for i in sorted(set(index))]
    gate = Gate() if gated else None
    found = 0
    for block in chosen:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if name in targets and _sizes(child) is not None:
                    parts = _fused_rows(parent, name)
                    setattr(parent, name, LoRALinear(child, rank, alpha or rank, gate, parts))
                    found += 1
    if not found:
        raise ConfigError(
            f"add_lora: no nn.Linear (or transformers Conv1D) named {list(targets)} in "
            f"{type(model).__name__}; pass targets= the names of its projections (ar-core: "
            f"{list(DEFAULT_TARGETS)}, transformers models: {list(HF_TARGETS)})"
        )
    return gate


def lora_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The adapters' A and B matrices."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            yield module.lora_a
            yield module.lora_b
