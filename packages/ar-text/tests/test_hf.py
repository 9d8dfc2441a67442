"""Tests of ``ar_text.hf``: the Hugging Face adapter against HF's own forward and generate.

Tiny random GPT-2, Llama and Qwen2 models are built from configs (no downloads). The
references are HF itself: ``model(ids).logits`` (uncached, no adapter) and
``model.generate(ids, do_sample=False)``; every lossless ar strategy must reproduce
the greedy output exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ar_core import masks
from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig, generate
from ar_core.protocols import CausalLM, KVCache
from ar_text import from_hf

transformers = pytest.importorskip("transformers")

import hf_families  # noqa: E402 - after the importorskip

V = 97  # a vocabulary unlike any default, so a wrong vocab_size shows


def _gpt2(layers: int = 2) -> Any:
    cfg = transformers.GPT2Config(
        vocab_size=V, n_positions=128, n_embd=32, n_layer=layers, n_head=4, bos_token_id=0
    )
    cfg.eos_token_id = None
    return transformers.GPT2LMHeadModel(cfg)


def _llama(layers: int = 2) -> Any:
    cfg = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(cfg)


def _qwen2(layers: int = 2) -> Any:
    cfg = transformers.Qwen2Config(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return transformers.Qwen2ForCausalLM(cfg)


BUILDERS: dict[str, Callable[..., Any]] = {"gpt2": _gpt2, "llama": _llama, "qwen2": _qwen2}


def _build(name: str, layers: int = 2, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = BUILDERS[name](layers).eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(params=sorted(BUILDERS))
def hf_model(request: pytest.FixtureRequest) -> Any:
    return _build(request.param)


def _prompts(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def _hf_greedy(model: Any, ids: torch.Tensor, n: int = 16) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n
        )
    return out


GREEDY = GenerationConfig(max_new_tokens=16)


def test_protocol_attributes(hf_model: Any) -> None:
    model = from_hf(hf_model)
    assert isinstance(model, CausalLM)  # ar_core.protocols: what generate() drives
    assert not isinstance(hf_model, CausalLM)  # the bare HF model does not follow it
    assert model.vocab_size == V
    assert model.max_seq_len == 128
    assert model.device == torch.device("cpu")
    cache = model.new_cache(3, 20)
    assert isinstance(cache, KVCache) and cache.batch_size == 3
    assert cache.lengths.tolist() == [0, 0, 0] and cache.max_len == 20


def test_greedy_equals_hf_generate(hf_model: Any) -> None:
    ids = _prompts()
    out = generate(from_hf(hf_model), ids, GREEDY)
    assert torch.equal(out.sequences, _hf_greedy(hf_model, ids))


def test_uncached_logits_equal_hf_forward(hf_model: Any) -> None:
    ids = _prompts(length=9)
    with torch.no_grad():
        ref = hf_model(ids).logits
        got = from_hf(hf_model)(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_cached_logits_equal_uncached(hf_model: Any) -> None:
    """Prefill 5, then 1, then 3 tokens through the cache == one uncached forward."""
    model = from_hf(hf_model)
    ids = _prompts(length=9)
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        ref = hf_model(ids).logits  # (B, 9, V)
        parts = [model(ids[:, a:b], cache=cache).logits for a, b in ((0, 5), (5, 6), (6, 9))]
    torch.testing.assert_close(torch.cat(parts, 1), ref, rtol=1e-5, atol=1e-5)
    assert cache.lengths.tolist() == [9, 9]


def test_crop_then_reappend_equals_fresh(hf_model: Any) -> None:
    """Write 6 junk tokens, crop back to 4, append the true suffix: same as never writing junk."""
    model = from_hf(hf_model)
    ids = _prompts(length=8)
    junk = _prompts(length=6, seed=7)
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        ref = hf_model(ids).logits[:, 4:]
        model(ids[:, :4], cache=cache)
        model(junk, cache=cache)
        cache.crop(4)
        got = model(ids[:, 4:], cache=cache).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_pending_entries_are_overwritten(hf_model: Any) -> None:
    model = from_hf(hf_model)
    ids = _prompts(length=6)
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        ref = hf_model(ids).logits[:, 3:]
        model(ids[:, :3], cache=cache)
        model(_prompts(length=3, seed=9), cache=cache, commit=False)
        assert cache.lengths.tolist() == [3, 3]
        got = model(ids[:, 3:], cache=cache).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_ragged_rows_see_only_their_own_context() -> None:
    """Per-row crop: row 0 keeps 3 entries, row 1 keeps 5; each equals its own fresh run."""
    hf_model = _build("llama")
    model = from_hf(hf_model)
    ids = _prompts(length=7)
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        model(ids, cache=cache)
        cache.crop(torch.tensor([3, 5]))
        nxt = _prompts(length=2, seed=3)
        got = model(nxt, cache=cache).logits  # (2, 2, V)
        for b, keep in enumerate((3, 5)):
            full = torch.cat([ids[b : b + 1, :keep], nxt[b : b + 1]], 1)
            ref = hf_model(full).logits[:, keep:]
            torch.testing.assert_close(got[b : b + 1], ref, rtol=1e-5, atol=1e-5)


def test_ragged_prompts_equal_per_row_greedy() -> None:
    hf_model = _build("qwen2")
    ids = _prompts(length=8)
    lengths = torch.tensor([5, 8])
    out = generate(from_hf(hf_model), ids, GREEDY, prompt_lengths=lengths)
    for b in range(2):
        ref = _hf_greedy(hf_model, ids[b : b + 1, : int(lengths[b])])
        assert torch.equal(out.sequences[b, : ref.shape[1]], ref[0])


def test_tree_mask_matches_dense_reference() -> None:
    """A tree mask over two branches: each branch's logits equal the chain run alone."""
    hf_model = _build("gpt2")
    model = from_hf(hf_model)
    ids = _prompts(batch=1, length=4)
    a, b = torch.tensor([[11, 12]]), torch.tensor([[21, 22]])
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        model(ids, cache=cache)
        start = cache.lengths.clone()
        tree = masks.tree([-1, 0, -1, 2], start)
        positions = start[:, None] + torch.tensor([0, 1, 0, 1])
        got = model(
            torch.cat([a, b], 1), positions=positions, cache=cache, mask=tree, commit=False
        ).logits
        for i, branch in enumerate((a, b)):
            ref = hf_model(torch.cat([ids, branch], 1)).logits[:, 4:]
            torch.testing.assert_close(got[:, 2 * i : 2 * i + 2], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [
        ("prompt-lookup", {"do_sample": False}),
        ("jacobi", {}),
        ("lookahead", {}),
    ],
)
def test_lossless_strategies_equal_greedy(hf_model: Any, strategy: str, kwargs: Any) -> None:
    pytest.importorskip("ar_decoding")
    ids = _prompts()
    out = generate(from_hf(hf_model), ids, GREEDY, strategy=strategy, **kwargs)
    assert torch.equal(out.sequences, _hf_greedy(hf_model, ids))


