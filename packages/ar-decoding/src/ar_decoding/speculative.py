"""Speculative decoding with a separate draft model: strategies ``speculative`` (a chain
of k draft tokens) and ``tree-speculative`` (a token tree, see :mod:`ar_decoding.tree`).

Leviathan, Kalman & Matias, "Fast Inference from Transformers via Speculative Decoding"
(2023, arXiv:2211.17192); Chen et al., "Accelerating Large Language Model Decoding with
Speculative Sampling" (2023, arXiv:2302.01318).

One step, per row of a ragged batch:

1. the draft model proposes k tokens (k small forwards, one token each);
2. the target scores ``[last token, d_0 .. d_{k-1}]`` in ONE forward (B, k+1, V);
3. :mod:`ar_decoding.verify` keeps a prefix of the draft and picks the next token
   (greedy: argmax agreement; sampling: min(1, p/q), residual, bonus) - so the output is
   the target's greedy output / sampling distribution exactly;
4. both KV caches roll back with ``cache.crop(per-row lengths)``.

Cache invariant: before a step the target cache holds every token of a row but its last
(the last is fed in step 2), i.e. ``length - 1`` entries. The draft cache may lag
(after a fully accepted draft it has not seen ``d_{k-1}`` nor the next token); its
first forward of a step feeds the missing tokens, right-padded to the widest row, and
commits each row's own count (:func:`catch_up`). Finished rows are parked at cache
length 0 so that their (ignored) writes never overflow.

Adaptive k (``adaptive=True``, Hugging Face's ``num_assistant_tokens_schedule
="heuristic"`` rule on the batch's best row): after a step in which some unfinished row
accepted all k drafts, k grows by 2 (up to ``max_draft_tokens``); otherwise it shrinks
by 1 (down to 1).

Greedy vs sampling: ``do_sample=None`` samples iff ``config.temperature > 0``. Greedy
uses the ``greedy`` strategy's rule (argmax after the repetition penalty); sampling runs
the config's processors over both models' logits.

Notation: B rows, T padded prompt length, N max_new_tokens, k draft tokens, V vocab.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    GenerationStats,
    Streamer,
    assemble_sequences,
)
from ar_decoding.rows import Picker, Rows, accepted_tokens
from ar_decoding.tree import tree_speculative

__all__ = ["catch_up", "check_draft_model", "speculative", "tree_speculative"]


def check_draft_model(model: Any, draft_model: Any, strategy: str) -> None:
    """ConfigError unless ``draft_model`` is a model with the target's vocabulary."""
    if draft_model is None:
        raise ConfigError(
            f"strategy {strategy!r} needs a draft model: pass draft_model=<a small model with "
            f"the target's vocabulary> to generate()"
        )
    for attr in ("vocab_size", "max_seq_len", "new_cache"):
        if not hasattr(draft_model, attr):
            raise ConfigError(
                f"draft_model has no {attr!r}: pass a model following the ar model protocol "
                f"(e.g. an ar_core.Transformer)"
            )
    if draft_model.vocab_size != model.vocab_size:
        raise ConfigError(
            f"draft_model.vocab_size={draft_model.vocab_size} differs from the target's "
            f"{model.vocab_size}; the draft must share the target's tokenizer/vocabulary"
        )


def cache_length(models: list[Any], T: int, prompt_lengths: Tensor, N: int, lookahead: int) -> int:
    """Cache rows long enough for the prompt, N tokens and ``lookahead`` speculative slots
    (capped by the models' ``max_seq_len``); InputError when even greedy would not fit."""
    need = max(T, int(prompt_lengths.max()) + N - 1)
    limit = min(m.max_seq_len for m in models)
    if need > limit:
        raise InputError(
            f"prompt length {int(prompt_lengths.max())} + max_new_tokens {N} needs {need} "
            f"positions but max_seq_len is {limit}; shorten the prompt or lower max_new_tokens"
        )
    return min(need + lookahead, limit)


def prefill(model: Any, input_ids: Tensor, cache: Any, prompt_lengths: Tensor) -> Tensor:
    """Run the padded prompts (B, T), commit each row's length; last-prompt-token logits (B, V)."""
    logits = model(input_ids, cache=cache, commit=False).logits  # (B, T, V)
    cache.commit(prompt_lengths)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return logits[rows, prompt_lengths - 1]  # (B, V)


def park_finished(rows: Rows, *caches: Any) -> None:
    """Crop caches to ``length - 1`` per row (the invariant), finished rows to 0."""
    keep = torch.where(rows.finished, 0, rows.length - 1)  # (B,)
    for cache in caches:
        cache.crop(keep)


