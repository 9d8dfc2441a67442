"""Fused projections (``wqkv``, ``w13``): the same function as separate q/k/v and gate/up
linears, old (pre-fusion) state dicts and checkpoint folders still load, and the HF
converter splits/concatenates them both ways."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ar_core.errors import CheckpointError
from ar_core.model import (
    Transformer,
    TransformerConfig,
    apply_rope,
    fuse_legacy_state,
    has_legacy_names,
)

torch.set_num_threads(1)


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, ffn_hidden=48
    )
    return Transformer(cfg).eval()


def _legacy_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict the model would have had before fusion (separate projections)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name.endswith("attn.wqkv.weight"):
            attn = model.layers[int(name.split(".")[1])].attn
            q, k, v = t.split([attn.q_size, attn.kv_size, attn.kv_size])
            prefix = name.removesuffix("wqkv.weight")
            out.update({f"{prefix}wq.weight": q, f"{prefix}wk.weight": k, f"{prefix}wv.weight": v})
        elif name.endswith("ffn.w13.weight"):
            gate, up = t.chunk(2)
            prefix = name.removesuffix("w13.weight")
            out.update({f"{prefix}w1.weight": gate, f"{prefix}w3.weight": up})
        else:
            out[name] = t
    return {k: v.clone() for k, v in out.items()}


def _unfused_forward(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """The pre-fusion block written out with separate q/k/v and gate/up matmuls."""
    legacy = _legacy_state(model)
    cfg = model.cfg
    H, Hkv, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    B, T = x.shape
    h = legacy["tok_embeddings.weight"][x]
    cos, sin = model.rope_cos[:T][None, None], model.rope_sin[:T][None, None]

    def norm(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps))

    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        a = norm(h, legacy[p + "attn_norm.weight"])
        q = F.linear(a, legacy[p + "attn.wq.weight"]).view(B, T, H, D).transpose(1, 2)
        k = F.linear(a, legacy[p + "attn.wk.weight"]).view(B, T, Hkv, D).transpose(1, 2)
        v = F.linear(a, legacy[p + "attn.wv.weight"]).view(B, T, Hkv, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + F.linear(y.transpose(1, 2).reshape(B, T, H * D), legacy[p + "attn.wo.weight"])
        f = norm(h, legacy[p + "ffn_norm.weight"])
        gate = F.linear(f, legacy[p + "ffn.w1.weight"])
        up = F.linear(f, legacy[p + "ffn.w3.weight"])
        h = h + F.linear(F.silu(gate) * up, legacy[p + "ffn.w2.weight"])
    return F.linear(norm(h, legacy["norm.weight"]), legacy["output.weight"])


def test_fused_model_computes_the_unfused_block() -> None:
    model = _model()
    x = torch.randint(0, 61, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(
            model(x).logits, _unfused_forward(model, x), atol=2e-5, rtol=1e-4
        )


def test_legacy_state_dict_loads_via_the_pre_hook() -> None:
    source, target = _model(0), _model(1)
    legacy = _legacy_state(source)
    assert has_legacy_names(legacy) and not has_legacy_names(source.state_dict())
    result = target.load_state_dict(legacy)  # strict: every name must be accounted for
    assert not result.missing_keys and not result.unexpected_keys
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randint(0, 61, (1, 9))
    with torch.no_grad():
        assert torch.equal(source(x).logits, target(x).logits)
    # the pre-hook is per module, so a wrapper's prefixes work too
    wrapper, other = torch.nn.ModuleDict({"lm": _model(0)}), torch.nn.ModuleDict({"lm": _model(2)})
    other.load_state_dict({f"lm.{k}": v for k, v in _legacy_state(wrapper["lm"]).items()})
    assert torch.equal(other["lm"].layers[1].ffn.w13.weight, wrapper["lm"].layers[1].ffn.w13.weight)


def test_fuse_legacy_state_leaves_incomplete_groups() -> None:
    legacy = _legacy_state(_model())
    del legacy["layers.0.attn.wv.weight"]
    fused = fuse_legacy_state(legacy)
    assert "layers.0.attn.wq.weight" in fused and "layers.0.attn.wqkv.weight" not in fused
    assert "layers.1.attn.wqkv.weight" in fused and "layers.0.ffn.w13.weight" in fused
    with pytest.raises(RuntimeError, match="wv.weight|wqkv.weight"):
        _model(1).load_state_dict(legacy)


def test_legacy_checkpoint_folder_loads(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path)) / "old"
    model = _model()
    model.save_pretrained(folder)
    file = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _legacy_state(model).items()}, str(file))
    assert has_legacy_names(load_file(str(file)))
    loaded = Transformer.from_pretrained(folder)
    x = torch.randint(0, 61, (1, 7))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    # a legacy file with a wrong shape is still refused by name
    bad = _legacy_state(model)
    bad["layers.0.attn.wk.weight"] = bad["layers.0.attn.wk.weight"][:-1].contiguous()
    save_file({k: v.contiguous() for k, v in bad.items()}, str(file))
    with pytest.raises(CheckpointError, match=r"layers\.0\.attn\.wqkv\.weight has shape"):
        Transformer.from_pretrained(folder)
    json.loads((folder / "config.json").read_text())  # the folder's config was untouched


def test_hf_converter_splits_and_fuses() -> None:
    pytest.importorskip("transformers")
    from ar_core.interop.hf_llama import from_hf, state_dict_to_hf, to_hf

    model = _model()
    hf = to_hf(model)
    attn = model.layers[0].attn
    q, k, v = attn.wqkv.weight.split([attn.q_size, attn.kv_size, attn.kv_size])
    hf_attn = hf.model.layers[0].self_attn
    assert torch.equal(hf_attn.q_proj.weight, q) and torch.equal(hf_attn.v_proj.weight, v)
    assert torch.equal(hf_attn.k_proj.weight, k)
    gate, up = model.layers[1].ffn.w13.weight.chunk(2)
    assert torch.equal(hf.model.layers[1].mlp.gate_proj.weight, gate)
    assert torch.equal(hf.model.layers[1].mlp.up_proj.weight, up)
    back = from_hf(hf)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # a legacy ar state dict converts to the same HF names and tensors
    from_legacy = state_dict_to_hf(_legacy_state(model), model.cfg)
    from_fused = state_dict_to_hf(model.state_dict(), model.cfg)
    assert from_legacy.keys() == from_fused.keys()
    assert all(torch.equal(from_legacy[n], from_fused[n]) for n in from_fused)
