"""Acceptance rules of ar_decoding.verify: greedy exactness, and the speculative-sampling
distribution checked by chi-square tests (significance level 0.001 for the correct rule;
a deliberately broken rule must fail with p < 1e-6)."""

from __future__ import annotations

import pytest
import torch
from helpers import ALPHA, BROKEN
from scipy.stats import chisquare

import ar_decoding.verify as verify
from ar_core.errors import InputError
from ar_decoding.verify import accept_greedy, accept_sampling, residual_distribution


def _logits_with_argmax(argmax: list[list[int]], V: int) -> torch.Tensor:
    out = torch.randn(len(argmax), len(argmax[0]), V)
    out.scatter_(-1, torch.tensor(argmax)[..., None], 100.0)
    return out


def test_accept_greedy_counts_and_next_token() -> None:
    target = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]
    draft = torch.tensor([[1, 2, 3], [1, 0, 3], [0, 2, 3]])
    n, nxt = accept_greedy(draft, _logits_with_argmax(target, 6))
    assert n.tolist() == [3, 1, 0]
    assert nxt.tolist() == [4, 2, 1]


def test_accept_greedy_rejects_bad_shapes() -> None:
    with pytest.raises(InputError, match="k\\+1"):
        accept_greedy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 5))


def test_residual_distribution() -> None:
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]])
    r = residual_distribution(p, q)
    assert torch.allclose(r[0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(r[1], p[1])  # empty residual (p == q): falls back to p


def _dist(V: int, gen: torch.Generator, sharp: float = 2.0) -> torch.Tensor:
    return torch.softmax(sharp * torch.randn(V, generator=gen), -1)


def _run_sampling(B: int, k: int, V: int, seed: int, same: bool = False):
    gen = torch.Generator().manual_seed(seed)
    p = torch.stack([_dist(V, gen) for _ in range(k + 1)])  # (k+1, V)
    q = p[:k].clone() if same else torch.stack([_dist(V, gen) for _ in range(k)])  # (k, V)
    draft = torch.multinomial(q, B, replacement=True, generator=gen).T.contiguous()  # (B, k)
    n, nxt = accept_sampling(draft, q.expand(B, k, V), p.expand(B, k + 1, V), generator=gen)
    return p, q, draft, n, nxt


def _chi2(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() / probs.double().sum() * counts.sum()
    return float(chisquare(counts.numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize("k", [1, 3])
def test_accept_sampling_first_token_is_target_distributed(k: int) -> None:
    p, _, draft, n, nxt = _run_sampling(B=20000, k=k, V=6, seed=k)
    first = torch.where(n > 0, draft[:, 0], nxt)
    assert _chi2(first, p[0]) > ALPHA
    # second emitted token, given the first was accepted (positions are independent)
    rows = n > 0
    second = torch.where(n[rows] > 1, draft[rows, 1], nxt[rows]) if k > 1 else nxt[rows]
    assert _chi2(second, p[1]) > ALPHA


def test_accept_sampling_all_accepted_draws_bonus_from_p_k() -> None:
    p, _, _, n, nxt = _run_sampling(B=20000, k=2, V=5, seed=7, same=True)
    assert bool((n == 2).all())  # q == p accepts everything
    assert _chi2(nxt, p[2]) > ALPHA


def test_accept_sampling_without_bonus_returns_minus_one() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 3, 5, generator=gen), -1)
    draft = torch.multinomial(p[:, 0], 1, generator=gen)  # (4, 1)
    n, nxt = accept_sampling(draft, p[:, :1], p[:, :1], gen, bonus=False)
    assert bool((n == 1).all()) and bool((nxt == -1).all())


def test_broken_residual_fails_the_same_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Residual = p instead of norm(max(p - q, 0)): the first token is no longer ~ p."""
    monkeypatch.setattr(verify, "residual_distribution", lambda p, q: p)
    p, _, draft, n, nxt = _run_sampling(B=20000, k=1, V=6, seed=1)
    first = torch.where(n > 0, draft[:, 0], nxt)
    assert _chi2(first, p[0]) < BROKEN
