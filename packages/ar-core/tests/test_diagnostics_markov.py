"""Markov-category diagnostics: head entropy vs the analytic conditional entropy, the
pull-back Fisher metric vs finite-difference KL, the information-surplus probe."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ar_core.diagnostics import (
    MarkovChain,
    TabularLM,
    fisher_check,
    fisher_metric,
    fit_markov,
    head_entropy,
    model_information_surplus,
    output_head,
    softmax_head_fisher,
)
from ar_core.model import Transformer, TransformerConfig

torch.set_num_threads(1)


def test_conditional_entropy_matches_an_independent_computation() -> None:
    # order 2 over 3 symbols: stationary law of pairs by power iteration, entropy by loops
    chain = MarkovChain.random(2, 3, seed=4)
    P = chain.transitions
    pi = np.full(9, 1 / 9)
    for _ in range(5000):
        new = np.zeros(9)
        for a in range(3):
            for b in range(3):
                for c in range(3):
                    new[3 * b + c] += pi[3 * a + b] * P[3 * a + b, c]
        pi = new
    h = -sum(pi[s] * P[s, c] * np.log(P[s, c]) for s in range(9) for c in range(3))
    assert chain.conditional_entropy() == pytest.approx(h, abs=1e-10)
    # sampled sequences are stationary: empirical pair frequencies match pi
    x = chain.sample(400, 40, seed=0).numpy()
    freq = np.bincount((3 * x[:, :-1] + x[:, 1:]).ravel(), minlength=9) / (400 * 39)
    assert np.abs(freq - pi).max() < 0.01


@pytest.mark.parametrize("order", [1, 2])
def test_head_entropy_of_exact_and_fitted_models_within_002_nats(order: int) -> None:
    chain = MarkovChain.random(order, 4, seed=order)
    test = chain.sample(300, 64, seed=11)
    analytic = chain.conditional_entropy()
    exact = head_entropy(TabularLM(chain), test, context=order)
    assert abs(exact.entropy - analytic) < 0.02
    # a model *fitted* on samples of the chain (counts -> tabular CausalLM)
    train = chain.sample(400, 64, seed=12)
    probs = fit_markov(train, 4, order, alpha=0.5)(torch.tensor([[0] * order]))  # warm call
    assert probs.shape == (1, order, 4)
    counts = np.zeros((4**order, 4))
    x = train.numpy()
    ctx = sum(x[:, i : x.shape[1] - order + i] * 4 ** (order - 1 - i) for i in range(order))
    np.add.at(counts, (ctx.ravel(), x[:, order:].ravel()), 1)
    fitted = MarkovChain((counts + 0.5) / (counts + 0.5).sum(1, keepdims=True), order)
    got = head_entropy(TabularLM(fitted), test, context=order)
    assert abs(got.entropy - analytic) < 0.02, (got.entropy, analytic)
    # the measure sees a wrong model: an order-0 (unigram) model is far off on order >= 1
    uniform = MarkovChain(np.full((4**order, 4), 0.25), order)
    assert head_entropy(TabularLM(uniform), test, context=order).entropy - analytic > 0.1


def _kl_converges(fn, x, v) -> None:  # type: ignore[no-untyped-def]
    rows = fisher_check(fn, x, v, [1e-1, 1e-2, 1e-3, 1e-4])
    gaps = [r[3] for r in rows]
    assert all(a > b for a, b in itertools.pairwise(gaps)), gaps  # shrinks with eps
    assert gaps[-1] < 1e-3 and rows[0][2] > 0
    # O(eps) convergence: the gap falls ~10x per decade
    assert gaps[1] / gaps[2] > 5


def test_fisher_metric_closed_form_and_finite_difference_kl() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 6, generator=g, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    h = torch.randn(6, generator=g, dtype=torch.float64)
    v = torch.randn(6, generator=g, dtype=torch.float64)
    G = fisher_metric(lambda z: W @ z + b, h)
    p = torch.softmax(W @ h + b, -1)
    ref = W.T @ (torch.diag(p) - torch.outer(p, p)) @ W
    assert torch.allclose(G, ref, atol=1e-12)
    assert torch.allclose(softmax_head_fisher(W, h), fisher_metric(lambda z: W @ z, h), atol=1e-12)
    assert torch.linalg.eigvalsh(G).min() > -1e-10  # positive semi-definite
    _kl_converges(lambda z: W @ z + b, h, v)
    # a non-linear map (a tiny MLP's parameters are the point): the pull-back still holds
    A = torch.randn(5, 4, generator=g, dtype=torch.float64)
    _kl_converges(lambda z: A @ torch.tanh(z), torch.randn(4, dtype=torch.float64), v[:4])


def test_fisher_metric_on_a_transformer_output_head() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=11, dim=16, n_layers=1, n_heads=2))
    tokens = torch.randint(0, 11, (1, 5))
    h = model(tokens).hidden[0, -1].double()
    fn = output_head(model)
    assert torch.allclose(fn(h).float(), model(tokens).logits[0, -1], atol=1e-5)
    G = fisher_metric(fn, h)
    assert torch.allclose(G, softmax_head_fisher(model.output.weight, h), atol=1e-12)
    _kl_converges(fn, h, torch.randn(16, dtype=torch.float64) * 5)


def test_information_surplus_zero_on_order1_positive_on_order2() -> None:
    # the chain's sufficient statistic as H_t: TabularLM's hidden holds the last k tokens
    one = MarkovChain.random(1, 4, seed=5)
    two = MarkovChain.random(2, 4, seed=5)
    s1 = model_information_surplus(
        TabularLM(MarkovChain.random(2, 4, seed=9)), one.sample(160, 40, seed=1), iters=100
    )  # H_t carries w_{t-1}, w_{t-2}
    s2 = model_information_surplus(TabularLM(two), two.sample(160, 40, seed=1), iters=100)
    assert abs(s1.surplus) < 0.01 and abs(s1.surplus) < 3 * s1.stderr + 1e-3, s1
    assert s2.surplus > 0.1 and s2.surplus > 10 * s2.stderr, s2
