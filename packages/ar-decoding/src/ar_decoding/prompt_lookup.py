"""Prompt lookup decoding: the draft is the continuation of the last n-gram of a row found
earlier in that row's own context; the target verifies it in one forward (strategy
``prompt-lookup``).

Saxena, "Prompt Lookup Decoding" (2023, github.com/apoorvumang/prompt-lookup-decoding),
the ``prompt_lookup_num_tokens`` mode of Hugging Face's ``generate``; a draft-model-free
instance of speculative decoding (Leviathan et al., 2023, arXiv:2211.17192), verified
with :mod:`ar_decoding.verify` (greedy: identical to greedy decoding; sampling: the
deterministic draft is a one-hot q, so the target distribution is kept exactly).

Lookup, per row: for n = ``max_ngram_size`` down to ``min_ngram_size``, the earlier
occurrences of the row's last n tokens; the draft is up to ``num_draft_tokens`` tokens
that followed the most recent occurrence among those followed by the most tokens (in a
loop shorter than ``num_draft_tokens`` the most recent occurrence is followed by one
period only; Hugging Face takes the earliest occurrence). Rows without a match draft nothing (that step is a plain
decoding step for them). Drafts are right-padded to the longest one; the per-row draft
lengths go to the verifier.

Notation: B rows, k draft tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.errors import ConfigError
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
from ar_decoding.draft import draft_length, first_step, passes, verify_step

__all__ = ["lookup_draft", "prompt_lookup"]


def lookup_draft(tokens: Tensor, k: int, max_ngram: int, min_ngram: int) -> Tensor:
    """Draft (up to k tokens) for one sequence ``tokens`` (L,): for its longest suffix
    n-gram that occurs earlier, the continuation of the most recent occurrence among those
    with the longest continuation (at most k); empty if none."""
    L = tokens.numel()
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        windows = tokens[: L - 1].unfold(0, n, 1)  # (L - n, n): n-grams ending before L-1
        hits = (windows == tokens[L - n :]).all(-1).nonzero()[:, 0]  # (M,) ascending
        if hits.numel():
            # a hit at i is followed by min(k, L - i - n) tokens: in a loop of period p < k
            # the most recent hit offers only p of them, an earlier one all k; take the most
            # recent hit among those offering the longest draft
            follow = (L - n - hits).clamp(max=k)  # (M,)
            i = int(hits[follow == follow.max()][-1])
            return tokens[i + n : i + n + k]
    return tokens[:0]


def _drafts(rows: Rows, k: int, max_ngram: int, min_ngram: int) -> tuple[Tensor, Tensor]:
    """(B, k') right-padded drafts and their lengths (B,); finished rows draft nothing."""
    found = []
    for b in range(rows.seq.shape[0]):
        if bool(rows.finished[b]):
            found.append(rows.seq.new_empty(0))
        else:
            found.append(lookup_draft(rows.seq[b, : int(rows.length[b])], k, max_ngram, min_ngram))
    lengths = torch.tensor([d.numel() for d in found], dtype=torch.long, device=rows.seq.device)
    width = int(lengths.max()) if lengths.numel() else 0
    drafts = rows.seq.new_zeros(len(found), width)
    for b, d in enumerate(found):
        drafts[b, : d.numel()] = d
    return drafts, lengths


def prompt_lookup(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    num_draft_tokens: int = 10,
    max_ngram_size: int = 3,
    min_ngram_size: int = 1,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
    compile: bool = False,
) -> GenerationResult:
    """Strategy ``prompt-lookup`` (defaults: 10 draft tokens, n-grams of 3 down to 1, as
    Hugging Face's ``prompt_lookup_num_tokens=10``, ``max_matching_ngram_size=3``... with
    n down to 1). ``do_sample`` None = sample iff ``config.temperature > 0``.
    ``compile``: the verification passes run as compiled graphs
    (:class:`~ar_core.generation.ModelPass`, one per padded width)."""
    k = positive_int(num_draft_tokens, "num_draft_tokens", "prompt-lookup")
    if not (isinstance(min_ngram_size, int) and isinstance(max_ngram_size, int)) or not (
        1 <= min_ngram_size <= max_ngram_size
    ):
        raise ConfigError(
            f"need 1 <= min_ngram_size <= max_ngram_size, got min_ngram_size={min_ngram_size!r}, "
            f"max_ngram_size={max_ngram_size!r}"
        )
    picker = TokenPicker(config, do_sample, generator, input_ids.device)
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=k + 1)
    cache_len = cache_budget(
        model, input_ids, prompt_lengths, config.max_new_tokens, extra=k + 1, extra_required=False
    )
    if rows.all_finished():  # max_new_tokens = 0
        return rows.finish()
    # a step whose rows found no match is a one-token step: its own graph, not padded
    (forward,), slots = passes([model], cache_len, compile, (1, k + 1))
    with torch.no_grad():
        (cache,) = first_step([model], rows, picker, slots)
        while not rows.all_finished():
            k_step = draft_length(rows, k, cache_len)
            drafts, lengths = _drafts(rows, k_step, max_ngram_size, min_ngram_size)
            verify_step(model, cache, rows, picker, drafts, None, lengths=lengths, forward=forward)
    return rows.finish()
