"""Logits processors against sort-based references, and the sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig
from ar_core.sampling import (
    MinP,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    Typical,
    build_processors,
    sample,
)

logit_rows = st.lists(
    st.floats(-20, 20, allow_nan=False, allow_infinity=False), min_size=2, max_size=40
)


def _top_p_reference(logits: torch.Tensor, p: float) -> set[int]:
    """Smallest prefix of the descending sort whose mass is >= p (plain Python)."""
    probs = torch.softmax(logits.double(), -1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_sort_reference(p: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 50, generator=g) * 3
    out = TopP(p)(logits, None)
    for row in range(16):
        kept = set(torch.isfinite(out[row]).nonzero().flatten().tolist())
        assert kept == _top_p_reference(logits[row], p)


@settings(max_examples=200, deadline=None)
@given(logit_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_sufficient_set(row: list[float], p: float) -> None:
    logits = torch.tensor([row], dtype=torch.float64)
    probs = torch.softmax(logits, -1)[0]
    kept = torch.isfinite(TopP(p)(logits, None)[0])
    mass = probs[kept].sum().item()
    assert mass >= p - 1e-9  # enough mass
    smallest_kept = probs[kept].min().item()
    assert mass - smallest_kept < p + 1e-9  # and no token more than needed
    # every kept token is at least as likely as every removed one
    if (~kept).any():
        assert smallest_kept >= probs[~kept].max().item()


@settings(max_examples=100, deadline=None)
@given(logit_rows, st.integers(1, 50))
def test_top_k_keeps_k_largest(row: list[float], k: int) -> None:
    logits = torch.tensor([row])
    kept = torch.isfinite(TopK(k)(logits, None)[0])
    assert kept.sum() >= min(k, len(row))  # ties at the k-th value are kept
    kth = torch.sort(logits[0], descending=True).values[min(k, len(row)) - 1]
    assert torch.equal(kept, logits[0] >= kth)


@settings(max_examples=100, deadline=None)
@given(logit_rows, st.floats(0.0, 1.0))
def test_min_p_threshold(row: list[float], min_p: float) -> None:
    logits = torch.tensor([row], dtype=torch.float64)
    probs = torch.softmax(logits, -1)[0]
    kept = torch.isfinite(MinP(min_p)(logits, None)[0])
    assert torch.equal(kept, probs >= min_p * probs.max())
    assert kept[probs.argmax()]


def test_typical_against_reference() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 30, generator=g, dtype=torch.float64) * 2
    mass = 0.7
    out = Typical(mass)(logits, None)
    for r in range(8):
        logp = torch.log_softmax(logits[r], -1)
        ent = -(logp.exp() * logp).sum()
        order = sorted(range(30), key=lambda i: abs(-logp[i].item() - ent.item()))
        kept, m = set(), 0.0
        for i in order:
            kept.add(i)
            m += logp[i].exp().item()
            if m >= mass:
                break
        assert set(torch.isfinite(out[r]).nonzero().flatten().tolist()) == kept


def test_repetition_penalty_ctrl_rule_ignores_negative_ids() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 3.0]])
    out = RepetitionPenalty(2.0)(logits, torch.tensor([[0, 1, -1, 1]]))
    assert out.tolist() == [[1.0, -4.0, 1.0, 3.0]]


def test_temperature_zero_is_argmax_and_scaling() -> None:
    logits = torch.tensor([[0.5, 3.0, 3.0, -1.0]])
    out = Temperature(0)(logits, None)
    assert torch.isfinite(out).sum() == 1 and out.argmax() == 1
    assert sample(logits, torch.Generator(), temperature=0).tolist() == [1]
    torch.testing.assert_close(Temperature(2.0)(logits, None), logits / 2)
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(Temperature(0)(logits, None), g)) for _ in range(20)}
    assert draws == {1}


def test_seeded_sampling_is_reproducible() -> None:
    logits = torch.randn(4, 100)
    a = [sample(logits, torch.Generator().manual_seed(7)) for _ in range(3)]
    b = [sample(logits, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_sampler_matches_the_distribution() -> None:
    """Chi-square goodness of fit at significance 0.001 (fixed seed)."""
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5]])
    g = torch.Generator().manual_seed(0)
    n = 20000
    draws = sample(logits.expand(n, 5).contiguous(), g)
    observed = torch.bincount(draws, minlength=5).double().numpy()
    expected = (torch.softmax(logits[0].double(), -1) * n).numpy()
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_all_neg_inf_row_is_a_clear_error() -> None:
    logits = torch.zeros(5, 4)
    logits[3] = -math.inf
    with pytest.raises(InputError, match="all logits are -inf in row 3"):
        sample(logits, torch.Generator())


def test_build_processors_from_config() -> None:
    cfg = GenerationConfig(temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.1)
    kinds = [type(p).__name__ for p in build_processors(cfg)]
    assert kinds == ["RepetitionPenalty", "Temperature", "TopK", "TopP"]
    assert build_processors(GenerationConfig()) == []
    with pytest.raises(ConfigError, match="top_p"):
        TopP(1.5)
