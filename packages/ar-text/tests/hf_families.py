"""Every causal-LM family of ``transformers`` (its auto mapping, read at test time) built
from a tiny config and checked under ``from_hf``: exact greedy equality with HF's own
``generate``, or a clear ``ConfigError`` from ``from_hf``; never a crash.

``check_family(model_type)`` returns ``(status, reason)``: ``supported`` (every check
passed), ``refused`` (``from_hf`` raised ``ConfigError``; the reason is its message) or
``skipped`` (the tiny model cannot be built or run by transformers itself on this machine:
extra packages, a config that needs downloads, HF's own generate failing). Anything else
(a crash inside the adapter, a mismatch) raises.
"""

from __future__ import annotations

from typing import Any

import torch

V = 97  # a vocabulary unlike any default, so a wrong vocab_size shows
MAX_POS = 128
N_NEW = 8

# attribute -> tiny value; only the ones a family's config class already has are passed
TINY: dict[str, Any] = {
    "vocab_size": V,
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rotary_dim": 8,  # partial rotary (GPT-J, CodeGen): at most the head dim
    "max_position_embeddings": MAX_POS,
    "sliding_window": 4,  # small, so windows matter within the test's sequences
    "ffn_dim": 64,
    "decoder_layers": 2,  # decoders of encoder-decoder families (BART-like *ForCausalLM)
    "encoder_layers": 2,
    "decoder_ffn_dim": 64,
    "encoder_ffn_dim": 64,
    "decoder_attention_heads": 4,
    "encoder_attention_heads": 4,
    "qk_rope_head_dim": 8,  # multi-head latent attention (DeepSeek-like)
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "n_group": 1,
    "topk_group": 1,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 0,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
    "tie_word_embeddings": True,
}


