"""Acceptance rules shared by the draft-then-verify strategies.

Leviathan, Kalman & Matias, "Fast Inference from Transformers via Speculative Decoding"
(2023, arXiv:2211.17192) and Chen et al., "Accelerating Large Language Model Decoding
with Speculative Sampling" (2023, arXiv:2302.01318).

A drafter proposes ``k`` tokens per row; the target scores all of them (plus one more
position) in a single forward. The rules here decide, per row, how many draft tokens
are kept and which token follows them:

* :func:`accept_greedy` - keep the draft while it equals the target's argmax; the next
  token is the target's argmax at the first disagreement (or at the bonus position
  ``k`` when every draft token was kept). Output = plain greedy decoding, exactly.
* :func:`accept_sampling` - keep draft token ``i`` with probability
  ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection draw the next token from
  :func:`residual_distribution` ``norm(max(p_i - q_i, 0))``; when all ``k`` are kept draw
  a bonus token from ``p_k`` (or return ``-1`` with ``bonus=False``). Every emitted token
  is distributed exactly as the target's ``p`` (Leviathan et al., Theorem 3.5).

Both are vectorised over rows: each row gets its own accepted count. Rows are
independent; a caller that only needs some rows simply ignores the rest.

:func:`verify_draft` applies them the way a strategy's :class:`~ar_core.generation.TokenPicker`
picks tokens (greedy, or the config's processors and categorical draws), so an
accelerated strategy returns exactly what ``greedy``/``sample`` would.

Notation: B rows, k draft tokens, V vocabulary. ``p`` = target probabilities, ``q`` =
draft probabilities, both after the same logits processors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.errors import InputError
from ar_core.generation import TokenPicker
from ar_core.sampling import logits_to_probs, multinomial_sample_one_no_sync

__all__ = ["accept_greedy", "accept_sampling", "residual_distribution", "verify_draft"]


def _leading_accepts(accept: Tensor) -> Tensor:
    """Length of the leading run of True per row: (B, k) bool -> (B,) long."""
    return accept.long().cumprod(dim=-1).sum(dim=-1)


def _check_lengths(lengths: Tensor | None, B: int, k: int, device: torch.device) -> Tensor:
    """Per-row draft lengths (B,) long in [0, k]; None = every row drafted k tokens."""
    if lengths is None:
        return torch.full((B,), k, dtype=torch.long, device=device)
    if lengths.shape != (B,):
        raise InputError(f"draft lengths must have shape ({B},), got {tuple(lengths.shape)}")
    return lengths.to(device=device, dtype=torch.long).clamp(0, k)


def accept_greedy(
    draft: Tensor, target_logits: Tensor, *, lengths: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Greedy verification.

    ``draft`` (B, k) long; ``target_logits`` (B, k + 1, V): the target's (processed)
    logits after the context and after each draft token. Returns ``n_accepted`` (B,) long
    in ``[0, k]`` and ``next_token`` (B,) long = ``argmax target_logits[b, n_accepted[b]]``.
    ``lengths`` (B,), optional: row b drafted only ``lengths[b]`` tokens (the rest of its
    row is padding and never accepted).
    """
    if draft.ndim != 2 or target_logits.ndim != 3:
        raise InputError(
            f"accept_greedy expects draft (B, k) and target_logits (B, k+1, V), got "
            f"{tuple(draft.shape)} and {tuple(target_logits.shape)}"
        )
    B, k = draft.shape
    if target_logits.shape[:2] != (B, k + 1):
        raise InputError(
            f"target_logits must have shape (B, k+1, V) = ({B}, {k + 1}, V) for a draft of "
            f"shape {(B, k)}, got {tuple(target_logits.shape)}"
        )
    target = target_logits.argmax(dim=-1)  # (B, k+1)
    n_accepted = _leading_accepts(draft == target[:, :k])  # (B,)
    if lengths is not None:
        n_accepted = torch.minimum(n_accepted, _check_lengths(lengths, B, k, draft.device))
    next_token = target.gather(1, n_accepted[:, None]).squeeze(1)  # (B,)
    return n_accepted, next_token


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """``norm(max(p - q, 0))`` over the last dimension, float32.

    Rule when the residual is empty (``p <= q`` everywhere, i.e. ``p == q`` for two
    distributions): the result is ``p``. This keeps the scheme exact: a rejection happens
    with probability ``sum(max(q - p, 0)) = sum(max(p - q, 0)) = 0``, so what is drawn
    then never matters, and ``p`` is a valid choice that avoids a 0/0.
    """
    if p.shape != q.shape:
        raise InputError(
            f"residual_distribution: p and q must have the same shape, got "
            f"{tuple(p.shape)} and {tuple(q.shape)}"
        )
    p, q = p.float(), q.float()
    residual = (p - q).clamp_(min=0.0)  # (..., V)
    mass = residual.sum(dim=-1, keepdim=True)  # (..., 1)
    empty = mass <= 0
    return torch.where(empty, p, residual / torch.where(empty, 1.0, mass))


