"""Bad input to every public function of ar_core.diagnostics is a one-line ConfigError or
InputError naming the problem (never a crash deep in numpy or torch)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ar_core import diagnostics as d
from ar_core.diagnostics.plot import line_plot
from ar_core.errors import ArError, ConfigError, InputError
from ar_core.model import Transformer, TransformerConfig

CHAIN = d.MarkovChain.random(1, 3, seed=0)
TOK = CHAIN.sample(4, 10, seed=0)
LM = d.TabularLM(CHAIN)
W = torch.randn(5, 3, dtype=torch.float64)
H = torch.randn(3, dtype=torch.float64)


def fn(z: torch.Tensor) -> torch.Tensor:
    return W @ z


CASES: list[tuple[str, Callable[[], Any], type[ArError], str]] = [
    ("rows", lambda: d.MarkovChain([[0.5, 0.6], [0.5, 0.5]], 1), InputError, "sum to 1"),
    ("row count", lambda: d.MarkovChain(np.full((3, 3), 1 / 3), 2), InputError, "9 rows"),
    ("order", lambda: d.MarkovChain(np.full((3, 3), 1 / 3), 0), ConfigError, "order"),
    ("vocab", lambda: d.MarkovChain.random(1, 1), ConfigError, "vocab_size"),
    ("concentration", lambda: d.MarkovChain.random(1, 3, concentration=-1), ConfigError, "conc"),
    ("sample length", lambda: d.MarkovChain.random(3, 2).sample(2, 2), ConfigError, "length"),
    ("tabular chain", lambda: d.TabularLM("chain"), InputError, "MarkovChain"),  # type: ignore[arg-type]
    ("tabular cache", lambda: LM(TOK, cache=object()), InputError, "no cache"),
    ("tabular ids", lambda: LM(TOK + 5), InputError, "outside the vocabulary"),
    ("tabular new_cache", lambda: LM.new_cache(1), InputError, "no KV cache"),
    ("probs model", lambda: d.next_token_probs(object(), TOK), ConfigError, "CausalLM"),
    ("probs float", lambda: d.next_token_probs(LM, TOK.float()), InputError, "integer"),
    ("probs 1-D", lambda: d.next_token_probs(LM, TOK[0]), InputError, r"\(N, T\)"),
    ("probs long", lambda: d.next_token_probs(d.TabularLM(CHAIN, 5), TOK), InputError, "max_seq"),
    ("entropy context", lambda: d.head_entropy(LM, TOK, context=10), InputError, "context"),
    ("fisher point", lambda: d.fisher_metric(fn, H[None]), InputError, "1-D"),
    ("fisher fn", lambda: d.fisher_metric(3, H), ConfigError, "callable"),  # type: ignore[arg-type]
    ("fisher logits", lambda: d.fisher_metric(lambda z: z.sum(), H), InputError, "1-D tensor"),
    ("fisher nan", lambda: d.fisher_metric(fn, H * float("nan")), InputError, "finite"),
    ("head fisher", lambda: d.softmax_head_fisher(W.T, H), InputError, r"\(V, C\)"),
    ("kl eps", lambda: d.kl_along(fn, H, H, 0.0), ConfigError, "eps"),
    ("kl direction", lambda: d.kl_along(fn, H, H[:2], 0.1), InputError, "direction"),
    ("check eps", lambda: d.fisher_check(fn, H, H, []), ConfigError, "eps"),
    ("output head", lambda: d.output_head(LM), ConfigError, "lm_head"),
    (
        "surplus shape",
        lambda: d.information_surplus(torch.zeros(4, 9, 2), TOK, 3),
        InputError,
        "hidden",
    ),
    (
        "surplus horizon",
        lambda: d.information_surplus(torch.zeros(4, 10, 2), TOK, 3, horizon=1),
        ConfigError,
        "horizon",
    ),
    (
        "surplus split",
        lambda: d.information_surplus(torch.zeros(4, 10, 2), TOK, 3, train_fraction=1.0),
        ConfigError,
        "train_fraction",
    ),
    ("surplus model", lambda: d.model_information_surplus(None, TOK), ConfigError, "CausalLM"),
    ("joint axes", lambda: d.directed_information_exact(np.full((2, 2), 0.25), 2), InputError, "4"),
    ("joint sum", lambda: d.directed_information_exact(np.full((2, 2), 0.3), 1), InputError, "sum"),
    (
        "joint negative",
        lambda: d.directed_information_exact(np.array([[1.5, -0.5], [0, 0]]), 1),
        InputError,
        ">= 0",
    ),
    (
        "logprob shape",
        lambda: d.directed_information_from_logprobs(torch.zeros(2, 3), torch.zeros(2, 2)),
        InputError,
        "shapes differ",
    ),
    (
        "logprob sign",
        lambda: d.directed_information_from_logprobs(torch.ones(2, 3), torch.zeros(2, 3)),
        InputError,
        "<= 0",
    ),
    (
        "var unstable",
        lambda: d.var1_directed_information([[1.1, 0], [0, 0.5]], [1, 1]),
        InputError,
        "spectral radius",
    ),
    ("var noise", lambda: d.var1_directed_information(np.eye(2) * 0.5, [1, 0]), InputError, "> 0"),
    ("var shape", lambda: d.simulate_var1(np.eye(3) * 0.5, [1, 1], 10), InputError, "2x2"),
    ("var n", lambda: d.simulate_var1(np.eye(2) * 0.5, [1, 1], 0), ConfigError, "n must"),
    (
        "gauss lengths",
        lambda: d.gaussian_directed_information(np.zeros(100), np.zeros(99)),
        InputError,
        "equal length",
    ),
    (
        "gauss few",
        lambda: d.gaussian_directed_information(np.zeros(20), np.zeros(20)),
        InputError,
        "too few",
    ),
    (
        "gauss nan",
        lambda: d.gaussian_directed_information(np.full(200, np.nan), np.zeros(200)),
        InputError,
        "finite",
    ),
    ("granger const", lambda: d.granger_test(np.ones(100), np.arange(100.0)), ConfigError, "const"),
    (
        "score sums",
        lambda: d.score_predictions(torch.full((4, 10, 3), 0.5), TOK),
        InputError,
        "sum to 1",
    ),
    (
        "score start",
        lambda: d.score_predictions(torch.full((4, 10, 3), 1 / 3), TOK, start=10),
        InputError,
        "start",
    ),
    ("markov order", lambda: d.fit_markov(TOK, 3, -1), ConfigError, "order"),
    ("markov ids", lambda: d.fit_markov(TOK, 2, 1), InputError, "vocabulary"),
    ("all-k order", lambda: d.fit_all_k_markov(TOK, 3, 0), ConfigError, "max_order"),
    ("hmm states", lambda: d.fit_hmm(TOK, 3, 0), ConfigError, "n_states"),
    ("lstm steps", lambda: d.fit_lstm(TOK, 3, steps=0), ConfigError, "steps"),
    ("transformer lr", lambda: d.fit_transformer(TOK, 3, lr=0.0), ConfigError, "lr"),
    (
        "plot empty",
        lambda: line_plot(Path("x.svg"), {}, title="", xlabel="", ylabel=""),
        InputError,
        "no points",
    ),
    (
        "plot log",
        lambda: line_plot(
            Path("x.svg"), {"a": [(1, -1)]}, title="", xlabel="", ylabel="", logy=True
        ),
        InputError,
        "cannot be drawn",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(case: tuple[str, Callable[[], Any], type, str]) -> None:
    _, call, error, words = case
    with pytest.raises(error, match=words):
        call()


def test_output_head_refuses_a_model_without_a_linear_head() -> None:
    model = Transformer(TransformerConfig(vocab_size=5, dim=8, n_layers=1, n_heads=2))
    assert callable(d.output_head(model))
    model.output = torch.nn.Identity()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="own"):
        d.output_head(model)


@pytest.mark.parametrize("module", ["statsmodels.tsa.stattools", "hmmlearn.hmm"])
def test_missing_extra_names_the_install(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import of it now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install ar-core\[diagnostics\]"):
        if module.startswith("statsmodels"):
            d.granger_test(np.arange(100.0) % 7, np.arange(100.0) % 5)
        else:
            d.fit_hmm(TOK, 3, 2)
