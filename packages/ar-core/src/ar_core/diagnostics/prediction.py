"""Next-element prediction on a synthetic grammar with known probabilities.

Tax, Teinemaa & van Zelst, "An interdisciplinary comparison of sequence modeling methods
for next-element prediction" (2018, arXiv:1811.00062): Markov chains, all-k-order Markov
models, HMMs and RNNs/LSTMs compared by the Brier score of their next-element
distributions and by accuracy. Here the grammar is known, so the oracle (the true
conditional distribution) is a row too, and a small ar-core Transformer joins.

The Brier score of a distribution p for the element w that followed is
``sum_v (p_v - 1[v = w])^2`` (lower is better; strictly proper). Its expectation over w ~ q
is ``|p - q|^2 + 1 - |q|^2``, so the oracle q minimises it and ``excess = mean |p - q|^2``
measures each model's distance from the oracle without sampling noise.

Predictors (each ``fit(train (N, T)) -> predict(tokens (N, T)) -> (N, T, V)`` where index
i is the distribution of element i + 1): :func:`fit_markov` (order k, additive smoothing,
shorter contexts at the start), :func:`fit_all_k_markov` (the longest context up to k seen
at least ``min_count`` times), :func:`fit_hmm` (hmmlearn's CategoricalHMM, forward
filtering), :func:`fit_lstm`, :func:`fit_transformer` (ar-core's Transformer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ar_core.diagnostics._checks import need, positive_float, positive_int, token_tensor
from ar_core.diagnostics.markov import next_token_probs
from ar_core.errors import InputError

__all__ = [
    "Predictor",
    "Score",
    "fit_all_k_markov",
    "fit_hmm",
    "fit_lstm",
    "fit_markov",
    "fit_transformer",
    "score_predictions",
    "transformer_predictor",
]

Predictor = Callable[[Tensor], Tensor]


@dataclass
class Score:
    """Mean Brier score, accuracy and log-loss over the scored elements, and (with an
    oracle) the mean squared distance |p - q|^2 to the true distribution."""

    brier: float
    accuracy: float
    log_loss: float
    excess: float | None
    elements: int


def _probs(probs: object, tokens: Tensor, name: str) -> Tensor:
    if not isinstance(probs, Tensor) or probs.ndim != 3 or probs.shape[:2] != tokens.shape:
        raise InputError(
            f"{name} must be (N, T, V) with (N, T) = tokens' {tuple(tokens.shape)}, got "
            f"{tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__}"
        )
    p = probs.double()
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise InputError(f"{name} must hold finite probabilities >= 0")
    if float((p.sum(-1) - 1).abs().max()) > 1e-4:
        raise InputError(f"{name}: each distribution must sum to 1 over V")
    return p


def score_predictions(
    probs: Tensor, tokens: Tensor, *, start: int = 1, oracle: Tensor | None = None
) -> Score:
    """Score the distributions ``probs`` (N, T, V) of elements ``start .. T-1`` of
    ``tokens`` (N, T) (index i of probs predicts element i + 1)."""
    if not isinstance(probs, Tensor) or probs.ndim != 3:
        raise InputError("probs must be a (N, T, V) tensor of next-element distributions")
    tokens = token_tensor(tokens, "tokens", probs.shape[-1], min_length=2)
    positive_int(start, "start")
    if start >= tokens.shape[1]:
        raise InputError(f"start={start} leaves no element of {tokens.shape[1]} to score")
    p = _probs(probs, tokens, "probs")[:, start - 1 : -1]  # (N, T', V)
    target = tokens[:, start:]
    onehot = nn.functional.one_hot(target, p.shape[-1]).double()
    brier = ((p - onehot) ** 2).sum(-1)
    acc = (p.argmax(-1) == target).double()
    nll = -p.gather(-1, target[..., None]).squeeze(-1).clamp_min(1e-12).log()
    excess = None
    if oracle is not None:
        q = _probs(oracle, tokens, "oracle")[:, start - 1 : -1]
        excess = float(((p - q) ** 2).sum(-1).mean())
    return Score(float(brier.mean()), float(acc.mean()), float(nll.mean()), excess, brier.numel())


# -- count models -------------------------------------------------------------------------


def _counts(train: Tensor, V: int, order: int) -> list[np.ndarray]:
    """counts[j] (V^j, V): how often each element followed each length-j context."""
    x = train.numpy()
    out = []
    for j in range(order + 1):
        c = np.zeros((V**j, V))
        ctx = np.zeros((x.shape[0], x.shape[1] - j), dtype=np.int64)
        for i in range(j):
            ctx = ctx * V + x[:, i : x.shape[1] - j + i]
        np.add.at(c, (ctx.ravel(), x[:, j:].ravel()), 1.0)
        out.append(c)
    return out


def _contexts(tokens: Tensor, V: int, j: int) -> np.ndarray:
    """(N, T) code of the j elements ending at each index (-1 where fewer exist)."""
    x = tokens.numpy()
    N, T = x.shape
    code = np.full((N, T), -1, dtype=np.int64)
    for i in range(j - 1, T):
        c = np.zeros(N, dtype=np.int64)
        for e in range(i - j + 1, i + 1):
            c = c * V + x[:, e]
        code[:, i] = c
    return code


def fit_markov(train: Tensor, vocab_size: int, order: int, *, alpha: float = 0.1) -> Predictor:
    """Order-``order`` Markov model with additive smoothing ``alpha``; the first indices,
    with fewer than ``order`` elements before them, use the longest context they have."""
    positive_int(vocab_size, "vocab_size", minimum=2)
    positive_int(order, "order", minimum=0)
    positive_float(alpha, "alpha")
    train = token_tensor(train, "train", vocab_size, min_length=order + 1)
    V = vocab_size
    tables = [(c + alpha) / (c + alpha).sum(1, keepdims=True) for c in _counts(train, V, order)]

    def predict(tokens: Tensor) -> Tensor:
        tokens = token_tensor(tokens, "tokens", V)
        N, T = tokens.shape
        out = np.empty((N, T, V))
        for i in range(T):
            j = min(order, i + 1)
            ctx = _contexts(tokens[:, max(0, i - j + 1) : i + 1], V, j)[:, -1] if j else None
            out[:, i] = tables[j][0 if ctx is None else ctx]
        return torch.from_numpy(out)

    return predict


def fit_all_k_markov(
    train: Tensor, vocab_size: int, max_order: int, *, min_count: int = 5, alpha: float = 0.1
) -> Predictor:
    """All-k-order Markov: at each index the longest context (up to ``max_order``) seen at
    least ``min_count`` times in ``train`` predicts, smoothed by ``alpha``."""
    positive_int(vocab_size, "vocab_size", minimum=2)
    positive_int(max_order, "max_order")
    positive_int(min_count, "min_count")
    positive_float(alpha, "alpha")
    train = token_tensor(train, "train", vocab_size, min_length=max_order + 1)
    V = vocab_size
    counts = _counts(train, V, max_order)
    tables = [(c + alpha) / (c + alpha).sum(1, keepdims=True) for c in counts]
    seen = [c.sum(1) >= min_count for c in counts]

    def predict(tokens: Tensor) -> Tensor:
        tokens = token_tensor(tokens, "tokens", V)
        N, T = tokens.shape
        out = np.broadcast_to(tables[0][0], (N, T, V)).copy()
        for j in range(1, max_order + 1):
            ctx = _contexts(tokens, V, j)  # (N, T)
            ok = ctx >= 0
            ok[ok] = seen[j][ctx[ok]]
            out[ok] = tables[j][ctx[ok]]
        return torch.from_numpy(out)

    return predict


# -- HMM ----------------------------------------------------------------------------------


def fit_hmm(
    train: Tensor, vocab_size: int, n_states: int, *, iters: int = 50, seed: int = 0
) -> Predictor:
    """hmmlearn's CategoricalHMM (EM, ``iters`` rounds, ``seed``); predictions by forward
    filtering: p(w_{i+1} | w_<=i) = alpha_i A B (``pip install ar-core[diagnostics]``)."""
    positive_int(vocab_size, "vocab_size", minimum=2)
    positive_int(n_states, "n_states")
    positive_int(iters, "iters")
    train = token_tensor(train, "train", vocab_size, min_length=2)
    hmm = need("hmmlearn.hmm", "fit_hmm")
    model = hmm.CategoricalHMM(
        n_components=n_states, n_iter=iters, random_state=seed, n_features=vocab_size, tol=1e-4
    )
    x = train.numpy()
    model.fit(x.reshape(-1, 1), lengths=[x.shape[1]] * x.shape[0])
    pi, A, B = model.startprob_, model.transmat_, model.emissionprob_  # (S,), (S, S), (S, V)

    def predict(tokens: Tensor) -> Tensor:
        tokens = token_tensor(tokens, "tokens", vocab_size)
        t = tokens.numpy()
        N, T = t.shape
        out = np.empty((N, T, vocab_size))
        alpha = np.broadcast_to(pi, (N, n_states))
        for i in range(T):
            alpha = alpha * B[:, t[:, i]].T  # (N, S): condition on w_i
            alpha = alpha / alpha.sum(1, keepdims=True)
            alpha = alpha @ A  # predict the next state
            out[:, i] = alpha @ B
        return torch.from_numpy(out)

    return predict


# -- neural predictors ---------------------------------------------------------------------


def _train_next_token(
    forward: Callable[[Tensor], Tensor],
    params: list[nn.Parameter],
    train: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: str = "",
) -> list[float]:
    """AdamW on next-token cross-entropy over random batches of ``train``; the losses
    (``progress``: a tqdm bar with that description)."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / (steps + 1))
    )
    losses = []
    for _ in tqdm(range(steps), desc=progress, disable=not progress, leave=False):
        batch = train[torch.randint(0, train.shape[0], (batch_size,), generator=gen)]
        logits = forward(batch[:, :-1])  # (B, T-1, V)
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


