"""Next-element prediction on a known grammar: the oracle scores best; the order-2 and
order-3 Markov models and a small ar-core Transformer come within a stated epsilon of it;
the trained Transformer's head entropy is within 0.02 nats of the grammar's."""

from __future__ import annotations

import pytest
import torch

from ar_core.diagnostics import (
    MarkovChain,
    fit_all_k_markov,
    fit_hmm,
    fit_lstm,
    fit_markov,
    fit_transformer,
    head_entropy,
    score_predictions,
    transformer_predictor,
)

torch.set_num_threads(1)

# the grammar: a probabilistic automaton whose state is its last two symbols (true order
# 2), 5 symbols, sparse Dirichlet(0.3) rows; 400 training and 400 test strings of 32
EPS_BRIER_EXCESS = 0.02  # mean |p - q|^2 to the oracle q: the stated epsilon
GRAMMAR = MarkovChain.random(2, 5, seed=7, concentration=0.3)
TRAIN = GRAMMAR.sample(400, 32, seed=1)
TEST = GRAMMAR.sample(400, 32, seed=2)


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    # seed 0: 2 layers, dim 64, 300 AdamW updates of 32 strings, lr 5e-3
    model, losses = fit_transformer(TRAIN, 5, dim=64, steps=300, lr=5e-3, seed=0)
    assert losses[-1] < losses[0] - 0.3
    return model


def test_trained_transformer_head_entropy_within_002_nats(transformer: torch.nn.Module) -> None:
    got = head_entropy(transformer, TEST, context=2)
    assert abs(got.entropy - GRAMMAR.conditional_entropy()) < 0.02, got.entropy


def test_oracle_best_markov_and_transformer_within_epsilon(transformer: torch.nn.Module) -> None:
    oracle = GRAMMAR.next_probs(TEST)
    rows = {
        "oracle": oracle,
        "markov-1": fit_markov(TRAIN, 5, 1)(TEST),
        "markov-2": fit_markov(TRAIN, 5, 2)(TEST),
        "markov-3": fit_markov(TRAIN, 5, 3)(TEST),
        "all-k": fit_all_k_markov(TRAIN, 5, 3, min_count=20)(TEST),
        "lstm": fit_lstm(TRAIN, 5, steps=100, seed=0)[0](TEST),
        "transformer": transformer_predictor(transformer)(TEST),
    }
    scores = {k: score_predictions(p, TEST, start=2, oracle=oracle) for k, p in rows.items()}
    best = scores["oracle"]
    for name, s in scores.items():
        assert best.brier <= s.brier and best.accuracy >= s.accuracy - 1e-12, name
        assert s.excess is not None and s.excess >= 0
    for name in ("markov-2", "markov-3", "transformer"):
        assert scores[name].excess < EPS_BRIER_EXCESS, (name, scores[name])
        assert scores[name].brier - best.brier < EPS_BRIER_EXCESS
    # the comparison can fail: an order-1 model (k < true order) is far outside epsilon
    assert scores["markov-1"].excess > 10 * EPS_BRIER_EXCESS
    # a wrong oracle is not the best: the Brier score is strictly proper
    shuffled = oracle[..., torch.tensor([1, 2, 3, 4, 0])]
    assert score_predictions(shuffled, TEST, start=2).brier > best.brier + 0.1


def test_hmm_row_runs_and_trails_the_oracle() -> None:
    pytest.importorskip("hmmlearn")
    small = TRAIN[:100]
    probs = fit_hmm(small, 5, 4, iters=10, seed=0)(TEST[:100])
    assert probs.shape == (100, 32, 5)
    assert torch.allclose(probs.sum(-1), torch.ones(100, 32, dtype=probs.dtype))
    oracle = GRAMMAR.next_probs(TEST[:100])
    hmm = score_predictions(probs, TEST[:100], start=2, oracle=oracle)
    assert hmm.brier > score_predictions(oracle, TEST[:100], start=2).brier


def test_brier_score_by_hand() -> None:
    tokens = torch.tensor([[0, 1, 2]])
    probs = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.2, 0.8], [1 / 3, 1 / 3, 1 / 3]]])
    s = score_predictions(probs, tokens, start=1)
    # element 1 (was 1): (0.5)^2 + (0.5)^2 = 0.5; element 2 (was 2): 0.04 + 0.04 = 0.08
    assert s.brier == pytest.approx((0.5 + 0.08) / 2)
    assert s.accuracy == pytest.approx(0.5)  # argmax of row 0 is 0 (tie -> first), row 1 is 2
