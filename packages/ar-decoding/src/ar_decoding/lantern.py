"""LANTERN: relaxed speculative acceptance for visual AR models, on SJD self-drafting.

Jang et al., "LANTERN: Accelerating Visual Autoregressive Models with Relaxed
Speculative Decoding" (ICLR 2025, arXiv:2410.03355). Image tokens whose VQ embeddings
are close are nearly interchangeable, yet the target spreads its probability over them,
so plain speculative decoding rejects good drafts ("token selection ambiguity").

Drafting: SJD's Jacobi window (``ar_decoding.sjd``, Teng et al. 2024) – no draft model
is needed, and ar-vision's image models have none. Only the acceptance rule changes.

Relaxed rule for draft ``x`` drawn from ``q`` with target ``p`` (one position):

* ``N(x)`` = the caller's ``neighbours[x]`` (k nearest codebook entries, nearest first;
  ``x`` itself is skipped if listed);
* ``A(x)`` = the longest prefix of ``N(x)`` whose summed target probability is
  ``<= delta``;
* accept with probability ``min(1, (p(x) + p(A(x))) / q(x))``;
* on rejection zero ``x`` and ``A(x)`` in the speculative residual ``max(0, p - q)``,
  renormalise and draw from it. (Zeroing ``x`` is automatic – a rejected ``x`` has
  ``q(x) > p(x)`` – and with ``delta = 0`` the set ``A`` only holds tokens with
  ``p = 0``, so the rule *is* speculative sampling and the output is exactly ``p``. If
  zeroing empties the residual, the plain residual is used.)

The per-step output distribution (derived in :func:`step_distribution`, tested by
enumeration):

    P(y) = min(q(y), p(y) + p(A(y)))  +  sum_x q(x) (1 - a(x)) r_x(y),
    a(x) = min(1, (p(x) + p(A(x))) / q(x)),  r_x = norm(max(0, p - q) off {x} u A(x)).

What ``delta`` bounds: for each draft, moving the mass of ``A(x)`` onto ``x`` changes
``p`` by at most ``delta`` in total variation (the paper's per-token bound). The output
distribution itself can be further from ``p`` (every draft may borrow up to ``delta``);
``tests/test_lantern.py`` measures it and shows a case where it exceeds ``delta``.

At temperature 0 ``p`` is one-hot, no neighbour can enter ``A`` (``delta < 1``), and
LANTERN returns the greedy output.

Notation: B rows, L window, V vocabulary, K neighbours per token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, GenerationResult, Streamer
from ar_core.protocols import CausalLM
from ar_core.sampling import multinomial_sample_one_no_sync
from ar_decoding.sjd import jacobi_sampling
from ar_decoding.verify import residual_distribution

__all__ = ["accept_relaxed", "lantern", "latent_neighbourhood", "step_distribution"]


def _check_neighbours(neighbours: object, vocab_size: int) -> Tensor:
    if not isinstance(neighbours, Tensor) or neighbours.ndim != 2:
        raise ConfigError(
            "lantern: neighbours must be a (V, k) long tensor of each token's nearest "
            "tokens (e.g. by VQ-embedding distance), nearest first"
        )
    if neighbours.shape[0] != vocab_size or neighbours.dtype != torch.long:
        raise ConfigError(
            f"lantern: neighbours must be long with shape ({vocab_size}, k), got "
            f"{tuple(neighbours.shape)} {neighbours.dtype}"
        )
    if neighbours.numel() and (int(neighbours.min()) < 0 or int(neighbours.max()) >= vocab_size):
        raise ConfigError(f"lantern: neighbour ids must lie in [0, {vocab_size})")
    ordered = neighbours.sort(dim=1).values
    if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        row = int((ordered[:, 1:] == ordered[:, :-1]).any(1).nonzero()[0, 0])
        raise ConfigError(f"lantern: neighbours[{row}] lists a token twice; list each once")
    return neighbours


def latent_neighbourhood(
    p: Tensor, draft: Tensor, neighbours: Tensor, delta: float
) -> tuple[Tensor, Tensor]:
    """``A(x)`` of each draft token: its mass ``p(A)`` (...) and membership (..., V) bool.

    ``p`` (..., V) target probabilities, ``draft`` (...) long, ``neighbours`` (V, K).
    """
    nb, in_a, mass = _neighbourhood(p, draft, neighbours, delta)
    members = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, nb, in_a)  # (..., V)
    return mass, members


def _neighbourhood(
    p: Tensor, draft: Tensor, neighbours: Tensor, delta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Each draft's neighbours (..., K), which of them are in ``A`` (..., K) bool, and
    ``p(A)`` (...)."""
    nb = neighbours.to(draft.device)[draft]  # (..., K)
    p_nb = p.gather(-1, nb)  # (..., K)
    is_self = nb == draft[..., None]
    p_nb = p_nb.masked_fill(is_self, 0.0)
    in_a = (p_nb.cumsum(-1) <= delta) & ~is_self  # a prefix: the cumsum never decreases
    return nb, in_a, (p_nb * in_a).sum(-1)