def accept_sampling(
    draft: Tensor,
    q_probs: Tensor,
    p_probs: Tensor,
    generator: torch.Generator | None,
    *,
    bonus: bool = True,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Speculative-sampling verification (Leviathan et al. Algorithm 1, per row).

    ``draft`` (B, k) long, drawn from ``q_probs`` (B, k, V); ``p_probs`` (B, k + 1, V)
    (with ``bonus=False`` also (B, k, V)) the target's probabilities at the same
    positions. Returns ``n_accepted`` (B,) long in ``[0, k]`` and ``next_token`` (B,)
    long: drawn from ``residual_distribution(p[n], q[n])`` after a rejection at ``n``,
    from ``p[k]`` when all were accepted (``-1`` when ``bonus=False``).

    ``lengths`` (B,), optional: row b drafted only ``lengths[b]`` tokens; the rest of its
    row is padding, never accepted, and when all its real drafts are accepted the next
    token comes from ``p[lengths[b]]`` (the bonus of a shorter draft; always drawn).
    """
    if draft.ndim != 2 or q_probs.ndim != 3 or p_probs.ndim != 3:
        raise InputError(
            f"accept_sampling expects draft (B, k), q_probs (B, k, V), p_probs (B, k+1, V); "
            f"got {tuple(draft.shape)}, {tuple(q_probs.shape)}, {tuple(p_probs.shape)}"
        )
    B, k = draft.shape
    V = q_probs.shape[-1]
    allowed_p = [(B, k + 1, V)] + ([(B, k, V)] if not bonus else [])
    if q_probs.shape != (B, k, V) or p_probs.shape not in allowed_p:
        raise InputError(
            f"accept_sampling: for a draft of shape {(B, k)} q_probs must be {(B, k, V)} and "
            f"p_probs {(B, k + 1, V)}, got {tuple(q_probs.shape)} and {tuple(p_probs.shape)}"
        )
    p_probs, q_probs = p_probs.float(), q_probs.float()
    full = _check_lengths(lengths, B, k, draft.device)  # (B,)
    real = torch.arange(k, device=draft.device)[None, :] < full[:, None]  # (B, k)
    if lengths is not None:  # q = 0 past a row's draft: its "residual" there is p itself
        q_probs = q_probs * real[..., None]
    p_x = p_probs[:, :k].gather(-1, draft[..., None]).squeeze(-1)  # (B, k)
    q_x = q_probs.gather(-1, draft[..., None]).squeeze(-1)  # (B, k)
    u = torch.rand((B, k), generator=generator, device=draft.device)  # U[0, 1)
    # u < p/q without dividing: q(x) = 0 (a draft q could not produce) accepts iff p(x) > 0
    n_accepted = _leading_accepts((u * q_x < p_x) & real)  # (B,)

    # The next token comes from position n: the residual after a rejection, or p_k
    # itself after a full acceptance (q padded with a zero row at k makes that the
    # same formula: max(p_k - 0, 0) = p_k).
    if p_probs.shape[1] == k:  # bonus=False without a bonus position: pad with anything
        p_probs = torch.cat([p_probs, q_probs.new_zeros(B, 1, V)], dim=1)
    q_pad = torch.cat([q_probs, q_probs.new_zeros(B, 1, V)], dim=1)  # (B, k+1, V)
    index = n_accepted[:, None, None].expand(B, 1, V)
    p_n = p_probs.gather(1, index).squeeze(1)  # (B, V)
    q_n = q_pad.gather(1, index).squeeze(1)  # (B, V)
    probs = residual_distribution(p_n, q_n)
    no_bonus = (n_accepted == k) if not bonus else torch.zeros_like(n_accepted, dtype=torch.bool)
    probs = torch.where(no_bonus[:, None], 1.0 / V, probs)  # (never used)
    next_token = multinomial_sample_one_no_sync(probs, generator)  # (B,)
    next_token = torch.where(no_bonus, -1, next_token)
    return n_accepted, next_token


def verify_draft(
    picker: TokenPicker,
    draft: Tensor,
    q_probs: Tensor | None,
    target_logits: Tensor,
    seq: Tensor,
    *,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``n_accepted`` (B,), ``next_token`` (B,) for ``draft`` (B, k) against the target's
    raw logits (B, k + 1, V), by ``picker``'s rule: the processors see each position's own
    history (``seq`` (B, W), -1 = unused, plus the draft tokens before it); greedy keeps
    the draft while it equals the argmax (:func:`accept_greedy`), sampling runs
    :func:`accept_sampling` with ``picker.generator``. ``q_probs`` (B, k, V): the draft's
    probabilities (None: a deterministic draft, i.e. a one-hot q). ``lengths`` (B,): row b
    drafted only ``lengths[b]`` tokens."""
    processed = picker.process(target_logits, seq, draft)  # (B, k + 1, V)
    if picker.greedy:
        return accept_greedy(draft, processed, lengths=lengths)
    if q_probs is None:  # a deterministic draft: q = one-hot of the drafted token
        V = target_logits.shape[-1]
        q_probs = torch.zeros(*draft.shape, V, device=draft.device)
        q_probs.scatter_(-1, draft[..., None].clamp(0, V - 1), 1.0)
    p_probs = logits_to_probs(processed)
    return accept_sampling(draft, q_probs, p_probs, picker.generator, lengths=lengths)
