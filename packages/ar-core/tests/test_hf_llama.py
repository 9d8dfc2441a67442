"""The HF Llama converter: equal logits in both directions (no downloads)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ar_core.errors import ConfigError  # noqa: E402
from ar_core.generation import GenerationConfig, generate  # noqa: E402
from ar_core.interop.hf_llama import config_from_hf, from_hf, to_hf  # noqa: E402
from ar_core.model import Transformer, TransformerConfig  # noqa: E402


def _hf(**kw: object) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=5000.0,
        **kw,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_hf_to_ar_equal_logits(tie: bool) -> None:
    hf = _hf(tie_word_embeddings=tie)
    ours = from_hf(hf)
    assert ours.cfg.rope_theta == 5000.0 and ours.cfg.kv_heads == 2
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-5, rtol=1e-4)


def test_ar_to_hf_equal_logits_and_greedy() -> None:
    torch.manual_seed(1)
    ours = Transformer(TransformerConfig.from_name("tiny", n_kv_heads=1)).eval()
    hf = to_hf(ours)
    x = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x).logits, atol=1e-5, rtol=1e-4)
        hf_out = hf.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    out = generate(ours, x, GenerationConfig(max_new_tokens=8))
    assert out.sequences.tolist() == hf_out.tolist()


def test_unsupported_hf_features_are_refused() -> None:
    with pytest.raises(ConfigError, match="biases"):
        config_from_hf(_hf(attention_bias=True).config)
    cfg = _hf().config
    cfg.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match="RoPE scaling 'linear'"):
        config_from_hf(cfg)
