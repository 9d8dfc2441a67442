"""The reference decoder-only Transformer of ar (Llama-style).

Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023,
arXiv:2302.13971): pre-norm blocks with RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467),
rotary position embeddings (Su et al., "RoFormer", 2021, arXiv:2104.09864), SwiGLU
feed-forward (Shazeer, "GLU Variants Improve Transformer", 2020, arXiv:2002.05202) and
grouped-query attention (Ainslie et al., "GQA", 2023, arXiv:2305.13245).

RoPE uses the *half-split* layout of Hugging Face's Llama (``rotate_half``: dimension i
pairs with i + D/2), so weights convert to and from ``LlamaForCausalLM`` without
permuting q/k (see :mod:`ar_core.interop.hf_llama`).

Attention goes through :func:`ar_core.attention.plan_attention` (once per forward) and
:func:`~ar_core.attention.attend_planned` (per layer) with a :class:`MaskSpec`; the
backend is a name (``attention_backend``) resolved there.

Notation: B batch, T new positions, S cache length, H query heads, Hkv key/value heads,
D head dim, C model dim (``dim``), V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor, nn

from ar_core import masks
from ar_core.attention import AttentionPlan, attend_planned, plan_attention
from ar_core.cache import StaticKVCache
from ar_core.errors import ConfigError, InputError, validation_message

__all__ = [
    "PRESETS",
    "ModelOutput",
    "Transformer",
    "TransformerConfig",
    "build_transformer",
    "llama_ffn_hidden",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def llama_ffn_hidden(dim: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: 2/3 of 4*dim (same parameter count as a 4*dim MLP), rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class TransformerConfig(BaseModel):
    """Flat configuration of :class:`Transformer`; every field is a constructor argument.
    A bad value (or combination: heads that do not divide dim) is a one-line ConfigError."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "TransformerConfig")) from None

    vocab_size: int = Field(gt=0, description="number of token ids")
    dim: int = Field(gt=0, description="model width C")
    n_layers: int = Field(gt=0, description="number of Transformer blocks")
    n_heads: int = Field(gt=0, description="query heads; head_dim = dim // n_heads")
    # None = n_heads (plain multi-head attention); fewer heads = GQA, a smaller KV cache
    n_kv_heads: int | None = Field(default=None, gt=0)
    # RoPE tables and the default cache size are allocated for this many positions
    max_seq_len: int = Field(default=2048, gt=0)
    # "auto" lets ar_core.attention pick the best backend for the device and mask
    attention_backend: str = "auto"
    # 10000 is the RoFormer/Llama-1/2 base; Llama-3 uses 500000 for long contexts
    rope_theta: float = Field(default=10000.0, gt=0)
    # 1e-5 matches Llama-2; HF's LlamaConfig default is 1e-6 (the converter copies it)
    norm_eps: float = Field(default=1e-5, gt=0)
    # None = Llama's rule, 2/3 * 4 * dim rounded up to a multiple of 256
    ffn_hidden: int | None = Field(default=None, gt=0)
    # False: Llama ties nothing; small models may save vocab_size * dim parameters
    tie_embeddings: bool = False
    # float32 is the safe default (CPU-runnable, exact tests); bfloat16 is opt-in speed
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.dim % self.n_heads:
            raise ValueError(
                f"dim={self.dim} is not divisible by n_heads={self.n_heads}; pick n_heads that "
                f"divides dim"
            )
        if (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"head_dim = dim / n_heads = {self.dim // self.n_heads} is odd; RoPE needs an "
                f"even head_dim"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                f"GQA needs n_kv_heads to divide n_heads"
            )
        if self.attention_backend != "auto" and not self.attention_backend:
            raise ValueError("attention_backend must be a backend name or 'auto'")
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def hidden_dim(self) -> int:
        return self.ffn_hidden if self.ffn_hidden is not None else llama_ffn_hidden(self.dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> TransformerConfig:
        """A named preset (``tiny``, ``small``, ``medium``), with fields overridden."""
        if name not in PRESETS:
            raise ConfigError(
                f"unknown TransformerConfig preset {name!r}; available: {', '.join(PRESETS)}"
            )
        return cls(**{**PRESETS[name], **overrides})


# Named presets: a plain table (gpt-fast's transformer_configs).
PRESETS: dict[str, dict[str, Any]] = {
    # tests and CPU demos: byte vocabulary, ~0.5M parameters
    "tiny": dict(vocab_size=256, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512),
    # small CPU training runs: ~30M parameters with a 32k vocabulary
    "small": dict(vocab_size=32000, dim=384, n_layers=6, n_heads=6, n_kv_heads=2, max_seq_len=1024),
    # benchmark size, ~100M parameters: memory-bound decode on any machine
    "medium": dict(
        vocab_size=32000, dim=768, n_layers=8, n_heads=12, n_kv_heads=4, max_seq_len=2048
    ),
}


@dataclass
class ModelOutput:
    """``logits`` (B, T, V) and ``hidden`` (B, T, C), the final-norm hidden states."""

    logits: Tensor
    hidden: Tensor


# -- building blocks --------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of RoPE angles in the half-split layout: two (S, D) float32 tables."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (S, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (S, D)
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (B, H, T, D) by the angles of its positions; cos/sin: (B, 1, T, D)."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, writing into a :class:`StaticKVCache`.

    The q, k and v projections are one fused linear ``wqkv`` (rows: H·D query, then Hkv·D
    key, then Hkv·D value), so a decode step reads them in one matmul (gpt-fast's layout).
    State dicts with the separate ``wq``/``wk``/``wv`` of earlier versions still load (a
    ``load_state_dict`` pre-hook concatenates them)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, layer_idx: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = dim // n_heads
        self.layer_idx = layer_idx
        self.q_size = n_heads * self.head_dim
        self.kv_size = n_kv_heads * self.head_dim
        self.wqkv = nn.Linear(dim, self.q_size + 2 * self.kv_size, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.register_load_state_dict_pre_hook(_fuse_legacy_hook)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        attn: AttentionPlan,
        cache: StaticKVCache | None,
    ) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.write(self.layer_idx, k, v)  # (B, Hkv, S, D)
        y = attend_planned(q, k, v, attn)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, C)
        return self.wo(y)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(gate x) * up x) (Shazeer 2020), with gate (Llama's ``w1``) and up
    (``w3``) fused into one linear ``w13`` (rows: gate, then up). Legacy ``w1``/``w3``
    state dicts still load (pre-hook)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.w13 = nn.Linear(dim, 2 * hidden_dim, bias=False)  # gate; up
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.register_load_state_dict_pre_hook(_fuse_legacy_hook)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


# legacy (pre-fusion) weight names -> the fused name, in row order
LEGACY_FUSED: dict[str, tuple[str, ...]] = {
    "wqkv": ("wq", "wk", "wv"),
    "w13": ("w1", "w3"),
}


def _legacy_groups(names: Any) -> Iterator[tuple[str, str, list[str]]]:
    """``(fused name, prefix, part names)`` for every complete pre-fusion group among
    ``names`` (``<prefix>wq/wk/wv.weight`` -> ``wqkv``, ``w1``/``w3`` -> ``w13``)."""
    ordered = list(names)
    present = set(ordered)
    for name in ordered:
        for fused, parts in LEGACY_FUSED.items():
            suffix = f"{parts[0]}.weight"
            if not ("." + name).endswith("." + suffix):
                continue
            prefix = name[: -len(suffix)]
            keys = [f"{prefix}{p}.weight" for p in parts]
            if all(k in present for k in keys):
                yield f"{prefix}{fused}.weight", prefix, keys


def fuse_legacy_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with every ``<prefix>wq/wk/wv.weight`` triple replaced by the fused
    ``<prefix>wqkv.weight`` and every ``w1``/``w3`` pair by ``w13`` (checkpoints written
    before the projections were fused); other entries pass through unchanged. A partial
    group (``wq`` without ``wk``) is left as it is, so the load reports the names."""
    out = dict(state)
    for fused, _, keys in _legacy_groups(state):
        if len({(out[k].shape[1:], out[k].dtype) for k in keys}) != 1:
            continue  # mismatched parts: the load names them
        out[fused] = torch.cat([out.pop(k) for k in keys], dim=0)
    return out


def fuse_legacy_header(
    header: dict[str, tuple[tuple[int, ...], str]],
) -> dict[str, tuple[tuple[int, ...], str]]:
    """:func:`fuse_legacy_state` on a safetensors header (name -> (shape, dtype)): the
    fused entries get the summed row count; parts of one group with different column
    counts or dtypes are left apart (the load then names them)."""
    out = dict(header)
    for fused, _, keys in _legacy_groups(header):
        shapes = [out[k][0] for k in keys]
        dtypes = {out[k][1] for k in keys}
        if len(dtypes) != 1 or len({s[1:] for s in shapes}) != 1 or len(shapes[0]) != 2:
            continue
        for k in keys:
            del out[k]
        rows = sum(s[0] for s in shapes)
        out[fused] = ((rows, *shapes[0][1:]), dtypes.pop())
    return out


_LEGACY_SUFFIXES = tuple(f".{p}.weight" for parts in LEGACY_FUSED.values() for p in parts)


def has_legacy_names(names: Any) -> bool:
    """Whether any name is a pre-fusion projection weight (``...attn.wq.weight`` etc.)."""
    return any(("." + str(n)).endswith(_LEGACY_SUFFIXES) for n in names)


def _fuse_legacy_hook(
    module: nn.Module,
    state_dict: dict[str, Tensor],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """``load_state_dict`` pre-hook: fuse this module's legacy projections in place."""
    own = {
        k: v
        for k, v in state_dict.items()
        if k.startswith(prefix) and k.count(".") == prefix.count(".") + 1
    }
    fused = fuse_legacy_state(own)
    if fused.keys() != own.keys():
        for k in own:
            del state_dict[k]
        state_dict.update(fused)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + ffn(norm(x))."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        hidden_dim: int,
        norm_eps: float,
        layer_idx: int,
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim, norm_eps)
        self.attn = Attention(dim, n_heads, n_kv_heads, layer_idx)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.ffn = FeedForward(dim, hidden_dim)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        attn: AttentionPlan,
        cache: StaticKVCache | None,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, attn, cache)
        return x + self.ffn(self.ffn_norm(x))


