"""Speculative decoding with a separate draft model, a chain of k draft tokens (strategy
``speculative``; the token-tree form is :mod:`ar_decoding.tree_speculative`).

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

The caches' invariant and the drafting helpers are in :mod:`ar_decoding.draft`.

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

import torch
from torch import Tensor

from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Rows,
    Streamer,
    TokenPicker,
    cache_budget,
    positive_int,
)
from ar_core.protocols import CausalLM
from ar_decoding.draft import (
    check_draft_model,
    draft_chain,
    draft_length,
    first_step,
    passes,
    verify_step,
)

__all__ = ["speculative"]


def speculative(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    draft_model: CausalLM | None = None,
    num_draft_tokens: int = 4,
    adaptive: bool = False,
    max_draft_tokens: int = 16,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
    compile: bool = False,
) -> GenerationResult:
    """Strategy ``speculative``: chain speculative decoding with ``draft_model``.

    ``num_draft_tokens`` k >= 1 (the start value when ``adaptive``); ``max_draft_tokens``
    caps adaptive growth. ``do_sample`` None = sample iff ``config.temperature > 0``.
    ``compile``: the target's verification and the draft's steps run as compiled graphs
    (:class:`~ar_core.generation.ModelPass`; the first calls compile, ~20 s per width).
    """
    draft = check_draft_model(model, draft_model, "speculative")
    positive_int(num_draft_tokens, "num_draft_tokens", "speculative")
    positive_int(max_draft_tokens, "max_draft_tokens", "speculative")
    k_max = max(num_draft_tokens, max_draft_tokens) if adaptive else num_draft_tokens
    B = input_ids.shape[0]
    picker = TokenPicker(config, do_sample, generator, input_ids.device)
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=k_max + 1)
    cache_len = cache_budget(
        [model, draft],
        input_ids,
        prompt_lengths,
        config.max_new_tokens,
        extra=k_max + 1,
        extra_required=False,
    )
    if rows.all_finished():  # max_new_tokens = 0
        return rows.finish()
    k = num_draft_tokens
    widths = () if adaptive else (k + 1,)
    (target_pass, draft_pass), slots = passes([model, draft], cache_len, compile, widths)
    with torch.no_grad():
        target_cache, draft_cache = first_step([model, draft], rows, picker, slots)
        while not rows.all_finished():
            live = ~rows.finished
            k_step = draft_length(rows, k, cache_len)
            if k_step > 0:
                drafts, q = draft_chain(draft, draft_cache, rows, k_step, picker, draft_pass)
            else:
                drafts, q = rows.seq.new_empty(B, 0), None
            n = verify_step(
                model, target_cache, rows, picker, drafts, q, draft_cache=draft_cache,
                forward=target_pass,
            )  # fmt: skip
            if adaptive and k_step == k:
                best = int(n[live].max())
                k = min(k + 2, k_max) if best == k else max(1, k - 1)
    return rows.finish()