def _relaxed_residual(p: Tensor, q: Tensor, zero: Tensor) -> Tensor:
    """``norm(max(0, p - q))`` with the ``zero`` (..., V) entries removed; the plain
    residual when nothing is left."""
    residual = (p - q).clamp(min=0.0).masked_fill(zero, 0.0)  # (..., V)
    mass = residual.sum(-1, keepdim=True)
    empty = mass <= 0
    return torch.where(empty, residual_distribution(p, q), residual / torch.where(empty, 1.0, mass))


def accept_relaxed(
    draft: Tensor,
    q_probs: Tensor,
    p_probs: Tensor,
    generator: torch.Generator | None,
    *,
    neighbours: Tensor,
    delta: float,
) -> tuple[Tensor, Tensor]:
    """LANTERN verification: ``draft`` (B, k), ``q_probs`` (B, k, V), ``p_probs``
    (B, k + 1, V) -> ``n_accepted`` (B,), ``next_token`` (B,) (residual after a rejection,
    a bonus draw from ``p_k`` after a full acceptance)."""
    B, k = draft.shape
    V = q_probs.shape[-1]
    p, q = p_probs.float(), q_probs.float()
    _, _, p_a = _neighbourhood(p[:, :k], draft, neighbours, delta)  # (B, k)
    p_x = p[:, :k].gather(-1, draft[..., None]).squeeze(-1)  # (B, k)
    q_x = q.gather(-1, draft[..., None]).squeeze(-1)
    u = torch.rand((B, k), generator=generator, device=draft.device)
    n_accepted = (u * q_x < p_x + p_a).long().cumprod(-1).sum(-1)  # (B,)

    rows = torch.arange(B, device=draft.device)
    at = n_accepted.clamp(max=k - 1)  # the rejected position (unused after full acceptance)
    x_n = draft[rows, at]  # (B,)
    p_n, q_n = p[rows, at], q[rows, at]  # (B, V)
    _, members = latent_neighbourhood(p_n, x_n, neighbours, delta)  # (B, V)
    zero = members | torch.nn.functional.one_hot(x_n, V).bool()
    probs = _relaxed_residual(p_n, q_n, zero)
    probs = torch.where((n_accepted == k)[:, None], p[:, k], probs)  # bonus
    return n_accepted, multinomial_sample_one_no_sync(probs, generator)


def step_distribution(p: Tensor, q: Tensor, neighbours: Tensor, delta: float) -> Tensor:
    """Exact output distribution (V,) of one relaxed step, draft ``x ~ q`` (V,), target
    ``p`` (V,): the closed form of the module docstring, summed over every ``x``."""
    V = p.shape[-1]
    p, q = p.double(), q.double()
    xs = torch.arange(V)
    p_rows = p.expand(V, V)  # row x: the target, seen from draft x
    p_a, members = latent_neighbourhood(p_rows, xs, neighbours, delta)  # (V,), (V, V)
    accept = torch.where(q > 0, ((p + p_a) / q.clamp(min=1e-300)).clamp(max=1.0), 0.0)  # (V,)
    zero = members | torch.eye(V, dtype=torch.bool)
    residual = _relaxed_residual(p_rows, q.expand(V, V), zero)  # (V, V): row x = r_x
    return q * accept + ((q * (1 - accept))[:, None] * residual).sum(0)


def lantern(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    neighbours: Tensor,
    delta: float = 0.1,
    k: int | None = None,
    window: int = 16,
    init: str = "random",
    grid_width: int | None = None,
    generator: torch.Generator | None = None,
    draft_generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``lantern``: SJD with LANTERN's relaxed acceptance. ``neighbours`` (V, K)
    nearest tokens of each token, nearest first (ar-vision builds it from the VQ
    codebook); ``k`` uses the first k columns (the paper: k=1000, delta=0.1)."""
    table = _check_neighbours(neighbours, model.vocab_size)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= table.shape[1]:
            raise ConfigError(
                f"lantern: k must be an int in [1, {table.shape[1]}] (the neighbour table's "
                f"width), got {k!r}"
            )
        table = table[:, :k]
    if not 0.0 <= delta < 1.0:
        raise ConfigError(f"lantern: delta must be in [0, 1) (0 = exact SJD), got {delta}")

    def relaxed(draft: Tensor, q: Tensor, p: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return accept_relaxed(draft, q, p, gen, neighbours=table, delta=delta)

    return jacobi_sampling(
        model,
        input_ids,
        config,
        prompt_lengths=prompt_lengths,
        streamer=streamer,
        accept=relaxed,
        strategy="lantern",
        window=window,
        init=init,
        grid_width=grid_width,
        generator=generator,
        draft_generator=draft_generator,
    )
