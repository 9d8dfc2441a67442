"""The information-surplus probe: I(H_t; W_{t+1..t+K-1} | W_t).

A Markov categorical framework for language modelling (2025): the hidden state H_t that
predicts token W_t may carry information about the tokens after it beyond what W_t
itself carries; that surplus is what drafting several tokens at once exploits. On an
order-1 chain the future is independent of the past given W_t, so the surplus of any
H_t (a function of W_{<t}) is 0; on an order-2 chain W_{t-1} still matters and H_t can
carry it, so the surplus is > 0.

The probe estimates the conditional mutual information as a held-out log-loss gap of two
softmax regressions fitted the same way (L-BFGS; each probe's L2 penalty chosen on a
validation part of the fitting sequences):

    surplus = NLL[q(Y | W_t)] - NLL[q(Y | H_t, W_t)],   Y = W_{t+1..t+K-1} (one of V^(K-1)),

the second with the features ``onehot(W_t)`` and ``onehot(W_t) x standardised H_t`` (so
each W_t has its own linear read-out of H_t). Held-out data make over-fitting cost, not
pay: a probe that learns nothing scores <= 0. Alignment: the model's ``hidden`` at index
t-1 is H_t (it predicts W_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ar_core.diagnostics._checks import check_causal_lm, positive_float, positive_int, token_tensor
from ar_core.errors import ConfigError, InputError

__all__ = ["Surplus", "information_surplus", "model_information_surplus"]


@dataclass
class Surplus:
    """Surplus in nats, its standard error (paired, over held-out samples), and the two
    held-out log-losses."""

    surplus: float
    stderr: float
    nll_token: float
    nll_token_and_hidden: float
    samples: int


def _fit_softmax(x: Tensor, y: Tensor, classes: int, l2: float, iters: int, free: int) -> Tensor:
    """(F, classes) weights (bias in the features) minimising mean NLL + l2 |W[free:]|^2
    + 1e-6 |W[:free]|^2: the first ``free`` features (the token one-hot) are (almost) not
    penalised, so a large ``l2`` turns the probe into the token-only one."""
    W = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W], lr=1, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ W, y)
        loss = loss + 1e-6 * (W[:free] ** 2).sum() + l2 * (W[free:] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach()


def information_surplus(
    hidden: Tensor,
    tokens: Tensor,
    vocab_size: int,
    *,
    horizon: int = 2,
    train_fraction: float = 0.5,
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    iters: int = 200,
    seed: int = 0,
) -> Surplus:
    """Probe estimate of I(H_t; W_{t+1..t+horizon-1} | W_t) from ``hidden`` (N, T, C)
    (index i = the state after reading token i) and ``tokens`` (N, T); sequences are split
    ``train_fraction`` / rest (shuffled with ``seed``) between fitting and scoring."""
    positive_int(horizon, "horizon", minimum=2)
    positive_int(vocab_size, "vocab_size", minimum=2)
    positive_int(iters, "iters")
    if not l2_grid:
        raise ConfigError("l2_grid must list at least one L2 penalty, e.g. (1e-4, 1e-2)")
    for lam in l2_grid:
        positive_float(lam, "l2_grid entry")
    if not 0 < train_fraction < 1:
        raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction}")
    tokens = token_tensor(tokens, "tokens", vocab_size, min_length=horizon + 1)
    if not isinstance(hidden, Tensor) or hidden.ndim != 3 or hidden.shape[:2] != tokens.shape:
        raise InputError(
            f"hidden must be (N, T, C) with (N, T) = tokens' {tuple(tokens.shape)}, got "
            f"{tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__}"
        )
    N, T = tokens.shape
    if N < 3:
        raise InputError("information_surplus needs >= 3 sequences (fit, validate, score)")
    V, K = vocab_size, horizon
    # samples t = 1 .. T-K: H_t = hidden[:, t-1], W_t = tokens[:, t], Y = tokens[:, t+1 .. t+K-1]
    H = hidden[:, : T - K].double()  # (N, T', C)
    w = tokens[:, 1 : T - K + 1]  # (N, T')
    y = torch.zeros_like(w)
    for j in range(1, K):
        y = y * V + tokens[:, 1 + j : T - K + 1 + j]
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    n_fit = min(max(2, round(N * train_fraction)), N - 1)
    fit, held = perm[:n_fit], perm[n_fit:]
    mu = H[fit].reshape(-1, H.shape[-1]).mean(0)
    sd = H[fit].reshape(-1, H.shape[-1]).std(0).clamp_min(1e-6)

    def features(rows: Tensor, with_hidden: bool) -> tuple[Tensor, Tensor]:
        oh = torch.nn.functional.one_hot(w[rows].reshape(-1), V).double()  # (n, V)
        if not with_hidden:
            return oh, y[rows].reshape(-1)
        h = ((H[rows] - mu) / sd).reshape(-1, H.shape[-1])  # (n, C)
        inter = (oh[:, :, None] * h[:, None, :]).reshape(oh.shape[0], -1)  # (n, V C)
        return torch.cat([oh, inter], 1), y[rows].reshape(-1)

    # the L2 penalty of each probe is picked on a quarter of the fitting sequences (the
    # largest of l2_grid within one standard error of the best): a rich probe that would
    # over-fit is shrunk towards the token-only one instead of scoring below it
    inner = fit[: max(1, len(fit) // 4)]
    outer = fit[len(inner) :] if len(fit) > len(inner) else fit
    nll = []
    for with_hidden in (False, True):  # the token-only probe has no penalised features
        x_in, y_in = features(outer, with_hidden)
        x_val, y_val = features(inner, with_hidden)
        losses = []
        grid = l2_grid if with_hidden else l2_grid[:1]
        for lam in grid:
            W = _fit_softmax(x_in, y_in, V ** (K - 1), lam, iters, V)
            losses.append(torch.nn.functional.cross_entropy(x_val @ W, y_val, reduction="none"))
        means = torch.stack([v.mean() for v in losses])
        best = int(means.argmin())
        tol = float(losses[best].std() / losses[best].numel() ** 0.5)
        lam = max(g for g, m in zip(grid, means, strict=True) if m <= means[best] + tol)
        x_fit, y_fit = features(fit, with_hidden)
        x_held, y_held = features(held, with_hidden)
        W = _fit_softmax(x_fit, y_fit, V ** (K - 1), lam, iters, V)
        nll.append(torch.nn.functional.cross_entropy(x_held @ W, y_held, reduction="none"))
    gap = nll[0] - nll[1]
    return Surplus(
        surplus=float(gap.mean()),
        stderr=float(gap.std() / gap.numel() ** 0.5),
        nll_token=float(nll[0].mean()),
        nll_token_and_hidden=float(nll[1].mean()),
        samples=int(gap.numel()),
    )


@torch.no_grad()
def model_information_surplus(
    model: object, tokens: Tensor, *, horizon: int = 2, batch_size: int = 64, **probe: object
) -> Surplus:
    """:func:`information_surplus` of a ``CausalLM``'s ``hidden`` output on ``tokens``."""
    check_causal_lm(model)
    V = int(model.vocab_size)  # type: ignore[attr-defined]
    tokens = token_tensor(tokens, "tokens", V, min_length=horizon + 1)
    positive_int(batch_size, "batch_size")
    if isinstance(model, torch.nn.Module):
        model.eval()
    hidden = torch.cat(
        [
            model(tokens[i : i + batch_size]).hidden.float().cpu()  # type: ignore[operator]
            for i in range(0, tokens.shape[0], batch_size)
        ]
    )
    return information_surplus(hidden, tokens, V, horizon=horizon, **probe)  # type: ignore[arg-type]
