"""What the draft-then-verify strategies share: the draft model check, the two caches'
invariant, the draft chain and the tokens a verified row gains.

Speculative decoding (Leviathan, Kalman & Matias 2023, arXiv:2211.17192), its tree form
(:mod:`ar_decoding.tree_speculative`) and prompt lookup (:mod:`ar_decoding.prompt_lookup`)
run the same outer step over a ragged batch (:class:`~ar_core.generation.Rows`):

1. :func:`first_step`: prefill the target's (and the draft's) cache, emit each row's first
   token from the target;
2. draft up to :func:`draft_length` tokens per row (:func:`draft_chain`, a tree, or an
   n-gram lookup);
3. :func:`verify_step`: the target scores ``[last token, drafts]`` in one forward,
   :func:`ar_decoding.verify.verify_draft` keeps a prefix and picks the next token
   (:func:`accepted_tokens`: what the row gains), and :func:`park_finished` rolls the
   caches back.

Cache invariant: between steps the target cache holds every token of a row but its last
(fed in step 3), i.e. ``length - 1`` entries. The draft cache may lag (after a fully
accepted draft it has not seen ``d_{k-1}`` nor the next token); the first draft forward
of a step feeds what it lacks (:func:`catch_up`). Finished rows are parked at cache
length 0 so that their (ignored) writes never overflow.

Jacobi, lookahead and SJD draft from the target itself and use :func:`accepted_tokens`.

Notation: B rows, k draft tokens, V vocabulary.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from ar_core.errors import ConfigError
from ar_core.generation import ModelPass, Rows, TokenPicker, compiled_cache_len, prefill
from ar_core.protocols import CausalLM, KVCache, check_protocol
from ar_decoding.verify import verify_draft

__all__ = [
    "accepted_tokens",
    "catch_up",
    "check_draft_model",
    "draft_chain",
    "draft_length",
    "first_step",
    "park_finished",
    "passes",
]


def check_draft_model(model: CausalLM, draft_model: object, strategy: str) -> CausalLM:
    """``draft_model`` when it is a :class:`~ar_core.protocols.CausalLM` with the target's
    vocabulary, else a ``ConfigError``."""
    if draft_model is None:
        raise ConfigError(
            f"strategy {strategy!r} needs a draft model: pass draft_model=<a small model with "
            f"the target's vocabulary> to generate()"
        )
    check_protocol(draft_model, CausalLM, "draft_model", ("vocab_size", "max_seq_len", "new_cache"))
    draft_model = cast(CausalLM, draft_model)
    if draft_model.vocab_size != model.vocab_size:
        raise ConfigError(
            f"draft_model.vocab_size={draft_model.vocab_size} differs from the target's "
            f"{model.vocab_size}; the draft must share the target's tokenizer/vocabulary"
        )
    return draft_model


def passes(
    models: list[CausalLM], cache_len: int, compile: bool, widths: tuple[int, ...] = ()
) -> tuple[list[ModelPass], int]:
    """Each model's :class:`~ar_core.generation.ModelPass` (the target's ``widths``: its
    usual pass widths, e.g. ``k + 1``) and the cache slots to allocate: ``cache_len``, or
    with ``compile`` the :func:`~ar_core.generation.compiled_cache_len` bucket plus room
    for a padded pass, so that later calls reuse the compiled graphs."""
    if compile:
        limit = min(int(m.max_seq_len) for m in models)
        cache_len = min(limit, compiled_cache_len(cache_len + max(widths, default=1), limit))
    out = [ModelPass(models[0], compile=compile, widths=widths)]
    out += [ModelPass(m, compile=compile) for m in models[1:]]
    return out, cache_len


def park_finished(rows: Rows, *caches: KVCache) -> None:
    """Crop caches to ``length - 1`` per row (the invariant), finished rows to 0."""
    keep = torch.where(rows.finished, 0, rows.length - 1)  # (B,)
    for cache in caches:
        cache.crop(keep)


def first_step(
    models: list[CausalLM], rows: Rows, picker: TokenPicker, cache_len: int
) -> list[KVCache]:
    """A cache of ``cache_len`` slots per model (the target first, then a draft model),
    each prefilled with the prompts; emits each row's first token, picked from the
    target's logits, and parks the caches. Counts the forwards in ``rows.stats``."""
    B = rows.input_ids.shape[0]
    caches = [m.new_cache(B, max_len=cache_len) for m in models]
    logits = [prefill(m, rows.input_ids, c, rows.prompt_lengths) for m, c in zip(models, caches)]
    rows.stats.target_forward_passes += 1
    rows.stats.draft_forward_passes += len(models) - 1
    rows.watch(logits[0])  # decode step 0: the target's prefill
    first = picker.pick(logits[0], rows.seq)  # (B,)
    rows.emit(first[:, None], torch.ones_like(first))
    park_finished(rows, *caches)
    return caches


