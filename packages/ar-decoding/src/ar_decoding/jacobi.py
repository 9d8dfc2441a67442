"""Jacobi decoding: lossless greedy decoding with several tokens per forward (strategy
``jacobi``; its n-gram-pool refinement is :mod:`ar_decoding.lookahead`).

Santilli et al., "Accelerating Transformer Inference for Translation via Parallel
Decoding" (2023, arXiv:2305.10427). Greedy decoding is the fixed point of
y_i = argmax p(. | context, y_<i); iterate it on a window of guesses, one target
forward per iteration. Returns exactly the greedy output (ties broken like ``argmax``:
the first index).

One step, per row. The cache holds the committed context except ``last`` (the newest
token). Input ``[last, g_1 .. g_W]`` (causal mask, positions after the context). Output
``y_i`` at slot i-1 is the greedy token after ``last, g_1..g_{i-1}``: ``y_1`` is always
right; ``g_i == y_i`` makes ``y_{i+1}`` right too (``ar_decoding.verify.accept_greedy``).
With ``a`` guesses accepted the row gains ``a + 1`` tokens; the cache commits the ``a + 1``
entries of ``last, g_1..g_a`` (all equal to the greedy sequence; the rest stay pending and
are overwritten); the outputs after the new last token, ``y_{a+2} ..``, are the next
guesses (the window is topped up by repeating its final guess).

Finished rows (EOS or N tokens) keep running in the batch; their cache is cropped to 0
(``Rows.retire_finished``) so they never overflow it, and their outputs are ignored.

Notation: B rows, W window, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Rows,
    Streamer,
    TokenPicker,
    cache_budget,
    check_eos,
    positive_int,
    reject_repetition_penalty,
)
from ar_core.protocols import CausalLM
from ar_decoding.draft import accepted_tokens, first_step
from ar_decoding.verify import accept_greedy

__all__ = ["jacobi"]


def jacobi(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    window: int = 8,
) -> GenerationResult:
    """Strategy ``jacobi``: greedy output, ``window`` guesses refined per forward
    (8: Santilli et al. use blocks of a few tokens; more costs compute on CPU)."""
    reject_repetition_penalty(config, "jacobi")
    window = positive_int(window, "window", "jacobi")
    check_eos(config, model.vocab_size)
    B = input_ids.shape[0]
    N = config.max_new_tokens
    cache_len = cache_budget(
        model, input_ids, prompt_lengths, N, extra=window, fix="lower window or max_new_tokens"
    )
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=0)
    if rows.all_finished():  # max_new_tokens = 0
        return rows.finish()
    with torch.no_grad():
        (cache,) = first_step([model], rows, TokenPicker(config, do_sample=False), cache_len)
        last = rows.last()  # (B,) the argmax after each prompt
        guesses = last[:, None].expand(B, window).clone()  # (B, W)
        while not rows.all_finished():
            rows.retire_finished(cache)
            tokens = torch.cat([last[:, None], guesses], dim=1)  # (B, W + 1)
            logits = model(tokens, cache=cache, commit=False).logits  # (B, W + 1, V)
            rows.stats.target_forward_passes += 1
            rows.watch(logits)
            n_acc, last = accept_greedy(guesses, logits)  # (B,), (B,)
            rows.emit(accepted_tokens(guesses, n_acc, last), n_acc + 1)
            cache.commit(n_acc + 1)
            # outputs after the new last token are the next guesses
            pred = logits.argmax(-1)  # (B, W + 1)
            steps = torch.arange(window, device=pred.device)
            index = (n_acc[:, None] + 1 + steps).clamp(max=window)  # (B, W)
            guesses = pred.gather(1, index)
    return rows.finish()
