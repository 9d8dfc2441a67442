"""Constrained decoding: a callback decides which tokens may come next.

The mechanism of constrained beam/greedy decoding in retrieval as generation – SEAL,
Bevilacqua et al., "Autoregressive Search Engines: Generating Substrings as Document
Identifiers" (2022, arXiv:2204.10628), where an FM-index lists the tokens that continue
an n-gram of the corpus – and of grammar-constrained decoding in general.

``allowed_next(tokens)`` receives one row's tokens so far (its prompt, then its new
tokens: a 1-D long tensor) and returns the allowed next token ids (a tensor or a list).
Every other token gets ``-inf`` *before* the config's processors (so top-k/top-p choose
among allowed tokens), then the token is the argmax (temperature 0) or a categorical
draw (``ar_core.generation.TokenPicker``). An empty allowed set is an ``InputError``
naming the row. Finished rows (after EOS) are not asked.

The loop is ar-core's ``greedy``/``sample`` loop
(``ar_core.generation.decode_with_pick``) with a constrained pick.

Notation: B rows, T padded prompt length, N max_new_tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Streamer,
    TokenPicker,
    decode_with_pick,
)
from ar_core.protocols import CausalLM

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
    model: CausalLM,
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
    if not callable(allowed_next):
        raise ConfigError(
            "constrained: pass allowed_next=fn, fn(row tokens (L,) long) -> allowed ids"
        )
    T, V = input_ids.shape[1], model.vocab_size
    picker = TokenPicker(config, generator=generator, device=input_ids.device)
    eos = torch.tensor(config.eos_ids(), dtype=torch.long, device=input_ids.device)

    def pick(logits: Tensor, history: Tensor) -> Tensor:
        # the loop marks a finished row's tokens -1 in history; its EOS stays visible
        finished = torch.isin(history[:, T:], eos).any(-1)  # (B,)
        allowed = allowed_mask(allowed_next, history, finished, V)  # (B, V)
        return picker.pick(logits.masked_fill(~allowed, float("-inf")), history)

    return decode_with_pick(
        model, input_ids, config, prompt_lengths=prompt_lengths, pick=pick, streamer=streamer
    )