def draft_length(rows: Rows, k: int, cache_len: int) -> int:
    """This step's draft length: at most ``k``, one less than the most new tokens a row
    may still emit (the target adds one), and no write past ``cache_len``."""
    live = ~rows.finished
    room = cache_len - int(rows.length[live].max())
    return max(0, min(k, int(rows.remaining().max()) - 1, room))


def catch_up(
    model: CausalLM, cache: KVCache, rows: Rows, forward: ModelPass | None = None
) -> Tensor:
    """Feed each row the tokens its cache lacks (``seq[c : length]``), right-padded to the
    widest row; commit each row's own count; return the logits after its last token (B, V).
    Finished rows (parked at 0) feed one dummy token. ``forward``: the model's pass
    (default: an eager one)."""
    need = torch.where(rows.finished, 1, rows.length - cache.lengths)  # (B,) >= 1
    width = int(need.max())
    steps = torch.arange(width, device=need.device)[None, :]  # (1, w)
    cols = (cache.lengths[:, None] + steps).clamp(max=rows.seq.shape[1] - 1)  # (B, w)
    tokens = rows.seq.gather(1, cols)
    tokens = torch.where((steps < need[:, None]) & (tokens >= 0), tokens, 0)  # (B, w)
    logits = (forward or ModelPass(model))(tokens, cache)  # (B, w, V)
    cache.commit(need)
    return logits[rows.rows, need - 1]  # (B, V)


def draft_chain(
    draft_model: CausalLM,
    cache: KVCache,
    rows: Rows,
    k: int,
    picker: TokenPicker,
    forward: ModelPass | None = None,
) -> tuple[Tensor, Tensor | None]:
    """k draft tokens per row, k draft forwards: (B, k) and their probabilities (B, k, V)
    (None when greedy). The draft cache ends with the context and ``d_0 .. d_{k-2}``.
    ``forward``: the draft's pass (default: an eager one)."""
    B = rows.seq.shape[0]
    forward = forward or ModelPass(draft_model)
    drafts = torch.empty(B, k, dtype=torch.long, device=rows.seq.device)
    q_all: list[Tensor] = []
    logits = catch_up(draft_model, cache, rows, forward)  # (B, V)
    rows.stats.draft_forward_passes += 1
    for i in range(k):
        token, q = picker.pick_with_probs(logits, rows.seq, drafts[:, :i])
        drafts[:, i] = token
        if q is not None:
            q_all.append(q)
        if i + 1 < k:
            logits = forward(token[:, None], cache)[:, -1]  # (B, V)
            cache.commit(1)
            rows.stats.draft_forward_passes += 1
    return drafts, (torch.stack(q_all, 1) if q_all else None)


def accepted_tokens(draft: Tensor, n_accepted: Tensor, next_token: Tensor) -> Tensor:
    """The tokens a row gains: its first ``n_accepted`` draft tokens, then ``next_token``:
    (B, k + 1), valid up to column ``n_accepted``."""
    new = torch.cat([draft, next_token[:, None]], dim=1)  # (B, k + 1)
    return new.scatter(1, n_accepted[:, None], next_token[:, None])


def verify_step(
    model: CausalLM,
    cache: KVCache,
    rows: Rows,
    picker: TokenPicker,
    drafts: Tensor,
    q_probs: Tensor | None,
    *,
    lengths: Tensor | None = None,
    draft_cache: KVCache | None = None,
    forward: ModelPass | None = None,
) -> Tensor:
    """The target's half of a step: score ``[last token, drafts]`` (B, k + 1) in one
    forward, emit each row's verified prefix and next token, commit them to the target
    ``cache`` and park both caches. ``q_probs`` and ``lengths`` as in
    :func:`~ar_decoding.verify.verify_draft`; ``forward``: the target's pass (default: an
    eager one). Returns the accepted counts (B,)."""
    tokens = torch.cat([rows.last()[:, None], drafts], 1)  # (B, k + 1)
    logits = (forward or ModelPass(model))(tokens, cache)  # (B, k + 1, V)
    rows.stats.target_forward_passes += 1
    rows.watch(logits)
    n, nxt = verify_draft(picker, drafts, q_probs, logits, rows.seq, lengths=lengths)
    counts = rows.emit(accepted_tokens(drafts, n, nxt), n + 1)
    cache.commit(counts)
    park_finished(rows, cache, *([] if draft_cache is None else [draft_cache]))
    return n