def test_speculative_with_self_draft_accepts_everything(hf_model: Any) -> None:
    pytest.importorskip("ar_decoding")
    model = from_hf(hf_model)
    ids = _prompts(batch=1)
    out = generate(model, ids, GREEDY, strategy="speculative", draft_model=model, do_sample=False)
    assert torch.equal(out.sequences, _hf_greedy(hf_model, ids))
    k = 4
    # every step but the last (capped by the remaining tokens) accepts all k drafts + 1
    assert out.stats.accepted_lengths[1:-1] == [k + 1] * (len(out.stats.accepted_lengths) - 2)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_speculative_with_small_hf_draft_equals_greedy(family: str) -> None:
    pytest.importorskip("ar_decoding")
    target = _build(family)
    draft = from_hf(_build(family, layers=1, seed=5))  # same vocabulary, other weights
    ids = _prompts()
    out = generate(
        from_hf(target), ids, GREEDY, strategy="speculative", draft_model=draft, do_sample=False
    )
    assert torch.equal(out.sequences, _hf_greedy(target, ids))


def test_tree_speculative_equals_greedy() -> None:
    """Tree verification goes through the tree MaskSpec and the cache's k/v copies."""
    pytest.importorskip("ar_decoding")
    target = _build("llama")
    draft = from_hf(_build("llama", layers=1, seed=5))
    ids = _prompts()
    out = generate(
        from_hf(target),
        ids,
        GREEDY,
        strategy="tree-speculative",
        draft_model=draft,
        do_sample=False,
    )
    assert torch.equal(out.sequences, _hf_greedy(target, ids))


