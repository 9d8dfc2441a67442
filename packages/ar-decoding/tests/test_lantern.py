"""LANTERN relaxed acceptance: delta = 0 is exact (chi-square at level 0.001 against the
enumerated joint; an always-accept rule fails with p < 1e-6), greedy LANTERN equals
greedy, the closed-form per-step distribution matches the sampler, and delta > 0 raises
the mean accepted length. What delta bounds is checked by exact enumeration: the
per-draft relaxation (p(A) <= delta) and the per-step total variation between its
derived lower and upper bounds – which can exceed delta (a worked counterexample)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import ALPHA, BROKEN, chi2_pvalue, exact_joint, tiny
from scipy.stats import chisquare

import ar_decoding.lantern as lantern_module
from ar_core import generate
from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig
from ar_decoding.lantern import accept_relaxed, latent_neighbourhood, step_distribution


def random_neighbours(V: int, k: int, seed: int) -> torch.Tensor:
    """(V, k): for each token k other tokens in a random order (a stand-in for VQ distances)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(V):
        others = torch.tensor([j for j in range(V) if j != i])
        rows.append(others[torch.randperm(V - 1, generator=gen)[:k]])
    return torch.stack(rows)


def _pq(V: int, seed: int, sharp: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(sharp * torch.randn(V, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(sharp * torch.randn(V, generator=gen, dtype=torch.float64), -1)
    return p, q


def always_accept(
    draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor, gen: torch.Generator, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    B, k = draft.shape
    bonus = torch.multinomial(p[:, k].float(), 1, generator=gen).squeeze(1)
    return torch.full((B,), k), bonus


def test_delta_zero_matches_target_and_always_accept_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    V, n, M = 4, 3, 8000
    model = tiny(V, dim=16, n_heads=2, n_kv_heads=1, ffn_hidden=64, std=0.5)
    joint = exact_joint(model, [1, 2], n)
    x = torch.tensor([[1, 2]] * M)
    kw: dict[str, Any] = dict(
        strategy="lantern", neighbours=random_neighbours(V, 3, 0), delta=0.0, window=2
    )
    out = generate(model, x, GenerationConfig(max_new_tokens=n, seed=1), **kw)
    assert chi2_pvalue(out.sequences[:, 2:], joint, V) > ALPHA
    monkeypatch.setattr(lantern_module, "accept_relaxed", always_accept)
    bad = generate(model, x, GenerationConfig(max_new_tokens=n, seed=1), **kw)
    assert chi2_pvalue(bad.sequences[:, 2:], joint, V) < BROKEN


@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_greedy_lantern_equals_greedy(delta: float) -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(1))
    lengths = [6, 2, 4]
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.0)
    ref = generate(model, x, cfg, prompt_lengths=lengths)
    out = generate(
        model, x, cfg, strategy="lantern", prompt_lengths=lengths,
        neighbours=random_neighbours(32, 8, 1), delta=delta, window=4,
    )  # fmt: skip
    assert torch.equal(out.sequences, ref.sequences)


@pytest.mark.parametrize("delta", [0.0, 0.05, 0.2])
def test_closed_form_step_distribution_matches_sampler(delta: float) -> None:
    V, M = 6, 200_000
    p, q = _pq(V, seed=2)
    nb = random_neighbours(V, 4, seed=3)
    expected = step_distribution(p, q, nb, delta)  # (V,)
    if delta == 0.0:
        torch.testing.assert_close(expected, p)  # delta = 0 is exactly the target
    gen = torch.Generator().manual_seed(4)
    draft = torch.multinomial(q.float(), M, replacement=True, generator=gen)[:, None]  # (M, 1)
    q_b = q.float().expand(M, 1, V)
    p_b = p.float().expand(M, 2, V)
    n_acc, nxt = accept_relaxed(draft, q_b, p_b, gen, neighbours=nb, delta=delta)
    token = torch.where(n_acc == 1, draft[:, 0], nxt)
    counts = torch.bincount(token, minlength=V).double().numpy()
    assert chisquare(counts, (expected * M).numpy()).pvalue > ALPHA


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


@pytest.mark.parametrize("seed", range(6))
def test_total_variation_between_derived_bounds(seed: int) -> None:
    """Exact per-step TV from the target, and the bounds it provably obeys:

    * lower: accepted mass alone exceeds p(y) by max(0, min(q, p + p(A)) - p) at each y;
    * upper: coupled with speculative sampling (same x, same u), the outputs differ only
      when the relaxed rule accepts and the exact one would not, or when both reject and
      the residual lost A(x): sum_x [min(q, p + p(A)) - min(q, p)] + q (1 - a) r0(A).
    """
    V, delta = 8, 0.1
    p, q = _pq(V, seed=seed)
    nb = random_neighbours(V, 5, seed=seed)
    tv = _tv(step_distribution(p, q, nb, delta), p)
    p_a, members = latent_neighbourhood(p.expand(V, V), torch.arange(V), nb, delta)  # (V,), (V, V)
    assert bool((p_a <= delta + 1e-12).all())  # the per-draft relaxation is <= delta
    relaxed_acc = torch.minimum(q, p + p_a)
    lower = float((relaxed_acc - p).clamp(min=0).sum())
    accept = (relaxed_acc / q).clamp(max=1)
    r0 = (p - q).clamp(min=0) / (p - q).clamp(min=0).sum()
    lost = (members.double() * r0).sum(-1)  # r0(A(x)) per draft x
    upper = float((relaxed_acc - torch.minimum(q, p)).sum() + (q * (1 - accept) * lost).sum())
    assert lower - 1e-12 <= tv <= upper + 1e-12


def test_total_variation_can_exceed_delta() -> None:
    """Counterexample to 'per-step TV <= delta': every drafted token borrows its partner's
    mass. p uniform over 8 tokens, q uniform over tokens 0..3, partner of i is i + 4.
    p(A) = 1/8 <= delta, so every draft is accepted: the output is q, TV = 1/2 > delta."""
    V, delta = 8, 0.125
    p = torch.full((V,), 1 / V, dtype=torch.float64)
    q = torch.cat([torch.full((4,), 0.25), torch.zeros(4)]).double()
    nb = torch.tensor([[(i + 4) % V] for i in range(V)])
    tv = _tv(step_distribution(p, q, nb, delta), p)
    assert tv == pytest.approx(0.5)
    assert _tv(step_distribution(p, q, nb, 0.0), p) == pytest.approx(0.0)


def test_delta_raises_mean_accepted_length() -> None:
    V, M = 16, 512
    model = tiny(V, dim=32, ffn_hidden=64, std=0.15)
    x = torch.randint(0, V, (M, 4), generator=torch.Generator().manual_seed(0))
    nb = random_neighbours(V, 8, seed=5)
    cfg = GenerationConfig(max_new_tokens=12, seed=7)
    lengths = {}
    for delta in (0.0, 0.2):
        out = generate(model, x, cfg, strategy="lantern", neighbours=nb, delta=delta, window=4)
        lengths[delta] = out.stats.mean_accepted_length
    assert lengths[0.2] > lengths[0.0] + 0.05, lengths


def test_bad_kwargs() -> None:
    model = tiny(8, dim=32, ffn_hidden=64)
    x = torch.zeros(1, 3, dtype=torch.long)
    cfg = GenerationConfig(max_new_tokens=2)
    nb = random_neighbours(8, 3, 0)
    with pytest.raises(ConfigError, match="neighbours"):
        generate(model, x, cfg, strategy="lantern", neighbours=nb[:4])
    with pytest.raises(ConfigError, match="twice"):
        generate(model, x, cfg, strategy="lantern", neighbours=torch.zeros(8, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="delta"):
        generate(model, x, cfg, strategy="lantern", neighbours=nb, delta=1.5)
    with pytest.raises(ConfigError, match=r"k must"):
        generate(model, x, cfg, strategy="lantern", neighbours=nb, k=9)
