"""FiRST on ``from_hf`` models (a tiny Llama and a tiny GPT-2 built from configs, untrained,
weights drawn with std 0.2 so next-token distributions are peaked): routers that keep
every layer give the base's logits bit for bit and its greedy/sampled output; under a
fixed skip set the cached decode equals recomputation without a cache and a skipped layer
writes nothing into its cache slots; per-row skip sets equal each row decoded alone;
self-speculative decoding with the skipping draft equals HF's own greedy
(``model.generate``) and ours; routers train on an HF model; bad input is a clear error."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_decoding.first import (
    FiRSTRouters,
    LayerSkipModel,
    _routed_forward,
    choose_skip,
    train_routers,
)
from ar_decoding.first_hf import hf_layers

transformers = pytest.importorskip("transformers")
hf_adapter = pytest.importorskip("ar_text.hf")

VOCAB, LAYERS = 64, 3
GREEDY = GenerationConfig(max_new_tokens=10, temperature=0)
FAMILIES = ["llama", "gpt2"]


def _hf(name: str) -> Any:
    torch.manual_seed(0)
    if name == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            initializer_range=0.2,
        )  # fmt: skip
        hf = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=LAYERS, n_head=4,
            initializer_range=0.2, bos_token_id=0,
        )  # fmt: skip
        hf = transformers.GPT2LMHeadModel(cfg)
    cfg.eos_token_id = None
    hf.generation_config.eos_token_id = None
    return hf.eval()


def _model(name: str) -> Any:
    return hf_adapter.from_hf(_hf(name))


def _ragged() -> tuple[torch.Tensor, list[int]]:
    return torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1)), [7, 2, 5]


@pytest.mark.parametrize("name", FAMILIES)
def test_routers_keeping_every_layer_equal_the_base(name: str) -> None:
    model = _model(name)
    x, lengths = _ragged()
    routers = FiRSTRouters.for_model(model, keep_bias=5.0)
    skip = choose_skip(model, routers, x, torch.tensor(lengths))
    assert not bool(skip.any())
    with torch.no_grad():  # the routed forward (every router consulted) and the skip view
        routed, state = _routed_forward(
            model, routers, x, torch.ones_like(x, dtype=torch.bool), False
        )
        assert len(state["keep"]) == LAYERS
        assert torch.equal(routed.logits, model(x).logits)
        base_cache, skip_cache = model.new_cache(3, 20), model.new_cache(3, 20)
        skipping = LayerSkipModel(model, skip)
        for step in (x, x[:, :2]):  # a prefill, then two more tokens on the cache
            assert torch.equal(
                skipping(step, cache=skip_cache).logits, model(step, cache=base_cache).logits
            )
    ref = generate(model, x, GREEDY, prompt_lengths=lengths)
    out = generate(model, x, GREEDY, strategy="first", prompt_lengths=lengths, routers=routers)
    assert torch.equal(out.sequences, ref.sequences)
    sample = GenerationConfig(max_new_tokens=8, seed=3)
    ref_s = generate(model, x, sample, strategy="sample", prompt_lengths=lengths)
    out_s = generate(model, x, sample, strategy="first", prompt_lengths=lengths, routers=routers)
    assert torch.equal(out_s.sequences, ref_s.sequences)


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_decode_equals_recomputation_under_a_fixed_skip_set(name: str) -> None:
    model = _model(name)
    x = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    out = generate(model, x, GREEDY, strategy="first", skip_layers=[1])
    skipping = LayerSkipModel(model, [1])
    assert skipping.kept_layers == LAYERS - 1
    seq = x
    with torch.no_grad():
        for _ in range(GREEDY.max_new_tokens):  # no cache: the whole sequence every step
            seq = torch.cat([seq, skipping(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(out.sequences, seq)
        assert not torch.equal(out.sequences, generate(model, x, GREEDY).sequences)  # it skipped
        cache = model.new_cache(2, 20)
        skipping(seq[:, :8], cache=cache)
        skipping(seq[:, 8:9], cache=cache)
        assert not bool(cache.k[1].any()) and not bool(cache.v[1].any())  # never written
        assert bool(cache.k[0].any()) and bool(cache.k[2].any())
    sample = GenerationConfig(max_new_tokens=6, seed=5)  # sampling on the skipping model
    out_s = generate(model, x, sample, strategy="first", skip_layers=[1])
    assert torch.equal(out_s.sequences, generate(skipping, x, sample, strategy="sample").sequences)


@pytest.mark.parametrize("name", FAMILIES)
def test_per_row_skip_sets_equal_each_row_alone(name: str) -> None:
    model = _model(name)
    x, lengths = _ragged()
    routers = FiRSTRouters.for_model(model)
    with torch.no_grad():  # routers that read the prompt: different rows, different sets
        for lin in routers.linears():
            lin.weight.normal_(0, 30.0, generator=torch.Generator().manual_seed(4))
            lin.bias.zero_()
    skip = choose_skip(model, routers, x, torch.tensor(lengths))
    assert len({tuple(r.tolist()) for r in skip}) > 1
    out = generate(model, x, GREEDY, strategy="first", prompt_lengths=lengths, routers=routers)
    assert out.stats.draft_forward_passes == 1  # the routers' pass over the prompts
    for b, n in enumerate(lengths):
        alone = generate(model, x[b : b + 1, :n], GREEDY, strategy="first", skip_layers=skip[b])
        assert torch.equal(out.sequences[b, : n + GREEDY.max_new_tokens], alone.sequences[0])


@pytest.mark.parametrize("name", FAMILIES)
def test_self_speculative_with_the_skipping_draft_equals_greedy(name: str) -> None:
    hf = _hf(name)
    model = hf_adapter.from_hf(hf)
    x, lengths = _ragged()
    ref = generate(model, x, GREEDY, prompt_lengths=lengths)
    out = generate(
        model, x, GREEDY, strategy="first", prompt_lengths=lengths, skip_layers=[0, 2],
        speculative_draft=True, num_draft_tokens=3,
    )  # fmt: skip
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats.draft_forward_passes > 0
    assert not torch.equal(
        generate(model, x, GREEDY, strategy="first", skip_layers=[0, 2]).sequences, ref.sequences
    )
    # HF's own greedy on equal-length prompts
    y = x[:2, :6]
    with torch.no_grad():
        theirs = hf.generate(
            y, attention_mask=torch.ones_like(y), max_new_tokens=GREEDY.max_new_tokens,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip
    ours = generate(
        model, y, GREEDY, strategy="first", skip_layers=[1], speculative_draft=True,
        num_draft_tokens=4,
    )  # fmt: skip
    assert torch.equal(ours.sequences, theirs)


def test_routers_train_on_a_from_hf_model() -> None:
    model = _model("llama")

    def data(gen: torch.Generator, b: int) -> torch.Tensor:
        return torch.randint(0, VOCAB, (b, 12), generator=gen)

    for gate in ("soft", "bernoulli"):
        routers = FiRSTRouters.for_model(model, keep_bias=1.0)
        history = train_routers(
            model, routers, data, prompt_len=6, steps=12, skip_weight=2.0, gate=gate
        )
        assert history[-1]["keep"] < history[0]["keep"]  # the regulariser pushes to skipping
    assert all(p.grad is None for p in model.parameters())  # the base stays frozen


def test_bad_input() -> None:
    model, x = _model("gpt2"), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="removes every one of the 3 layers"):
        generate(model, x, GREEDY, strategy="first", skip_layers=[0, 1, 2])
    with pytest.raises(ConfigError, match=r"skip_layers \[3\] are not layers of a 3-layer model"):
        generate(model, x, GREEDY, strategy="first", skip_layers=[3])
    with pytest.raises(ConfigError, match="routers are for 2 layers"):
        generate(model, x, GREEDY, strategy="first", routers=FiRSTRouters(32, 2))
    with pytest.raises(ConfigError, match="ar_core Transformer or the decoder layers of a from_hf"):
        LayerSkipModel(torch.nn.Linear(2, 2), [0])  # type: ignore[arg-type]
    assert hf_layers(model).path == "transformer.h"
    assert hf_layers(_model("llama")).path == "model.layers"
    # a decoder whose layers are no nn.ModuleList (it still runs: Llama slices and iterates)
    odd = _model("llama")
    odd.hf.model.layers = torch.nn.Sequential(*odd.hf.model.layers)
    with pytest.raises(
        ConfigError, match="cannot find the 3 decoder layers of llama.*HF_LAYER_PATHS"
    ):
        generate(odd, x, GREEDY, strategy="first", skip_layers=[1])
