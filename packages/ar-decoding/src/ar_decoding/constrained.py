"""Constrained decoding: a callback decides which tokens may come next.

The mechanism of constrained beam/greedy decoding in retrieval as generation – SEAL,
Bevilacqua et al., "Autoregressive Search Engines: Generating Substrings as Document
Identifiers" (2022, arXiv:2204.10628), where an FM-index lists the tokens that continue
an n-gram of the corpus – and of grammar-constrained decoding in general.

``allowed_next(tokens)`` receives one row's tokens so far (its prompt, then its new
tokens: a 1-D long tensor) and returns the allowed next token ids (a tensor or a list).
Every other token gets ``-inf`` *before* the config's processors (so top-k/top-p choose
among allowed tokens), then the token is the argmax (temperature 0) or a categorical
draw. An empty allowed set is an ``InputError`` naming the row. Finished rows (after
EOS) are not asked.

The loop is ar-core's ``prefill -> decode_n_tokens`` with a constrained ``pick``.

Notation: B rows, T padded prompt length, N max_new_tokens, V vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
    decode_n_tokens,
    decode_one_token,
)
from ar_core.generation import prefill as prefill_prompt
from ar_core.sampling import (
    apply_processors,
    build_processors,
    logits_to_probs,
    multinomial_sample_one_no_sync,
)
from ar_decoding.rows import cache_budget, check_eos, make_generator

__all__ = ["AllowedNext", "allowed_mask", "constrained"]

AllowedNext = Callable[[Tensor], Tensor | Sequence[int]]


def allowed_mask(
    allowed_next: AllowedNext, history: Tensor, skip: Tensor, vocab_size: int
) -> Tensor:
    """(B, V) bool: the tokens ``allowed_next`` permits after each row of ``history``
    (B, L) (-1 = unused slot); rows in ``skip`` (B,) bool allow everything."""
    B = history.shape[0]
    mask = torch.ones(B, vocab_size, dtype=torch.bool, device=history.device)
    for b in range(B):
        if bool(skip[b]):
            continue
        row = history[b]
        ids = torch.as_tensor(allowed_next(row[row >= 0]), dtype=torch.long)
        ids = ids.to(history.device).flatten()
        if ids.numel() == 0:
            raise InputError(
                f"constrained: allowed_next returned no token for row {b} after "
                f"{int((row >= 0).sum())} tokens; every live row needs at least one allowed "
                f"token (end the constraint with an EOS token)"
            )
        if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise InputError(
                f"constrained: allowed_next returned token id {bad} for row {b}, outside "
                f"the vocabulary [0, {vocab_size})"
            )
        mask[b] = False
        mask[b, ids] = True
    return mask


def constrained(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    allowed_next: AllowedNext,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``constrained``: greedy (temperature 0) or sampling restricted to the
    tokens ``allowed_next`` permits."""
    start = time.perf_counter()
    if not callable(allowed_next):
        raise ConfigError(
            "constrained: pass allowed_next=fn, fn(row tokens (L,) long) -> allowed ids"
        )
    check_eos(config, model.vocab_size)
    B, T = input_ids.shape
    N, V = config.max_new_tokens, model.vocab_size
    device = input_ids.device
    cache_len = cache_budget(model, input_ids, prompt_lengths, N, 0, "lower max_new_tokens")
    processors = build_processors(config)
    gen = make_generator(config, device, generator)
    eos = torch.tensor(config.eos_ids(), dtype=torch.long, device=device)
    greedy_only = config.temperature == 0

    def pick(logits: Tensor, history: Tensor) -> Tensor:
        # decode_n_tokens marks a finished row's tokens -1 in history; EOS stays visible
        finished = torch.isin(history[:, T:], eos).any(-1)  # (B,)
        allowed = allowed_mask(allowed_next, history, finished, V)  # (B, V)
        logits = apply_processors(processors, logits.masked_fill(~allowed, float("-inf")), history)
        if greedy_only:
            return logits.argmax(-1)
        return multinomial_sample_one_no_sync(logits_to_probs(logits), gen)

    stats = GenerationStats()
    cols = torch.arange(T, device=device)[None, :]
    history = torch.full((B, T + N), -1, dtype=torch.long, device=device)
    history[:, :T] = torch.where(cols < prompt_lengths[:, None], input_ids, -1)
    new = torch.full((B, N), config.pad_token_id, dtype=torch.long, device=device)
    with torch.no_grad():
        if N > 0:
            cache = model.new_cache(B, max_len=cache_len)
            logits = prefill_prompt(model, input_ids, cache, prompt_lengths)
            stats.target_forward_passes += 1
            got = decode_n_tokens(
                decode_one_token,
                model,
                logits,
                cache,
                n=N,
                pick=pick,
                history=history,
                eos_ids=eos,
                pad_token_id=config.pad_token_id,
                streamer=streamer,
                stats=stats,
            )
            new[:, : got.shape[1]] = got
    if streamer is not None:
        streamer.end()
    sequences = assemble_sequences(input_ids, prompt_lengths, new, config.pad_token_id)
    stats.wall_seconds = time.perf_counter() - start
    return GenerationResult(sequences=sequences, stats=stats, prompt_lengths=prompt_lengths)