# -- the model --------------------------------------------------------------------------


class Transformer(nn.Module):
    """Llama-style decoder. ``Transformer(cfg)``; the config is flat and kept as ``cfg``
    (for ``save_pretrained``/``new_cache``); the blocks get plain constructor arguments."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, TransformerConfig):
            raise ConfigError(
                f"Transformer expects a TransformerConfig, got {type(cfg).__name__}; use "
                f"Transformer(TransformerConfig(...)) or build_transformer(**fields)"
            )
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.max_seq_len = cfg.max_seq_len
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.n_heads,
                cfg.kv_heads,
                cfg.hidden_dim,
                cfg.norm_eps,
                layer_idx=i,
            )
            for i in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.reset_parameters()
        self.to(cfg.torch_dtype)
        # RoPE tables are built in float32 and cast to the activations' dtype on use
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.rope_cos: Tensor
        self.rope_sin: Tensor
        self.register_buffer("rope_cos", cos, persistent=False)  # (S, D)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._causal = masks.causal()

    def reset_parameters(self) -> None:
        """GPT-2/Llama initialisation: N(0, 0.02) for linears and embeddings, ones for norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    # -- properties -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def new_cache(
        self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> StaticKVCache:
        """A KV cache for ``batch_size`` rows of up to ``max_len`` (default max_seq_len) positions."""
        max_len = self.max_seq_len if max_len is None else max_len
        if max_len > self.max_seq_len:
            raise InputError(
                f"new_cache: max_len={max_len} exceeds the model's max_seq_len="
                f"{self.max_seq_len}; use max_len <= {self.max_seq_len} or a config with a "
                f"larger max_seq_len"
            )
        return StaticKVCache.for_config(
            self.cfg,
            batch_size,
            max_len,
            dtype=self.dtype if dtype is None else dtype,
            device=self.device,
        )

    # -- forward ----------------------------------------------------------------------
    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: StaticKVCache | None = None,
        mask: masks.MaskSpec | None = None,
        commit: bool = True,
        query_embeds: Tensor | None = None,
    ) -> ModelOutput:
        """Logits for ``tokens`` (B, T).

        ``positions`` (B, T) or (T,): RoPE positions, default ``cache.lengths + arange(T)``
        (``arange(T)`` without a cache). ``mask`` default: causal. With a cache the new
        keys/values are written after each row's committed entries and attention runs over
        the cache; ``commit=False`` leaves them pending. ``query_embeds`` (B, T, C), when
        given, is used as the input embeddings instead of looking up ``tokens`` (continuous
        inputs, two-stream query embeddings); ``tokens`` still give the shape.
        """
        if not torch.compiler.is_compiling():  # static shapes under compile: checked by the caller
            self._check_inputs(tokens, positions, cache, mask, query_embeds)
        B, T = tokens.shape
        if cache is None:
            q_offset = torch.zeros(B, dtype=torch.long, device=tokens.device)
        else:
            q_offset = cache.lengths  # (B,), read before the commit below
        kv_len = q_offset + T  # (B,)
        if positions is None:
            positions = q_offset[:, None] + torch.arange(T, device=tokens.device)  # (B, T)
        elif positions.ndim == 1:
            positions = positions[None, :].expand(B, T)
        x = self.tok_embeddings(tokens) if query_embeds is None else query_embeds  # (B, T, C)
        cos = self.rope_cos[positions][:, None].to(x.dtype)  # (B, 1, T, D)
        sin = self.rope_sin[positions][:, None].to(x.dtype)
        mask = self._causal if mask is None else mask
        if T == 1 and mask.is_causal:
            # one query at cache index kv_len - 1 sees exactly the keys j < kv_len: the
            # causal mask adds nothing, and without it backends skip building a dense mask
            # (and compiled decode steps keep static shapes)
            mask = None
        k_len = T if cache is None else cache.max_len
        if cache is not None and T > 1 and not torch.compiler.is_compiling():
            # an eager multi-token pass (a prefill, a verification) attends over the used
            # slots only: no row holds more than the cache's host-side bound (an upper
            # bound, no sync). One-token steps keep the static shape of compiled decoding
            k_len = min(k_len, cache.max_length() + T)
        attn = plan_attention(  # the mask is built once here, not once per layer
            backend=self.cfg.attention_backend,
            mask=mask,
            q_offset=q_offset,
            kv_len=kv_len,
            q_len=T,
            k_len=k_len,
            device=x.device,
            dtype=x.dtype,
            keys_all_valid=cache is None,
        )
        for layer in self.layers:
            x = layer(x, cos, sin, attn, cache)
        if cache is not None and commit:
            cache.commit(T)
        hidden = self.norm(x)  # (B, T, C)
        return ModelOutput(logits=self.output(hidden), hidden=hidden)  # (B, T, V)

    def _check_inputs(
        self,
        tokens: Tensor,
        positions: Tensor | None,
        cache: StaticKVCache | None,
        mask: masks.MaskSpec | None,
        query_embeds: Tensor | None,
    ) -> None:
        """Every check runs before any compute; messages carry the offending numbers."""
        check_model_inputs(
            tokens,
            positions,
            cache,
            mask,
            vocab_size=self.vocab_size,
            max_seq_len=self.max_seq_len,
            check_ids=query_embeds is None,
        )
        B, T = tokens.shape
        if query_embeds is not None and query_embeds.shape != (B, T, self.cfg.dim):
            raise InputError(
                f"query_embeds must have shape (B, T, dim) = {(B, T, self.cfg.dim)}, got "
                f"{tuple(query_embeds.shape)}"
            )

    # -- persistence ------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into the folder ``path`` (atomically)."""
        from ar_core.checkpoint import save_model

        return save_model(self, path)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: torch.device | str | None = None
    ) -> Transformer:
        """Load a folder written by :meth:`save_pretrained` (validated before loading)."""
        from ar_core.checkpoint import load_model

        return load_model(path, device=device)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights counted once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel()
            if self.cfg.tie_embeddings:  # the tied table is the output head too
                n += self.tok_embeddings.weight.numel()
        return n


