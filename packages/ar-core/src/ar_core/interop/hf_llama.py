"""Convert ar's :class:`~ar_core.model.Transformer` to and from Hugging Face ``LlamaForCausalLM``.

Both use the Llama architecture (Touvron et al. 2023, arXiv:2302.13971) and RoPE in the same
half-split (``rotate_half``) layout, so weights map by name, with no q/k permutation (Meta's
original checkpoints use the interleaved layout; HF's converter permutes those, ours never
needs to). ar fuses two groups of projections that HF keeps apart: ``attn.wqkv`` holds the
rows of ``q_proj``, ``k_proj``, ``v_proj`` (in that order) and ``ffn.w13`` those of
``gate_proj`` then ``up_proj``; the converter splits and concatenates them (both ways).

``transformers`` is imported inside the functions: ``pip install 'ar-core[hf]'``.

    hf_model = to_hf(model)              # LlamaForCausalLM with the same weights
    model = from_hf(hf_model)            # and back
    sd = state_dict_to_hf(model.state_dict(), model.cfg)   # plain dicts, no transformers needed
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ar_core.errors import ConfigError
from ar_core.model import Transformer, TransformerConfig, fuse_legacy_state

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "config_from_hf",
    "config_to_hf",
    "from_hf",
    "state_dict_from_hf",
    "state_dict_to_hf",
    "to_hf",
]

# ar name (per layer: "layers.{i}." prefix) -> HF name ("model.layers.{i}." prefix)
_LAYER_NAMES: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
# ar's fused weights -> the HF weights whose rows they stack, in order
_FUSED_NAMES: dict[str, tuple[str, ...]] = {
    "attn.wqkv.weight": (
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
    ),
    "ffn.w13.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


def _split_rows(cfg: TransformerConfig) -> dict[str, list[int]]:
    """Row counts of each HF part of a fused ar weight."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return {"attn.wqkv.weight": [q, kv, kv], "ffn.w13.weight": [cfg.hidden_dim] * 2}


_TOP_NAMES: dict[str, str] = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "converting to/from Hugging Face Llama needs transformers: pip install 'ar-core[hf]'"
        ) from exc
    return transformers


def _name_map(n_layers: int) -> dict[str, str]:
    out = dict(_TOP_NAMES)
    for i in range(n_layers):
        for ours, theirs in _LAYER_NAMES.items():
            out[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return out


def config_to_hf(cfg: TransformerConfig) -> LlamaConfig:
    """The ``LlamaConfig`` of an ar config."""
    transformers = _require_transformers()
    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        dtype=cfg.dtype,
    )


def _rope_theta(hf: Any) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    scaling = getattr(hf, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise ConfigError(
            f"the HF config uses RoPE scaling {rope_type!r}; ar's Transformer implements "
            f"plain RoPE only (rope_type 'default')"
        )
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None))
    return float(theta) if theta is not None else 10000.0


def config_from_hf(hf: LlamaConfig, **overrides: Any) -> TransformerConfig:
    """An ar config equivalent to a ``LlamaConfig`` (errors on features ar lacks)."""
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ConfigError("the HF config has attention/MLP biases; ar's Transformer has none")
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise ConfigError(f"the HF config uses hidden_act={hf.hidden_act!r}; ar uses SwiGLU (silu)")
    head_dim = getattr(hf, "head_dim", None)
    if head_dim is not None and head_dim * hf.num_attention_heads != hf.hidden_size:
        raise ConfigError(
            f"the HF config has head_dim={head_dim} but hidden_size / num_attention_heads = "
            f"{hf.hidden_size // hf.num_attention_heads}; ar needs them equal"
        )
    dtype = getattr(hf, "dtype", None) or getattr(hf, "torch_dtype", None) or "float32"
    dtype = str(dtype).removeprefix("torch.")
    fields: dict[str, Any] = dict(
        vocab_size=hf.vocab_size,
        dim=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        n_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        max_seq_len=hf.max_position_embeddings,
        rope_theta=_rope_theta(hf),
        norm_eps=hf.rms_norm_eps,
        ffn_hidden=hf.intermediate_size,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32",
    )
    return TransformerConfig(**{**fields, **overrides})