class _LSTM(nn.Module):
    def __init__(self, V: int, hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, V)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(self.lstm(self.emb(tokens))[0])  # (B, T, V)


def fit_lstm(
    train: Tensor,
    vocab_size: int,
    *,
    hidden: int = 32,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Predictor, list[float]]:
    """A one-layer LSTM trained on next-element cross-entropy; (predictor, losses)
    (``progress``: a tqdm bar)."""
    positive_int(vocab_size, "vocab_size", minimum=2)
    for name, v in (("hidden", hidden), ("steps", steps), ("batch_size", batch_size)):
        positive_int(v, name)
    positive_float(lr, "lr")
    train = token_tensor(train, "train", vocab_size, min_length=2)
    torch.manual_seed(seed)
    net = _LSTM(vocab_size, hidden)
    losses = _train_next_token(
        net,
        list(net.parameters()),
        train,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress="LSTM" if progress else "",
    )
    net.eval()

    @torch.no_grad()
    def predict(tokens: Tensor) -> Tensor:
        tokens = token_tensor(tokens, "tokens", vocab_size)
        return torch.softmax(net(tokens).double(), -1)

    return predict, losses


def fit_transformer(
    train: Tensor,
    vocab_size: int,
    *,
    dim: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, list[float]]:
    """A small ar-core :class:`~ar_core.model.Transformer` trained on next-element
    cross-entropy; (model, losses). Predict with :func:`next_token_probs`."""
    from ar_core.model import Transformer, TransformerConfig

    positive_int(vocab_size, "vocab_size", minimum=2)
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        positive_int(v, name)
    positive_float(lr, "lr")
    train = token_tensor(train, "train", vocab_size, min_length=2)
    torch.manual_seed(seed)
    model = Transformer(
        TransformerConfig(
            vocab_size=vocab_size,
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            max_seq_len=max(64, train.shape[1]),
            ffn_hidden=2 * dim,
        )
    )
    model.train()
    losses = _train_next_token(
        lambda t: model(t).logits,
        list(model.parameters()),
        train,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress="Transformer" if progress else "",
    )
    model.eval()
    return model, losses


def transformer_predictor(model: nn.Module) -> Predictor:
    """The next-element distributions of any ``CausalLM`` as a predictor."""
    return lambda tokens: next_token_probs(model, tokens).double()