def build_transformer(**config: Any) -> Transformer:
    """Builder registered as model ``transformer``: ``build_transformer(vocab_size=..., ...)``;
    ``preset="tiny"`` starts from a named preset."""
    preset = config.pop("preset", None)
    cfg = (
        TransformerConfig.from_name(preset, **config)
        if preset is not None
        else TransformerConfig(**config)
    )
    return Transformer(cfg)


def check_model_inputs(
    tokens: Tensor,
    positions: Tensor | None,
    cache: StaticKVCache | None,
    mask: masks.MaskSpec | None,
    *,
    vocab_size: int,
    max_seq_len: int,
    check_ids: bool = True,
) -> None:
    """The input checks of the model protocol, shared by every model that follows it
    (``Transformer``, ar-text's Hugging Face adapter). Each runs before any compute and
    names the offending numbers: tokens (B, T) int64 in ``[0, vocab_size)``; positions
    (T,) or (B, T) int64 in ``[0, max_seq_len)``; a MaskSpec; a cache with B rows and room
    for T more entries within ``max_seq_len`` and its own ``max_len``."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InputError(
            f"tokens must be a (B, T) tensor of token ids, got shape {shape}; add a batch "
            f"dimension with tokens[None] for a single sequence"
        )
    if tokens.dtype != torch.long:
        raise InputError(
            f"tokens must be long (int64), got dtype {tokens.dtype}; use tokens.long()"
        )
    B, T = tokens.shape
    if B == 0 or T == 0:
        raise InputError(f"tokens must be non-empty, got shape {(B, T)}")
    if check_ids:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            b, t = (tokens == bad).nonzero()[0].tolist()
            raise InputError(
                f"token id {bad} at (row {b}, position {t}) is out of range: ids must be in "
                f"[0, {vocab_size}) for vocab_size={vocab_size}"
            )
    if mask is not None and not isinstance(mask, masks.MaskSpec):
        raise InputError(f"mask must be an ar_core.masks.MaskSpec, got {type(mask).__name__}")
    limit, past = max_seq_len, 0
    if cache is not None:
        if cache.batch_size != B:
            raise InputError(
                f"the cache holds {cache.batch_size} rows but tokens have batch size {B}; "
                f"create it with model.new_cache({B})"
            )
        past = cache.max_length()
        if past + T > cache.max_len:
            past = int(cache.lengths.max())  # the host bound may be stale after a crop
        limit = min(limit, cache.max_len)
    if past + T > limit:
        what = "max_seq_len" if limit == max_seq_len else "the cache's max_len"
        raise InputError(
            f"sequence too long: {past} cached + {T} new = {past + T} positions exceed "
            f"{what}={limit}; shorten the input or raise {what}"
        )
    if positions is not None:
        if positions.dtype != torch.long:
            raise InputError(
                f"positions must be long (int64), got dtype {positions.dtype}; use positions.long()"
            )
        if positions.shape not in ((T,), (B, T)):
            raise InputError(
                f"positions must have shape (T,) = ({T},) or (B, T) = {(B, T)}, got "
                f"{tuple(positions.shape)}"
            )
        lo, hi = int(positions.min()), int(positions.max())
        if lo < 0 or hi >= max_seq_len:
            raise InputError(
                f"position {lo if lo < 0 else hi} is out of range: positions must be in "
                f"[0, {max_seq_len}) for max_seq_len={max_seq_len}"
            )
