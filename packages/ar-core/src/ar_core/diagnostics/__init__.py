"""Diagnostics for any model of the ``CausalLM`` protocol (issue 18, item 5).

* :mod:`~ar_core.diagnostics.markov` – known Markov chains, their exact conditional
  entropy, the chain as a ``CausalLM`` (:class:`TabularLM`), a model's head entropy.
* :mod:`~ar_core.diagnostics.fisher` – the pull-back Fisher metric of a softmax head and
  its finite-difference KL check.
* :mod:`~ar_core.diagnostics.surplus` – the information-surplus probe
  I(H_t; W_{t+1..t+K-1} | W_t).
* :mod:`~ar_core.diagnostics.directed` – directed information: Massey's conservation law
  on enumerated joints, Gaussian VAR rates and estimates, the Granger cross-check.
* :mod:`~ar_core.diagnostics.prediction` – next-element prediction: Markov, all-k Markov,
  HMM, LSTM, Transformer and the oracle, by Brier score and accuracy.
* :mod:`~ar_core.diagnostics.plot` – dependency-free SVG line plots for the reports.

HMMs and Granger tests need ``pip install ar-core[diagnostics]`` (hmmlearn, statsmodels,
scipy), imported only when those functions run.
"""

from __future__ import annotations

from ar_core.diagnostics.directed import (
    DirectedInformation,
    directed_information_exact,
    directed_information_from_logprobs,
    gaussian_directed_information,
    granger_test,
    simulate_var1,
    var1_directed_information,
)
from ar_core.diagnostics.fisher import (
    fisher_check,
    fisher_metric,
    kl_along,
    output_head,
    softmax_head_fisher,
)
from ar_core.diagnostics.markov import (
    HeadEntropy,
    MarkovChain,
    TabularLM,
    head_entropy,
    next_token_probs,
)
from ar_core.diagnostics.prediction import (
    Score,
    fit_all_k_markov,
    fit_hmm,
    fit_lstm,
    fit_markov,
    fit_transformer,
    score_predictions,
    transformer_predictor,
)
from ar_core.diagnostics.surplus import Surplus, information_surplus, model_information_surplus

__all__ = [
    "DirectedInformation",
    "HeadEntropy",
    "MarkovChain",
    "Score",
    "Surplus",
    "TabularLM",
    "directed_information_exact",
    "directed_information_from_logprobs",
    "fisher_check",
    "fisher_metric",
    "fit_all_k_markov",
    "fit_hmm",
    "fit_lstm",
    "fit_markov",
    "fit_transformer",
    "gaussian_directed_information",
    "granger_test",
    "head_entropy",
    "information_surplus",
    "kl_along",
    "model_information_surplus",
    "next_token_probs",
    "output_head",
    "score_predictions",
    "simulate_var1",
    "softmax_head_fisher",
    "transformer_predictor",
    "var1_directed_information",
]