def causal_lm_families() -> list[str]:
    """The model types of transformers' causal-LM auto mapping (read now, not a list)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
# Qwen4-Exp's indexed (sparse) attention: its sizes have no defaults
_QSA = {
    "indexer_n_heads": 2,
    "indexer_kv_heads": 1,
    "indexer_head_dim": 16,
    "indexer_budget": 8,
    "indexer_compress_ratio": 2,
}
_BLT = {"num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": V}
# Gemma-4's assistant (draft) head: no per-layer inputs (its config requires 0)
_ASSISTANT = {"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0}

# families whose config classes need more than TINY to build at 2 layers (checked by hand)
HAND: dict[str, dict[str, Any]] = {
    # one global and one local layer; window 4 so it matters within the test's sequences
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 4},
    "dots1": {"n_shared_experts": 1},
    "xlnet": {"d_head": 16},  # d_model // n_head
    "reformer": {"axial_pos_embds_dim": [32, 32], "axial_pos_shape": [8, 16]},  # sum 64
    "mamba2": {"num_heads": 8, "head_dim": 16, "expand": 2, "n_groups": 1},  # 8 * 16 = 2 * 64
    "zaya": {"num_experts_per_tok": 1},
    "gemma4_assistant": _ASSISTANT,
    # dbrx: transformers' DbrxAttentionConfig has no rope_theta default and clamps with
    # clip_qkv=None (its own default config cannot run); DBRX checkpoints set both
    "dbrx": {
        "tie_word_embeddings": False,
        "d_model": 64,  # read by __post_init__ for the experts' width
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
    },
    "cohere_compass_text": {"rope_parameters": {"full_attention": _ROPE}},  # per layer type
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1},  # one mamba, one attention
    "recurrent_gemma": {"block_types": ["recurrent", "attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    "qwen4_exp": _QSA,
    "qwen4_exp_text": _QSA,
    # four layers, the last two reusing the first two's keys and values (as Gemma-3n does)
    "gemma3n_text": {
        "num_hidden_layers": 4,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "num_kv_shared_layers": 2,
    },
    "xmod": {"default_language": "en_XX"},  # X-MOD's adapters are chosen by language
    # two hybrid (mamba + shared transformer) layers: the shared block must have a twin
    "zamba": {
        "num_hidden_layers": 4,
        "layer_types": ["linear_attention", "hybrid"] * 2,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
    },
    # BLT: tiny patcher, local encoder/decoder and global transformer, few byte-group hashes
    # (the default's 500002-row hash tables take minutes to initialise)
    "blt": {
        "encoder_hash_byte_group_vocab": 64,
        "encoder_hash_byte_group_size": [3, 4],
        "patcher_config": {**_BLT, "hidden_size": 32},
        "encoder_config": {**_BLT, "hidden_size": 32, "hidden_size_global": 64},
        "decoder_config": {**_BLT, "hidden_size": 32, "hidden_size_global": 64},
        "global_config": {**_BLT, "hidden_size": 64},
    },
    # one input, one recurrent and one output layer
    "dory": {
        "num_hidden_layers": 3,
        "n_input_layers": 1,
        "n_output_layers": 1,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    },
    "dots3_note": {"num_key_value_heads": 4},  # its config requires kv heads == heads
    "dots3_note_text": {"num_key_value_heads": 4},
}
# multi-head latent attention (DeepSeek-like): head_dim is the rotary part's width (as in
# their checkpoints, = qk_rope_head_dim) and the latent is expanded to every head
for _mla in (
    "axk1",
    "deepseek_v2",
    "deepseek_v3",
    "glm4_moe_lite",
    "longcat_flash",
    "minicpm3",
    "sarvam_mla",
    "youtu",
):
    HAND[_mla] = {"head_dim": 8, "num_key_value_heads": 4}


# families whose default config does not validate: the keyword arguments that make it valid
# (the tiny values then come from TINY and HAND as for every family)
HAND_DEFAULT: dict[str, dict[str, Any]] = {
    "gemma4_assistant": {"text_config": _ASSISTANT},
}
# a multimodal family's other sub-configs that must agree with the tiny text config
HAND_OUTER: dict[str, dict[str, Any]] = {
    "dots3_note": {"vision_config": {"adapter_out_dim": 64}},  # = the text hidden size
}


def tiny_config(model_type: str, **extra: Any) -> Any:
    """The family's config class with the TINY values it has (2 layers, width 64, V
    words), plus ``extra``; a multimodal config is reduced through its text config."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type, **HAND_DEFAULT.get(model_type, {}))
    try:
        text = default.get_text_config()
    except ValueError:  # an encoder and a decoder text config (MusicGen): the causal LM's end
        text = default.get_text_config(decoder=True)
    names = set(text.to_dict())
    for cls in type(text).__mro__:
        names |= set(getattr(cls, "__annotations__", {}))
        names |= set(getattr(cls, "attribute_map", {}))
    kw = {k: v for k, v in TINY.items() if k in names}
    if "sliding_window" in kw and getattr(text, "sliding_window", None) is None:
        del kw["sliding_window"]  # the family's windows are off by default: keep them off
    types = getattr(text, "layer_types", None)
    if types and len(set(types)) > 1 and "num_hidden_layers" in kw and _settable(text):
        # one layer of each kind (families that derive it from periods get a HAND entry)
        kinds = list(dict.fromkeys(types))
        kw["layer_types"] = (kinds + list(types))[:2]
    kw.update(HAND.get(model_type, {}))
    kw.update(extra)
    kw["is_decoder"] = True
    from transformers import AutoModelForCausalLM

    causal_cls = AutoModelForCausalLM._model_mapping[type(default)]
    if text is default or causal_cls.config_class is type(text):
        cfg = type(text)(**kw)  # (MusicGen's causal LM is its decoder, on the decoder config)
    else:  # e.g. Gemma-3: a text config inside the model's config
        key = next(k for k, v in vars(default).items() if v is text)
        outer = HAND_OUTER.get(model_type, {})
        cfg = type(default)(**{**outer, key: type(text)(**kw).to_dict()})
    cfg._attn_implementation = "eager"
    return cfg


