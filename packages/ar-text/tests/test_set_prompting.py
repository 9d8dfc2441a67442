"""Tests of ar_text.set_prompting (McIlroy-Young et al. 2024, arXiv:2406.06581).

Order independence is checked in float64 under all 3! permutations of three options of
different lengths: next-token logits agree to 1e-12 (only the order of the sums over keys
changes) and greedy continuations are identical; the plain concatenation differs.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ar_core import Transformer, TransformerConfig, masks
from ar_core.errors import InputError
from ar_text import set_prompting as sp

V = 50
PREFIX = [1, 2, 3]
OPTIONS = [[4, 5], [6, 7, 8, 9], [10]]
SUFFIX = [11, 12]
ROUNDOFF = 1e-12  # float64: differences from the order of summation only
N_GREEDY = 4
# weights N(0, 0.2^2) rather than the usual 0.02: sharper random models, whose greedy
# continuations of the plain concatenation do change with the order (the control)
INIT_STD = 0.2


def ar_model() -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=V,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        attention_backend="sdpa",  # the math backend's softmax runs in float32
    )
    model = Transformer(cfg).double().eval()
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() >= 2:  # matrices and embeddings; norm gains stay 1
                w.normal_(0.0, INIT_STD)
    return model


def gpt2_model(impl: str) -> Any:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=V,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=1,
        initializer_range=INIT_STD,
        attn_implementation=impl,
    )
    return GPT2LMHeadModel(cfg).double().eval()


def llama_model(impl: str) -> Any:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        initializer_range=INIT_STD,
        attn_implementation=impl,
    )
    return LlamaForCausalLM(cfg).double().eval()


def next_logits_fn(kind: str) -> Callable[[sp.SetPrompt], torch.Tensor]:
    if kind == "ar":
        model = ar_model()
        return lambda p: sp.ar_next_token_logits(model, p)
    # Llama's eager attention takes its softmax in float32, so it is not exact in
    # float64 (measured 3e-8 across permutations); SDPA keeps float64.
    hf = {
        "gpt2-eager": lambda: gpt2_model("eager"),
        "gpt2-sdpa": lambda: gpt2_model("sdpa"),
        "llama-sdpa": lambda: llama_model("sdpa"),
    }[kind]()
    assert hf.config._attn_implementation == kind.split("-")[1]
    return lambda p: sp.hf_next_token_logits(hf, p)


def protocol_model(kind: str) -> Any:
    """The same model as ``next_logits_fn(kind)`` behind the ar model protocol (with a cache)."""
    if kind == "ar":
        return ar_model()
    from ar_text import from_hf

    impl = kind.split("-")[1]
    return from_hf(gpt2_model(impl) if kind.startswith("gpt2") else llama_model(impl))


def uncached_greedy(
    next_logits: Callable[[sp.SetPrompt], torch.Tensor], prompt: sp.SetPrompt, n: int
) -> tuple[list[int], torch.Tensor]:
    """The reference: the whole set-based forward again for every new token."""
    tokens: list[int] = []
    logits = []
    for _ in range(n):
        logits.append(next_logits(sp.extend(prompt, tokens)))
        tokens.append(int(logits[-1].argmax()))
    return tokens, torch.stack(logits)


def permuted(build: Callable[..., sp.SetPrompt]) -> list[sp.SetPrompt]:
    return [
        build(PREFIX, [OPTIONS[i] for i in perm], SUFFIX)
        for perm in itertools.permutations(range(3))
    ]


MODELS = ["ar", "gpt2-eager", "gpt2-sdpa", "llama-sdpa"]


@pytest.mark.parametrize("kind", MODELS)
def test_logits_and_greedy_are_order_independent(kind: str) -> None:
    next_logits = next_logits_fn(kind)
    with torch.no_grad():
        logits = [next_logits(p) for p in permuted(sp.build_set_prompt)]
        greedy = [
            sp.greedy_continuation(next_logits, p, N_GREEDY) for p in permuted(sp.build_set_prompt)
        ]
    assert logits[0].dtype == torch.float64
    spread = max(float((x - logits[0]).abs().max()) for x in logits)
    assert spread <= ROUNDOFF, spread
    assert all(g == greedy[0] for g in greedy), greedy


@pytest.mark.parametrize("kind", MODELS)
def test_cached_equals_uncached(kind: str) -> None:
    """Prefill the set-based prompt into a KV cache, then decode one token at a time: the
    tokens equal the uncached greedy continuation and the logits of every step agree in
    float64, for every order of the options (and so across orders too)."""
    next_logits = next_logits_fn(kind)
    model = protocol_model(kind)
    n = 6
    with torch.no_grad():
        reference, ref_logits = uncached_greedy(next_logits, permuted(sp.build_set_prompt)[0], n)
        for prompt in permuted(sp.build_set_prompt):
            tokens, logits = sp.greedy_continuation_cached(model, prompt, n)
            assert tokens == reference
            assert logits.shape == (n, V) and logits.dtype == torch.float64
            assert float((logits - ref_logits).abs().max()) <= ROUNDOFF
            assert tokens == sp.greedy_continuation(next_logits, prompt, n)


def test_cached_differs_without_the_set_mask() -> None:
    """The cached path really uses the prompt's mask: prefilled with a causal mask instead,
    its first logits differ from the set-based ones."""
    model = ar_model()
    prompt = sp.build_set_prompt(PREFIX, OPTIONS, SUFFIX)
    with torch.no_grad():
        _, logits = sp.greedy_continuation_cached(model, prompt, 1)
        _, causal = sp.greedy_continuation_cached(
            model, dataclasses.replace(prompt, mask=masks.causal()), 1
        )
    assert float((logits - causal).abs().max()) > 1e-4


@pytest.mark.parametrize("kind", MODELS)
def test_concatenation_control_depends_on_order(kind: str) -> None:
    next_logits = next_logits_fn(kind)
    with torch.no_grad():
        logits = [next_logits(p) for p in permuted(sp.concatenated_prompt)]
        greedy = {
            tuple(sp.greedy_continuation(next_logits, p, N_GREEDY))
            for p in permuted(sp.concatenated_prompt)
        }
    spread = max(float((x - logits[0]).abs().max()) for x in logits)
    assert spread > 1e-4, spread
    assert len(greedy) > 1, greedy


@pytest.mark.parametrize("kind", ["ar", "gpt2-sdpa", "llama-sdpa"])
@pytest.mark.parametrize("ablate", ["positions", "mask"])
def test_both_parts_of_the_scheme_are_needed(kind: str, ablate: str) -> None:
    """Only the set mask with consecutive positions, or only the shared positions with a
    causal mask: the logits depend on the order again."""
    next_logits = next_logits_fn(kind)
    prompts = []
    for p in permuted(sp.build_set_prompt):
        if ablate == "positions":
            p = dataclasses.replace(p, positions=torch.arange(len(p)))
        else:
            p = dataclasses.replace(p, mask=masks.causal())
        prompts.append(p)
    with torch.no_grad():
        logits = [next_logits(p) for p in prompts]
    spread = max(float((x - logits[0]).abs().max()) for x in logits)
    assert spread > 1e-4, spread


def reference_mask(prefix_len: int, option_lens: list[int], suffix_len: int) -> torch.Tensor:
    """Hand-built: label every position, then apply the rule pair by pair."""
    labels = ["p"] * prefix_len
    for i, n in enumerate(option_lens):
        labels += [f"o{i}"] * n
    labels += ["s"] * suffix_len
    n = len(labels)
    ref = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(q + 1):
            lq, lk = labels[q], labels[k]
            ref[q, k] = lk == "p" or lq == "s" or lq == lk
    return ref


def test_mask_and_positions_match_hand_built_reference() -> None:
    p = sp.build_set_prompt(PREFIX, OPTIONS, SUFFIX)
    assert torch.equal(sp.dense_mask(p), reference_mask(3, [2, 4, 1], 2))
    assert p.positions.tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 6, 3, 7, 8]
    assert p.tokens.tolist() == PREFIX + [t for o in OPTIONS for t in o] + SUFFIX
    # a few entries spelled out: option 1 never sees option 0; the suffix sees all
    m = sp.dense_mask(p)
    assert not m[5, 3] and not m[5, 4] and m[5, 2] and m[10, 9] and m[10, 3]
    hf = sp.hf_attention_mask(p, torch.float64)
    assert hf.shape == (1, 1, 12, 12)
    assert torch.equal(hf[0, 0] == 0, m) and hf.min() == torch.finfo(torch.float64).min


def test_extend_and_control_layout() -> None:
    p = sp.extend(sp.build_set_prompt(PREFIX, OPTIONS, SUFFIX), [20, 21])
    assert p.suffix_len == 4 and p.positions[-4:].tolist() == [7, 8, 9, 10]
    c = sp.concatenated_prompt(PREFIX, OPTIONS, SUFFIX)
    assert c.positions.tolist() == list(range(12))
    assert torch.equal(sp.dense_mask(c), torch.ones(12, 12, dtype=torch.bool).tril())


def test_empty_suffix_is_refused() -> None:
    with pytest.raises(InputError, match="non-empty suffix"):
        sp.greedy_continuation_cached(ar_model(), sp.build_set_prompt(PREFIX, OPTIONS, []), 1)
    with pytest.raises(InputError, match="n_tokens"):
        sp.greedy_continuation_cached(ar_model(), sp.build_set_prompt(PREFIX, OPTIONS, SUFFIX), 0)
    with pytest.raises(InputError):
        sp.greedy_continuation(
            lambda p: torch.zeros(V), sp.build_set_prompt(PREFIX, OPTIONS, []), 1
        )
    with pytest.raises(InputError):
        sp.build_set_prompt(PREFIX, [[1], []], SUFFIX)
