"""Known Markov chains and the head entropy of a model against their conditional entropy.

A Markov categorical framework for language modelling (2025): generation is
``k_head o k_bb o k_emb``, and the head's categorical entropy, averaged over contexts,
is H(W_t | H_t). On a chain of order k whose history is summarised by the last k tokens,
a model that has learnt the chain has H(W_t | H_t) = H(W_t | W_{t-k..t-1}), the chain's
conditional entropy (its entropy rate), which :meth:`MarkovChain.conditional_entropy`
computes exactly from the transition table and the stationary distribution.

* :class:`MarkovChain` – an order-k chain over V symbols: transition table (V^k, V),
  stationary distribution of its k-grams, exact conditional entropy, sampling (the first
  k tokens are drawn from the stationary distribution, so every position is stationary).
* :class:`TabularLM` – the exact chain as a model of the ``CausalLM`` protocol (whole
  sequences, no cache): logits at index i are log P(w_{i+1} | w_{<=i}).
* :func:`next_token_probs` – a ``CausalLM``'s next-token distributions (N, T, V).
* :func:`head_entropy` – the mean entropy of those distributions (nats) and the mean
  log-loss of the tokens that followed.

Notation: N sequences, T positions, V vocabulary, k the chain's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ar_core.diagnostics._checks import (
    check_causal_lm,
    positive_float,
    positive_int,
    stochastic_rows,
    token_tensor,
)
from ar_core.errors import InputError
from ar_core.model import ModelOutput

__all__ = ["HeadEntropy", "MarkovChain", "TabularLM", "head_entropy", "next_token_probs"]


class MarkovChain:
    """An order-``k`` Markov chain over ``V`` symbols.

    ``transitions`` (V^k, V): row ``c`` is P(next | context c), the context's tokens read as
    a base-V number, oldest first (``c = sum_i w_{t-k+i} V^(k-1-i)``). The chain of k-grams
    must have a unique stationary distribution (an irreducible table does).
    """

    def __init__(self, transitions: object, order: int) -> None:
        self.order = positive_int(order, "order")
        table = stochastic_rows(transitions, "transitions")
        if table.ndim != 2:
            raise InputError(f"transitions must be (V^k, V), got shape {table.shape}")
        V = table.shape[1]
        if table.shape[0] != V**self.order:
            raise InputError(
                f"transitions of an order-{self.order} chain over {V} symbols must have "
                f"{V}^{self.order} = {V**self.order} rows, got {table.shape[0]}"
            )
        self.vocab_size = V
        self.transitions = table
        self.stationary = self._stationary()  # (V^k,) over contexts

    @classmethod
    def random(
        cls, order: int, vocab_size: int, *, seed: int = 0, concentration: float = 0.5
    ) -> MarkovChain:
        """A chain whose rows are Dirichlet(``concentration``) draws (small = peaked rows,
        so the order matters: every context gets its own, distinct next-token law)."""
        positive_int(order, "order")
        positive_int(vocab_size, "vocab_size", minimum=2)
        positive_float(concentration, "concentration")
        rng = np.random.default_rng(seed)
        rows = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size**order)
        rows = 0.98 * rows + 0.02 / vocab_size  # every transition possible: irreducible
        return cls(rows / rows.sum(1, keepdims=True), order)

    # -- exact quantities -------------------------------------------------------------------
    def _next_context(self) -> np.ndarray:
        """(V^k, V) index of the context after context c emits w."""
        V, k = self.vocab_size, self.order
        c = np.arange(V**k)[:, None]
        return (c * V) % (V**k) + np.arange(V)[None, :]

    def _stationary(self) -> np.ndarray:
        V, k = self.vocab_size, self.order
        M = np.zeros((V**k, V**k))  # context -> context
        np.add.at(
            M,
            (np.repeat(np.arange(V**k), V), self._next_context().ravel()),
            self.transitions.ravel(),
        )
        vals, vecs = np.linalg.eig(M.T)
        i = int(np.argmin(np.abs(vals - 1)))
        if np.sum(np.abs(vals - 1) < 1e-9) > 1:
            raise InputError("transitions: the chain of contexts has no unique stationary law")
        pi = np.abs(np.real(vecs[:, i]))
        return pi / pi.sum()

    def conditional_entropy(self) -> float:
        """H(W_t | W_{t-k..t-1}) in nats under the stationary law: the entropy rate."""
        P = self.transitions
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(P > 0, P * np.log(P), 0.0).sum(1)
        return float(self.stationary @ h)

    def prefix_conditionals(self) -> list[np.ndarray]:
        """For j < k: P(w_j | w_0..w_{j-1}) under the stationary law, as (V^j, V) tables."""
        V, k = self.vocab_size, self.order
        joint = self.stationary.reshape((V,) * k)
        out = []
        for j in range(k):
            m = joint.sum(axis=tuple(range(j + 1, k))) if j + 1 < k else joint  # (V,)*(j+1)
            m = m.reshape(V**j, V)
            out.append(m / np.maximum(m.sum(1, keepdims=True), 1e-300))
        return out

    def next_probs(self, tokens: Tensor) -> Tensor:
        """(N, T, V) float64: P(w_{i+1} | w_{<=i}) at every index i (the oracle)."""
        tokens = token_tensor(tokens, "tokens", self.vocab_size)
        N, T = tokens.shape
        V, k = self.vocab_size, self.order
        table = torch.from_numpy(self.transitions)
        prefix = [torch.from_numpy(p) for p in self.prefix_conditionals()]
        out = torch.empty(N, T, V, dtype=torch.float64)
        ctx = torch.zeros(N, dtype=torch.long)
        for i in range(T):
            ctx = (ctx * V + tokens[:, i]) % (V**k)  # the last min(i + 1, k) tokens
            n = i + 1
            out[:, i] = table[ctx] if n >= k else prefix[n][ctx]
        return out

    def sample(self, n: int, length: int, *, seed: int = 0) -> Tensor:
        """(n, length) stationary sequences (long), reproducible from ``seed``."""
        positive_int(n, "n")
        positive_int(length, "length", minimum=self.order)
        rng = np.random.default_rng(seed)
        V, k = self.vocab_size, self.order
        ctx = rng.choice(V**k, size=n, p=self.stationary)
        first = np.stack([(ctx // V ** (k - 1 - j)) % V for j in range(k)], axis=1)  # (n, k)
        seqs = np.empty((n, length), dtype=np.int64)
        seqs[:, :k] = first
        cum = np.cumsum(self.transitions, axis=1)
        for t in range(k, length):
            u = rng.random(n)[:, None]
            w = np.minimum((u > cum[ctx]).sum(1), V - 1)
            seqs[:, t] = w
            ctx = (ctx * V + w) % (V**k)
        return torch.from_numpy(seqs)


class TabularLM(nn.Module):
    """A :class:`MarkovChain` as a ``CausalLM``: exact logits for whole sequences.

    ``hidden`` (N, T, k V) is the one-hot code of the last k tokens (zeros before the
    start): the chain's sufficient statistic. It keeps no KV cache: ``cache``, ``mask`` and
    ``positions`` other than the defaults are refused.
    """

    def __init__(self, chain: MarkovChain, max_seq_len: int = 4096) -> None:
        super().__init__()
        if not isinstance(chain, MarkovChain):
            raise InputError(f"TabularLM expects a MarkovChain, got {type(chain).__name__}")
        self.chain = chain
        self.vocab_size = chain.vocab_size
        self.max_seq_len = positive_int(max_seq_len, "max_seq_len")

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: object = None,
        mask: object = None,
        commit: bool = True,
    ) -> ModelOutput:
        if cache is not None or mask is not None or positions is not None:
            raise InputError(
                "TabularLM scores whole sequences from their start: call it with tokens only "
                "(no cache, mask or positions)"
            )
        tokens = token_tensor(tokens, "tokens", self.vocab_size)
        if tokens.shape[1] > self.max_seq_len:
            raise InputError(
                f"tokens have {tokens.shape[1]} positions, above max_seq_len={self.max_seq_len}"
            )
        probs = self.chain.next_probs(tokens)
        logits = probs.clamp_min(1e-300).log().float()  # (N, T, V)
        V, k = self.vocab_size, self.chain.order
        N, T = tokens.shape
        hidden = torch.zeros(N, T, k, V)
        for j in range(k):  # slot j: the token j places back
            hidden[:, j:, j] = nn.functional.one_hot(tokens[:, : T - j], V).float()
        return ModelOutput(logits=logits, hidden=hidden.reshape(N, T, k * V))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> object:
        raise InputError("TabularLM keeps no KV cache: score whole sequences without one")


# -- a model's next-token distributions and head entropy --------------------------------


@torch.no_grad()
def next_token_probs(model: object, tokens: Tensor, *, batch_size: int = 64) -> Tensor:
    """(N, T, V) float32 softmax of ``model(tokens).logits`` (index i predicts i + 1),
    run ``batch_size`` rows at a time without a cache."""
    check_causal_lm(model)
    V = int(model.vocab_size)  # type: ignore[attr-defined]
    tokens = token_tensor(tokens, "tokens", V)
    positive_int(batch_size, "batch_size")
    max_len = int(model.max_seq_len)  # type: ignore[attr-defined]
    if tokens.shape[1] > max_len:
        raise InputError(
            f"tokens have {tokens.shape[1]} positions, above the model's max_seq_len={max_len}: "
            f"pass shorter sequences"
        )
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    device = (
        next((p.device for p in model.parameters()), torch.device("cpu"))
        if isinstance(model, nn.Module)
        else torch.device("cpu")
    )
    outs = []
    for i in range(0, tokens.shape[0], batch_size):
        logits = model(tokens[i : i + batch_size].to(device)).logits  # type: ignore[operator]
        if logits.shape[-1] != V or logits.shape[:2] != tokens[i : i + batch_size].shape:
            raise InputError(
                f"model returned logits {tuple(logits.shape)} for tokens "
                f"{tuple(tokens[i : i + batch_size].shape)}; expected (B, T, {V})"
            )
        outs.append(torch.softmax(logits.float(), dim=-1).cpu())
    if isinstance(model, nn.Module) and was_training:
        model.train()
    return torch.cat(outs)


@dataclass
class HeadEntropy:
    """Mean head entropy (nats) over the scored positions, per-position means (T',) and
    the mean log-loss of the tokens that actually followed."""

    entropy: float
    per_position: Tensor
    log_loss: float
    positions: int


def head_entropy(
    model: object, tokens: Tensor, *, context: int = 1, batch_size: int = 64
) -> HeadEntropy:
    """The categorical entropy of ``model``'s next-token distribution, averaged over every
    index i >= context - 1 (the prediction of token i + 1 from at least ``context`` tokens)
    of ``tokens`` (N, T). On a stationary order-k chain with ``context=k`` a model that
    learnt the chain gives its :meth:`MarkovChain.conditional_entropy`."""
    positive_int(context, "context")
    if isinstance(tokens, Tensor) and tokens.ndim == 2 and tokens.shape[1] <= context:
        raise InputError(
            f"tokens have {tokens.shape[1]} positions: at least context + 1 = {context + 1} are "
            f"needed to score one prediction"
        )
    probs = next_token_probs(model, tokens, batch_size=batch_size).double()  # (N, T, V)
    p = probs[:, context - 1 : -1]  # (N, T', V) predicting tokens context .. T-1
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (N, T')
    target = tokens[:, context:].long()
    nll = -p.gather(-1, target[..., None]).squeeze(-1).clamp_min(1e-30).log()
    return HeadEntropy(
        entropy=float(ent.mean()),
        per_position=ent.mean(0).float(),
        log_loss=float(nll.mean()),
        positions=int(ent.numel()),
    )