def _settable(config: Any, name: str = "layer_types") -> bool:
    """False where ``name`` (or what ``attribute_map`` maps it to) is a read-only property:
    the family derives its layer kinds (Jamba from periods, RecurrentGemma from block_types)."""
    name = getattr(type(config), "attribute_map", {}).get(name, name)
    prop = getattr(type(config), name, None)
    return not (isinstance(prop, property) and prop.fset is None)


def build(model_type: str, seed: int = 0, **extra: Any) -> Any:
    """The family's causal-LM class from its tiny config, random weights, eval mode."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    cfg = tiny_config(model_type, **extra)
    torch.manual_seed(seed)
    if type(cfg) in AutoModelForCausalLM._model_mapping:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    else:  # the family's causal LM on its decoder config (MusicGen)
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
        model = cls._from_config(cfg, attn_implementation="eager").eval()
    # plain greedy: no family defaults (BART's forced EOS, no-repeat n-grams, ...) and,
    # with random weights, no early stop
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=None)
    return model


def prompts(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_greedy(model: Any, ids: torch.Tensor, n: int = N_NEW) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
        )


def check_model(model: Any, **from_hf_kwargs: Any) -> None:
    """Greedy on a batch, ragged prompts (each row as if alone), cached == uncached
    logits, and speculative decoding with a self-draft all equal HF's greedy."""
    from ar_core.generation import GenerationConfig, generate
    from ar_text import from_hf

    ar_model = from_hf(model, **from_hf_kwargs)
    cfg = GenerationConfig(max_new_tokens=N_NEW)
    ids = prompts()
    ref = hf_greedy(model, ids)
    got = generate(ar_model, ids, cfg).sequences
    assert torch.equal(got, ref), f"greedy differs:\n{got}\n{ref}"
    lengths = torch.tensor([4, 7])
    ragged = generate(ar_model, ids, cfg, prompt_lengths=lengths).sequences
    for b in range(2):
        alone = hf_greedy(model, ids[b : b + 1, : int(lengths[b])])[0]
        assert torch.equal(ragged[b, : alone.shape[0]], alone), f"ragged row {b} differs"
    cache = ar_model.new_cache(2, 16)
    with torch.no_grad():
        full = ar_model(ids).logits
        parts = [ar_model(ids[:, a:b], cache=cache).logits for a, b in ((0, 4), (4, 5), (5, 7))]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)
    try:
        import ar_decoding  # noqa: F401
    except ImportError:  # pragma: no cover - ar-decoding is a dev dependency
        return
    spec = generate(
        ar_model, ids[:1], cfg, strategy="speculative", draft_model=ar_model, do_sample=False
    ).sequences
    assert torch.equal(spec, ref[:1]), "speculative with a self-draft differs"


def check_family(model_type: str) -> tuple[str, str]:
    from ar_core.errors import ConfigError
    from ar_text import from_hf

    try:
        model = build(model_type)
    except Exception as e:
        return "skipped", f"tiny model not built by transformers: {type(e).__name__}: {_short(e)}"
    try:
        from_hf(model)
    except ConfigError as e:
        if e.__cause__ is not None:  # from_hf's probe forward failed inside transformers
            try:
                hf_greedy(model, prompts(batch=1, length=3), n=2)
            except Exception as hf_error:
                return "skipped", f"HF's own generate fails: {_short(hf_error)}"
        return "refused", str(e)
    try:
        hf_greedy(model, prompts(batch=1, length=3), n=2)  # transformers itself can run it
    except Exception as e:
        return "skipped", f"HF's own generate fails: {type(e).__name__}: {_short(e)}"
    check_model(model)
    return "supported", ""


def _short(e: BaseException, n: int = 160) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 3] + "..."


if __name__ == "__main__":  # pragma: no cover - a manual run prints the table
    import sys
    import traceback

    fams = sys.argv[1:] or causal_lm_families()
    for fam in fams:
        try:
            status, reason = check_family(fam)
        except Exception as e:
            status, reason = "FAIL", f"{type(e).__name__}: {_short(e, 300)}"
            traceback.print_exc(limit=-3)
        print(f"| {fam} | {status} | {reason} |", flush=True)