def test_beam_search_equals_hf_beam_search() -> None:
    pytest.importorskip("ar_decoding")
    hf_model = _build("gpt2")
    ids = _prompts()
    with torch.no_grad():
        ref = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            num_beams=4,
            do_sample=False,
            max_new_tokens=12,
            length_penalty=1.0,
            early_stopping=True,
        )
    cfg = GenerationConfig(max_new_tokens=12)
    out = generate(from_hf(hf_model), ids, cfg, strategy="beam", num_beams=4)
    assert torch.equal(out.sequences, ref)


# -- bad inputs ---------------------------------------------------------------------------


def test_from_hf_loads_a_saved_folder(tmp_path: Path) -> None:
    hf_model = _build("gpt2")
    hf_model.save_pretrained(tmp_path / "gpt2")
    ids = _prompts()
    cfg = GenerationConfig(max_new_tokens=8)
    loaded = from_hf(tmp_path / "gpt2", attn_implementation="sdpa")
    assert torch.equal(
        generate(loaded, ids, cfg).sequences, generate(from_hf(hf_model), ids, cfg).sequences
    )
    assert from_hf(str(tmp_path / "gpt2")).vocab_size == V
    with pytest.raises(InputError, match="is not a folder"):
        from_hf(tmp_path / "missing")
    with pytest.raises(ConfigError, match="only apply when loading from a path"):
        from_hf(hf_model, torch_dtype=torch.float64)


def test_from_hf_rejects_non_models() -> None:
    with pytest.raises(InputError, match="PreTrainedModel"):
        from_hf(torch.nn.Linear(2, 2))


def test_from_hf_rejects_unmaskable_attention() -> None:
    hf_model = _build("llama")
    hf_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match="sdpa"):
        from_hf(hf_model)


@pytest.mark.parametrize(
    "build",
    [
        lambda: transformers.BertModel(transformers.BertConfig(**_BERT)),
        lambda: transformers.BertForMaskedLM(transformers.BertConfig(**_BERT)),
        lambda: transformers.GPT2Model(transformers.GPT2Config(**_GPT2)),
        lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(**_T5)),
        lambda: transformers.BertLMHeadModel(transformers.BertConfig(**_BERT)),  # not a decoder
    ],
    ids=["BertModel", "BertForMaskedLM", "GPT2Model", "T5", "BertLMHeadModel-bidirectional"],
)
def test_from_hf_refuses_models_that_are_not_causal_lms(build: Callable[[], Any]) -> None:
    """Refused in from_hf itself, naming the fix (was accepted, then crashed in transformers)."""
    with pytest.raises(ConfigError, match="AutoModelForCausalLM|is_decoder=True"):
        from_hf(build())


def test_from_hf_accepts_a_gpt2_whose_config_says_is_decoder_false() -> None:
    """transformers 4.x gives every config ``is_decoder=False``; only families whose code
    reads it (BERT-like) attend bidirectionally, so GPT-2 with the flag is still causal."""
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**_GPT2))
    hf_model.config.is_decoder = False
    assert from_hf(hf_model).vocab_size == V