def catch_up(model: Any, cache: Any, rows: Rows) -> Tensor:
    """Feed each row the tokens its cache lacks (``seq[c : length]``), right-padded to the
    widest row; commit each row's own count; return the logits after its last token (B, V).
    Finished rows (parked at 0) feed one dummy token."""
    need = torch.where(rows.finished, 1, rows.length - cache.lengths)  # (B,) >= 1
    width = int(need.max())
    steps = torch.arange(width, device=need.device)[None, :]  # (1, w)
    cols = (cache.lengths[:, None] + steps).clamp(max=rows.seq.shape[1] - 1)  # (B, w)
    tokens = rows.seq.gather(1, cols)
    tokens = torch.where((steps < need[:, None]) & (tokens >= 0), tokens, 0)  # (B, w)
    logits = model(tokens, cache=cache, commit=False).logits  # (B, w, V)
    cache.commit(need)
    return logits[rows.rows, need - 1]  # (B, V)


def draft_chain(
    draft_model: Any, cache: Any, rows: Rows, k: int, picker: Picker, stats: GenerationStats
) -> tuple[Tensor, Tensor | None]:
    """k draft tokens per row, k draft forwards: (B, k) and their probabilities (B, k, V)
    (None when greedy). The draft cache ends with the context and ``d_0 .. d_{k-2}``."""
    B = rows.seq.shape[0]
    drafts = torch.empty(B, k, dtype=torch.long, device=rows.seq.device)
    q_all: list[Tensor] = []
    logits = catch_up(draft_model, cache, rows)  # (B, V)
    stats.draft_forward_passes += 1
    for i in range(k):
        token, q = picker.pick_with_probs(logits, rows.seq, drafts[:, :i])
        drafts[:, i] = token
        if q is not None:
            q_all.append(q)
        if i + 1 < k:
            logits = draft_model(token[:, None], cache=cache).logits[:, -1]  # (B, V)
            stats.draft_forward_passes += 1
    return drafts, (torch.stack(q_all, 1) if q_all else None)


def _check_k(name: str, k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {k!r}")


def speculative(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    draft_model: Any = None,
    num_draft_tokens: int = 4,
    adaptive: bool = False,
    max_draft_tokens: int = 16,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``speculative``: chain speculative decoding with ``draft_model``.

    ``num_draft_tokens`` k >= 1 (the start value when ``adaptive``); ``max_draft_tokens``
    caps adaptive growth. ``do_sample`` None = sample iff ``config.temperature > 0``.
    """
    check_draft_model(model, draft_model, "speculative")
    _check_k("num_draft_tokens", num_draft_tokens)
    _check_k("max_draft_tokens", max_draft_tokens)
    k_max = max(num_draft_tokens, max_draft_tokens) if adaptive else num_draft_tokens
    start = time.perf_counter()
    stats = GenerationStats()
    B, T = input_ids.shape
    N = config.max_new_tokens
    picker = Picker(config, do_sample, generator, input_ids.device)
    rows = Rows(input_ids, prompt_lengths, config, streamer, stats, scratch=k_max + 1)
    cache_len = cache_length([model, draft_model], T, prompt_lengths, N, k_max + 1)
    k = num_draft_tokens
    with torch.no_grad():
        if N > 0:
            target_cache = model.new_cache(B, max_len=cache_len)
            draft_cache = draft_model.new_cache(B, max_len=cache_len)
            logits = prefill(model, input_ids, target_cache, prompt_lengths)  # (B, V)
            prefill(draft_model, input_ids, draft_cache, prompt_lengths)
            stats.target_forward_passes += 1
            stats.draft_forward_passes += 1
            first = picker.pick(logits, rows.seq)  # (B,)
            rows.emit(first[:, None], torch.ones_like(first))
            park_finished(rows, target_cache, draft_cache)
        while not rows.all_finished():
            live = ~rows.finished
            # no row needs more than its remaining tokens; no write may pass the cache
            room = cache_len - int(rows.length[live].max())
            k_step = max(0, min(k, int(rows.remaining().max()) - 1, room))
            if k_step > 0:
                drafts, q = draft_chain(draft_model, draft_cache, rows, k_step, picker, stats)
            else:
                drafts, q = rows.seq.new_empty(B, 0), None
            tokens = torch.cat([rows.last()[:, None], drafts], 1)  # (B, k+1)
            logits = model(tokens, cache=target_cache, commit=False).logits  # (B, k+1, V)
            stats.target_forward_passes += 1
            n, nxt = picker.verify(drafts, q, logits, rows.seq)
            # the accepted prefix, then the next token: (B, k+1)
            counts = rows.emit(accepted_tokens(drafts, n, nxt), n + 1)
            target_cache.commit(counts)
            park_finished(rows, target_cache, draft_cache)
            if adaptive and k_step == k:
                best = int(n[live].max())
                k = min(k + 2, k_max) if best == k else max(1, k - 1)
    rows.end()
    sequences = assemble_sequences(input_ids, prompt_lengths, rows.new_tokens, config.pad_token_id)
    stats.wall_seconds = time.perf_counter() - start
    return GenerationResult(sequences=sequences, stats=stats, prompt_lengths=prompt_lengths)