def state_dict_to_hf(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Rename an ar state dict to HF Llama names; fused weights are split into row views
    (tensors shared, not copied). Pre-fusion ar state dicts (``wq``/``wk``/``wv``,
    ``w1``/``w3``) are accepted too."""
    state = fuse_legacy_state(state)
    names = _name_map(cfg.n_layers)
    out = {names[k]: v for k, v in state.items() if k in names}
    rows = _split_rows(cfg)
    missing = [k for k in names if k not in state]
    for i in range(cfg.n_layers):
        for ours, parts in _FUSED_NAMES.items():
            key = f"layers.{i}.{ours}"
            if key not in state:
                missing.append(key)
                continue
            if state[key].shape[0] != sum(rows[ours]):
                raise ConfigError(
                    f"{key} has {state[key].shape[0]} rows but the config needs "
                    f"{sum(rows[ours])} ({' + '.join(map(str, rows[ours]))})"
                )
            for theirs, piece in zip(parts, state[key].split(rows[ours]), strict=True):
                out[f"model.layers.{i}.{theirs}"] = piece
    if cfg.tie_embeddings and "output.weight" in missing:
        missing.remove("output.weight")
        out["lm_head.weight"] = state["tok_embeddings.weight"]
    if missing:
        raise ConfigError(f"the ar state dict lacks {', '.join(missing[:5])}")
    return out


def state_dict_from_hf(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Rename a HF Llama state dict to ar names, concatenating q/k/v into ``wqkv`` and
    gate/up into ``w13`` (new tensors); rotary buffers are skipped."""
    names = {theirs: ours for ours, theirs in _name_map(cfg.n_layers).items()}
    out: dict[str, Tensor | None] = {names[k]: v for k, v in state.items() if k in names}
    missing_parts: list[str] = []
    for i in range(cfg.n_layers):
        for ours, parts in _FUSED_NAMES.items():
            keys = [f"model.layers.{i}.{theirs}" for theirs in parts]
            absent = [k for k in keys if k not in state]
            if absent:
                missing_parts.extend(absent)
                continue
            out[f"layers.{i}.{ours}"] = torch.cat([state[k] for k in keys], dim=0)
    if missing_parts:
        raise ConfigError(f"the HF state dict lacks {', '.join(missing_parts[:5])}")
    if cfg.tie_embeddings or "output.weight" not in out:
        out.setdefault("output.weight", out.get("tok_embeddings.weight"))  # type: ignore[arg-type]
    missing = [ours for ours in names.values() if out.get(ours) is None]
    if missing:
        raise ConfigError(f"the HF state dict lacks weights for {', '.join(missing[:5])}")
    return {k: v for k, v in out.items() if v is not None}


def to_hf(model: Transformer) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` with ``model``'s weights (copied), in eval mode."""
    transformers = _require_transformers()
    hf = transformers.LlamaForCausalLM(config_to_hf(model.cfg)).to(model.dtype)
    state = state_dict_to_hf(model.state_dict(), model.cfg)
    with torch.no_grad():
        result = hf.load_state_dict(state, strict=False)
    unexpected_missing = [k for k in result.missing_keys if "rotary" not in k]
    if unexpected_missing or result.unexpected_keys:
        raise ConfigError(
            f"HF conversion mismatch: missing {unexpected_missing}, unexpected "
            f"{result.unexpected_keys}"
        )
    return hf.to(model.device).eval()


def from_hf(hf_model: LlamaForCausalLM, **overrides: Any) -> Transformer:
    """An ar Transformer with the weights (copied) of a ``LlamaForCausalLM``."""
    cfg = config_from_hf(hf_model.config, **overrides)
    model = Transformer(cfg)
    state = state_dict_from_hf(hf_model.state_dict(), cfg)
    if cfg.tie_embeddings:
        state.pop("output.weight", None)
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (cfg.tie_embeddings and k == "output.weight")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"HF conversion mismatch: missing {missing}, unexpected {result.unexpected_keys}"
        )
    device = next(hf_model.parameters()).device
    return model.to(device).eval()