def test_several_eos_ids_stop_rows_where_hf_generate_stops() -> None:
    """A model with two end tokens (Llama-3 style): ``generation_config()`` carries both,
    and each row stops, and is padded, exactly as ``hf.generate`` does it."""
    hf_model = _build("llama")
    ids = _prompts(batch=4, length=5, seed=3)
    free = _hf_greedy(hf_model, ids, n=12)[:, 5:]
    # two tokens that greedy emits at different steps of different rows
    first, second = int(free[0, 3]), int(free[1, 6])
    if first == second:
        second = int(free[2, 2])
    assert first != second
    hf_model.generation_config.eos_token_id = [first, second]
    hf_model.generation_config.pad_token_id = 0
    model = from_hf(hf_model)
    assert model.eos_token_ids == [first, second]
    config = model.generation_config(max_new_tokens=12)
    assert config.eos_ids() == [first, second] and config.pad_token_id == 0
    ours = generate(model, ids, config).sequences
    with torch.no_grad():
        theirs = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12
        )
    theirs = torch.nn.functional.pad(theirs, (0, ours.shape[1] - theirs.shape[1]), value=0)
    assert torch.equal(ours, theirs)
    assert (ours[:, 5:] == first).any() and (ours[:, 5:] == second).any()


def test_gpt_neo_local_layers_run_exactly_up_to_their_window() -> None:
    """GPT-Neo's local layers window by key count: refused past the window (naming the
    max_seq_len that works), exact under it (a cache of at most window slots)."""
    model = hf_families.build("gpt_neo", window_size=32)
    with pytest.raises(ConfigError, match=r"max_seq_len=32"):
        from_hf(model)
    hf_families.check_model(model, max_seq_len=32)


