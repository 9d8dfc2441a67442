"""Prompt lookup decoding: n-gram drafts, exactly greedy on ragged batches with EOS,
fewer target passes than tokens on repetitive text, and sampled continuations that follow
the target's exact joint (chi-square, significance level 0.001; a broken residual must
fail with p < 1e-6)."""

from __future__ import annotations

import pytest
import torch
from helpers import ALPHA, BROKEN, Recorder, chi2_pvalue, exact_joint, new_tokens, tiny

import ar_decoding.verify as verify
from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_decoding.prompt_lookup import lookup_draft


def test_lookup_draft_takes_the_most_recent_longest_match() -> None:
    seq = torch.tensor([5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2])
    assert lookup_draft(seq, 3, 3, 1).tolist() == [4, 7, 1]  # "1 2" most recently at 5
    assert lookup_draft(torch.tensor([1, 2, 3]), 3, 3, 1).tolist() == []
    assert lookup_draft(torch.tensor([4, 4]), 5, 3, 1).tolist() == [4]


def test_lookup_draft_prefers_a_full_draft_in_a_short_loop() -> None:
    # a loop of period 2: the most recent "1 2" (at 6) is followed by 2 tokens only, the
    # ones at 2 and 4 by 4 or more; the most recent full-length one (4) wins
    seq = torch.tensor([8, 9, 1, 2, 1, 2, 1, 2, 1, 2])
    assert lookup_draft(seq, 4, 2, 1).tolist() == [1, 2, 1, 2]
    seq = torch.tensor([8, 1, 2, 5, 6, 1, 2, 7, 1, 2])  # both hits offer k = 2: most recent
    assert lookup_draft(seq, 2, 2, 1).tolist() == [7, 1]
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # against a brute force over random short sequences (seed 0)
        s = torch.randint(0, 3, (int(torch.randint(2, 12, (), generator=g)),), generator=g)
        k = int(torch.randint(1, 6, (), generator=g))
        best: list[int] = []
        for n in range(min(2, s.numel() - 1), 0, -1):
            L = s.numel()
            hits = [i for i in range(L - n) if s[i : i + n].tolist() == s[L - n :].tolist()]
            if hits:
                lens = [min(k, L - i - n) for i in hits]
                i = max(h for h, c in zip(hits, lens, strict=True) if c == max(lens))
                best = s[i + n : i + n + k].tolist()
                break
        assert lookup_draft(s, k, 2, 1).tolist() == best, (s.tolist(), k)


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
    assert rec.ended
    assert torch.equal(rec.tokens(), new_tokens(out.sequences, lengths, 20))


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


def test_sampling_matches_the_exact_joint_and_a_broken_residual_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The prompt repeats, so most steps verify a drafted n-gram continuation (a one-hot q:
    accepted with probability p(x), else the next token comes from p without x)."""
    model = tiny(4, dim=32, seed=11, scale=3.0)
    prompt, n, M = [1, 2, 3, 1, 2, 3, 1, 2], 3, 4000
    joint = exact_joint(model, prompt, n)
    x = torch.tensor([prompt] * M)
    cfg = GenerationConfig(max_new_tokens=n, seed=0)
    out = generate(model, x, cfg, strategy="prompt-lookup")
    assert chi2_pvalue(out.sequences[:, len(prompt) :], joint, 4) > ALPHA
    drafted = torch.tensor(out.stats.accepted_lengths) > 1  # per (step, row)
    assert drafted.float().mean() > 0.05  # measured: 6.6% of the steps accepted a draft
    monkeypatch.setattr(verify, "residual_distribution", lambda p, q: p)
    bad = generate(model, x, cfg, strategy="prompt-lookup")
    assert chi2_pvalue(bad.sequences[:, len(prompt) :], joint, 4) < BROKEN


def test_bad_kwargs() -> None:
    model, x = tiny(), torch.randint(0, 64, (2, 5))
    with pytest.raises(ConfigError, match="num_draft_tokens"):
        generate(model, x, strategy="prompt-lookup", num_draft_tokens=0)
    with pytest.raises(ConfigError, match="ngram"):
        generate(model, x, strategy="prompt-lookup", min_ngram_size=4, max_ngram_size=2)
