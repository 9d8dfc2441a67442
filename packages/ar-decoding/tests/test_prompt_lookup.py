"""Prompt lookup decoding: n-gram drafts, exactly greedy on ragged batches with EOS, and
fewer target passes than tokens on repetitive text."""

from __future__ import annotations

import pytest
import torch
from helpers import Recorder, tiny

from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_decoding.prompt_lookup import lookup_draft


def test_lookup_draft_takes_the_most_recent_longest_match() -> None:
    seq = torch.tensor([5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2])
    assert lookup_draft(seq, 3, 3, 1).tolist() == [4, 7, 1]  # "1 2" most recently at 5
    assert lookup_draft(torch.tensor([1, 2, 3]), 3, 3, 1).tolist() == []
    assert lookup_draft(torch.tensor([4, 4]), 5, 3, 1).tolist() == [4]


def test_equals_greedy_ragged_with_eos_and_streamer() -> None:
    model = tiny()
    x = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(2))
    lengths = [9, 3, 6]
    cfg = GenerationConfig(max_new_tokens=20, temperature=0)
    free = generate(model, x, cfg, prompt_lengths=lengths)
    out = generate(model, x, cfg, strategy="prompt-lookup", prompt_lengths=lengths)
    assert torch.equal(out.sequences, free.sequences)
    eos = int(free.sequences[2, 6 + 5])
    cfg = GenerationConfig(max_new_tokens=20, temperature=0, eos_token_id=eos, pad_token_id=1)
    ref = generate(model, x, cfg, prompt_lengths=lengths)
    rec = Recorder()
    out = generate(
        model,
        x,
        cfg,
        strategy="prompt-lookup",
        prompt_lengths=lengths,
        streamer=rec,
        num_draft_tokens=4,
    )
    assert torch.equal(out.sequences, ref.sequences)
    new = torch.stack([out.sequences[b, n : n + 20] for b, n in enumerate(lengths)])
    assert torch.equal(torch.cat(rec.chunks, 1), new)


def test_repetitive_text_needs_fewer_passes() -> None:
    model = tiny()
    # a model that continues a repeated pattern: its own greedy output, repeated, as prompt
    x = torch.tensor([[3, 4, 5]])
    cycle = generate(model, x, GenerationConfig(max_new_tokens=40, temperature=0)).sequences
    cfg = GenerationConfig(max_new_tokens=30, temperature=0)
    ref = generate(model, cycle, cfg)
    out = generate(model, cycle, cfg, strategy="prompt-lookup")
    assert torch.equal(out.sequences, ref.sequences)
    # greedy continuations of tiny random models fall into cycles, which lookup predicts
    assert out.stats.target_forward_passes < 30
    assert out.stats.mean_accepted_length > 1.0


def test_sampling_runs_and_bad_kwargs() -> None:
    model, x = tiny(), torch.randint(0, 64, (2, 5))
    out = generate(model, x, GenerationConfig(max_new_tokens=8, seed=0), strategy="prompt-lookup")
    assert out.sequences.shape == (2, 13)
    with pytest.raises(ConfigError, match="num_draft_tokens"):
        generate(model, x, strategy="prompt-lookup", num_draft_tokens=0)
    with pytest.raises(ConfigError, match="ngram"):
        generate(model, x, strategy="prompt-lookup", min_ngram_size=4, max_ngram_size=2)