_BERT = {
    "vocab_size": V,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
_GPT2 = {"vocab_size": V, "n_embd": 32, "n_layer": 1, "n_head": 4}
_T5 = {"vocab_size": V, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}


# -- every causal-LM family of transformers (see hf_families.py) ---------------------------

# one per position scheme / attention layout: learned absolute (GPT-2), RoPE + GQA (Llama),
# learned with OPT's offset, ALiBi (Bloom), parallel attention + multi-query (Falcon),
# sliding window on every layer (Mistral, window 4), alternating local/global layers with
# attention and logit soft-capping (Gemma-2)
FAST_FAMILIES = ["gpt2", "llama", "opt", "bloom", "falcon", "mistral", "gemma2"]


@pytest.mark.parametrize("family", FAST_FAMILIES)
def test_family_equals_hf_greedy(family: str) -> None:
    """Greedy on a batch, ragged rows, cached == uncached and a speculative self-draft all
    equal HF's own greedy generate, on the family built from a tiny config."""
    assert hf_families.check_family(family) == ("supported", "")


@pytest.mark.parametrize(
    ("family", "reason"),
    [
        ("gemma4_assistant", r"assistant \(draft\) model: its forward reads another model's"),
        ("dory", r"keeps 4 cache layers for its 3 decoder layers"),
        ("blt", r"config has no num_hidden_layers"),
    ],
)
def test_family_without_own_stack_is_refused(family: str, reason: str) -> None:
    """A draft head fed another model's keys (Gemma-4 assistant), layers run in recurrent
    loops (Dory) and a byte-patch model with no single layer stack (BLT) are refused by
    from_hf with the reason, not crashed on (each was skipped or crashed before)."""
    status, message = hf_families.check_family(family)
    assert status == "refused"
    assert re.search(reason, message), message


def test_qwen2_with_window_layers_equals_hf_greedy() -> None:
    """Qwen2 with use_sliding_window: layer 0 full attention, layer 1 a window of 4 (the
    masks go to transformers as a {layer type: mask} dict)."""
    model = hf_families.build("qwen2", use_sliding_window=True, max_window_layers=1)
    assert from_hf(model).layer_types == ["full_attention", "sliding_attention"]
    hf_families.check_model(model)


def test_window_sees_positions_of_tree_branches() -> None:
    """Mistral with a window of 4: two tree branches verified in one call each equal the
    chain run alone (a key's distance is counted in positions, not cache slots)."""
    hf_model = hf_families.build("mistral")
    model = from_hf(hf_model)
    ids = hf_families.prompts(batch=1, length=6)
    a, b = torch.tensor([[11, 12, 13]]), torch.tensor([[21, 22, 23]])
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        model(ids, cache=cache)
        start = cache.lengths.clone()
        tree = masks.tree([-1, 0, 1, -1, 3, 4], start)
        positions = start[:, None] + torch.tensor([0, 1, 2, 0, 1, 2])
        got = model(
            torch.cat([a, b], 1), positions=positions, cache=cache, mask=tree, commit=False
        ).logits
        for i, branch in enumerate((a, b)):
            ref = hf_model(torch.cat([ids, branch], 1)).logits[:, 6:]
            torch.testing.assert_close(got[:, 3 * i : 3 * i + 3], ref, rtol=1e-5, atol=1e-5)


def test_bloom_max_seq_len_is_alibi_default_or_given() -> None:
    """Bloom (ALiBi) has no position table: max_seq_len defaults to ALIBI_MAX_SEQ_LEN."""
    from ar_text.hf import ALIBI_MAX_SEQ_LEN

    model = hf_families.build("bloom")
    assert from_hf(model).max_seq_len == ALIBI_MAX_SEQ_LEN == 2048
    assert from_hf(model, max_seq_len=64).max_seq_len == 64
    with pytest.raises(ConfigError, match="max_seq_len=200 is outside"):
        from_hf(hf_families.build("llama"), max_seq_len=200)  # its limit is 128


@pytest.mark.slow
def test_every_causal_lm_family_is_exact_or_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Every model type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES: supported (exact) or refused
    with a ConfigError, or skipped with the reason transformers could not build or run the
    tiny model; a crash or a mismatch fails. Prints the table (docs/packages/ar-text.md)."""
    rows, failures = [], []
    for family in hf_families.causal_lm_families():
        try:
            status, reason = hf_families.check_family(family)
        except Exception as e:
            status, reason = "FAIL", f"{type(e).__name__}: {e}"
            failures.append(family)
        rows.append(f"| {family} | {status} | {reason} |")
    with capsys.disabled():
        print("\n| family | status | reason |\n|---|---|---|\n" + "\n".join(rows))
    assert not failures, failures


def test_bad_forward_inputs_raise_clear_errors() -> None:
    model = from_hf(_build("gpt2"))
    with pytest.raises(InputError, match=r"\(B, T\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match="long"):
        model(torch.ones(1, 3, dtype=torch.int32))
    with pytest.raises(InputError, match="out of range"):
        model(torch.tensor([[1, V]]))
    with pytest.raises(InputError, match="batch size"):
        model(torch.ones(2, 3, dtype=torch.long), cache=model.new_cache(1, 8))
    with pytest.raises(InputError, match="max_len"):
        model(torch.ones(1, 9, dtype=torch.long), cache=model.new_cache(1, 8))
    with pytest.raises(InputError, match="max_seq_len"):
        model.new_cache(1, 129)
    with pytest.raises(InputError, match="positions"):
        model(torch.ones(1, 3, dtype=torch.long), positions=torch.arange(4))
    with pytest.raises(InputError, match="MaskSpec"):
        model(torch.ones(1, 3, dtype=torch.long), mask=torch.ones(3, 3))  # type: ignore[arg-type]
    other = from_hf(_build("llama"))
    with pytest.raises(InputError, match="new_cache"):
        model(torch.ones(1, 3, dtype=torch.long), cache=other.new_cache(1, 8))
    # any other KVCache (here one that delegates every member to a StaticKVCache but is
    # not one) is refused: the HF layers write into a StaticKVCache's own buffers
    foreign = _NotStatic(model.new_cache(1, 8))
    with pytest.raises(InputError, match="StaticKVCache"):
        model(torch.ones(1, 3, dtype=torch.long), cache=foreign)  # type: ignore[arg-type]


class _NotStatic:
    """A KVCache look-alike (delegates every member) that is not a StaticKVCache."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
