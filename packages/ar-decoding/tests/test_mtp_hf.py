"""MTP on ``from_hf`` models (a tiny Llama with ``nn.Linear`` projections and a tiny GPT-2
with ``Conv1D`` ones, built from configs and trained on ramps): gated LoRA on the HF
modules leaves the base's logits bit-identical after MTP training (a plain-LoRA control
changes them), and linear/quadratic MTP decoding equals the base's greedy output while
accepting more than one token per forward."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from ramp_models import SEQ, VOCAB, ramps

from ar_core.generation import GenerationConfig, generate
from ar_decoding.lora import LoRALinear
from ar_decoding.mtp import MTPModel, train_mtp

transformers = pytest.importorskip("transformers")
hf_adapter = pytest.importorskip("ar_text.hf")

DATA = ramps()


def _hf(name: str) -> Any:
    torch.manual_seed(0)
    if name == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
        hf = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=1, n_head=4, bos_token_id=0
        )
        cfg.eos_token_id = None
        hf = transformers.GPT2LMHeadModel(cfg)
    cfg.eos_token_id = None
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    hf.train()
    for _ in range(60):  # a base that knows the ramps (a predictable future)
        x = DATA(gen, 16)
        loss = torch.nn.functional.cross_entropy(
            hf(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return hf.eval()


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_mtp_on_from_hf(name: str) -> None:
    hf = _hf(name)
    plain_hf = copy.deepcopy(hf)
    reference = hf_adapter.from_hf(copy.deepcopy(hf))
    torch.manual_seed(0)
    model = MTPModel(hf_adapter.from_hf(hf), 3, rank=4)
    wrapped = [m for m in hf.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == (
        7 if name == "llama" else 4
    )  # q k v o gate up down / c_attn c_proj c_fc c_proj
    history = train_mtp(model, DATA, steps=150, batch_size=16, anchors=4, lr=1e-2)
    first, last = history[:10], history[-10:]
    assert sum(h["sampler_ce"] for h in last) < 0.5 * sum(h["sampler_ce"] for h in first)
    x = DATA(torch.Generator().manual_seed(9), 4)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference(x).logits)

    prompts = DATA(torch.Generator().manual_seed(3), 3)[:, :6]
    lengths = [6, 3, 5]
    cfg = GenerationConfig(max_new_tokens=SEQ - 6, temperature=0)
    ref = generate(reference, prompts, cfg, prompt_lengths=lengths)
    acc = {}
    for quadratic in (False, True):
        out = generate(
            model, prompts, cfg, strategy="mtp", prompt_lengths=lengths, quadratic=quadratic
        )
        assert torch.equal(out.sequences, ref.sequences)
        acc[quadratic] = out.stats.mean_accepted_length
    assert acc[False] > 1.5
    assert acc[True] >= acc[False]

    plain = MTPModel(hf_adapter.from_hf(plain_hf), 3, rank=4, gated=False)
    train_mtp(plain, DATA, steps=3, batch_size=4, anchors=2, lr=1e-2)
    with torch.no_grad():
        assert not torch.equal(plain(x).logits, reference(x).logits)


def test_lora_layers_on_from_hf_is_a_clear_error() -> None:
    """The masks entering at a block (``lora_layers``) need ar-core's block loop."""
    from ar_core.errors import ConfigError

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    base = hf_adapter.from_hf(transformers.LlamaForCausalLM(cfg).eval())
    with pytest.raises(ConfigError, match="lora_layers= needs an ar_core Transformer base"):
        MTPModel(base, 2, lora_layers=1)
