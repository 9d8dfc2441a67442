"""Hyperfitting (Carlsson et al., ICLR 2025): the citation blocker provably blocks (greedy
and sampling, checked by brute force over every k-gram that ends at a generated token),
its index equals the brute-force k-gram set, TTR and entropy against hand-computed values,
and (slow) the small experiment reaches near-zero training loss with lower entropy."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ar_core import generate
from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig
from ar_core.model import Transformer, TransformerConfig
from ar_text.hyperfitting import (
    HyperfitConfig,
    NgramBlocker,
    held_out_stats,
    hyperfit,
    next_token_entropy,
    run_experiment,
    training_kgrams,
    type_token_ratio,
)

K = 4  # blocked n-gram length in the blocker tests
V = 16  # a small vocabulary makes copying (and so blocking) frequent
PROMPT = 6
NEW = 20


@pytest.fixture(scope="module")
def memorised() -> tuple[Transformer, torch.Tensor]:
    """A tiny model hyperfitted to 8 random sequences of 32 tokens (it copies them)."""
    torch.set_num_threads(1)
    data = torch.randint(0, V, (8, 32), generator=torch.Generator().manual_seed(0))  # (N, T)
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(vocab_size=V, dim=48, n_layers=2, n_heads=4, max_seq_len=64)
    )
    losses = hyperfit(model, data, epochs=150, lr=1e-2, batch_size=8, seed=0)
    assert losses[-1] < 0.3, f"the test model did not memorise its data: loss {losses[-1]:.3f}"
    return model, data


def copied_kgrams(rows: torch.Tensor, prompt_len: int, kgrams: set[tuple[int, ...]]) -> int:
    """Brute force: how many k-grams that end at a generated token occur in ``kgrams``."""
    hits = 0
    for row in rows.tolist():
        for t in range(prompt_len, len(row)):
            if t - K + 1 >= 0 and tuple(row[t - K + 1 : t + 1]) in kgrams:
                hits += 1
    return hits


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_blocker_blocks_every_training_kgram(
    memorised: tuple[Transformer, torch.Tensor], temperature: float
) -> None:
    model, data = memorised
    kgrams = training_kgrams(data.tolist(), K)
    prompts = data[:, :PROMPT]  # (N, PROMPT): training contexts invite copying
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=temperature, seed=0)
    free = generate(model, prompts, cfg, strategy="greedy" if temperature == 0 else "sample")
    assert copied_kgrams(free.sequences, PROMPT, kgrams) > NEW  # it does copy without the blocker
    blocker = NgramBlocker(data.tolist(), K, V)
    out = generate(model, prompts, cfg, strategy="constrained", allowed_next=blocker.allowed_next)
    assert out.sequences.shape == (data.shape[0], PROMPT + NEW)
    assert copied_kgrams(out.sequences, PROMPT, kgrams) == 0
    # longer n-grams contain a k-gram, so none of length K + 2 is copied either
    assert copied_kgrams(out.sequences, PROMPT, training_kgrams(data.tolist(), K + 2)) == 0


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(0, 5), max_size=12), max_size=6),
    k=st.integers(2, 5),
    row=st.lists(st.integers(0, 5), max_size=8),
)
def test_index_equals_brute_force(seqs: list[list[int]], k: int, row: list[int]) -> None:
    blocker = NgramBlocker(seqs, k, vocab_size=6)
    kgrams = training_kgrams(seqs, k)
    assert blocker.kgrams() == kgrams
    allowed = set(blocker.allowed_next(torch.tensor(row, dtype=torch.long)).tolist())
    expect = {
        t for t in range(6) if len(row) < k - 1 or (*row[len(row) - k + 1 :], t) not in kgrams
    }
    assert allowed == expect


def test_blocker_rejects_k1() -> None:
    with pytest.raises(ConfigError, match="k >= 2"):
        NgramBlocker([[1, 2]], 1, 4)


def test_type_token_ratio_by_hand() -> None:
    assert type_token_ratio([1, 2, 3, 4]) == 1.0
    assert type_token_ratio([7, 7, 7, 7]) == 0.25
    assert type_token_ratio([1, 2, 1, 3, 1]) == 3 / 5
    with pytest.raises(InputError):
        type_token_ratio([])


def test_entropy_by_hand() -> None:
    uniform = torch.zeros(4)
    assert next_token_entropy(uniform).item() == pytest.approx(math.log(4))
    one_hot = torch.tensor([0.0, float("-inf"), float("-inf")])
    assert next_token_entropy(one_hot).item() == pytest.approx(0.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    by_hand = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # = 1.5 ln 2
    assert next_token_entropy(p.log()).item() == pytest.approx(by_hand, rel=1e-6)


def test_held_out_stats_match_a_direct_computation() -> None:
    torch.manual_seed(1)
    model = Transformer(TransformerConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2))
    rows = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(1))
    ent, ppl = held_out_stats(model, rows, batch_size=2)
    with torch.no_grad():
        probs = model(rows).logits[:, :-1].softmax(-1).double()  # (3, 8, V)
    ref_ent = float(-(probs * probs.log()).sum(-1).mean())
    target_p = probs.gather(-1, rows[:, 1:, None]).squeeze(-1)  # (3, 8)
    ref_ppl = math.exp(float(-target_p.log().mean()))
    assert ent == pytest.approx(ref_ent, rel=1e-5)
    assert ppl == pytest.approx(ref_ppl, rel=1e-5)


@pytest.mark.slow
def test_small_hyperfitting_experiment() -> None:
    torch.set_num_threads(1)
    report, _, _ = run_experiment(HyperfitConfig())
    print(dataclasses.asdict(report))  # TTR before / after is reported, not gated
    assert report.train_loss_after < 0.05
    assert report.entropy_after < report.entropy_before
