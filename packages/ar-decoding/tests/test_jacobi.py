"""Jacobi and lookahead decoding equal greedy exactly (ragged batches, EOS, streaming) and
take fewer target forwards than tokens on repetitive text."""

from __future__ import annotations

import pytest
import torch
from helpers import Recorder, copy_model, new_tokens, tiny

from ar_core import generate
from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig
from ar_decoding.lookahead import lookahead_local_mask

STRATEGIES = [
    ("jacobi", {"window": 4}),
    ("jacobi", {"window": 1}),
    ("lookahead", {"window": 4, "ngram": 3, "pool_size": 3}),
    ("lookahead", {"window": 3, "ngram": 2, "pool_size": 1}),
]


@pytest.mark.parametrize(("strategy", "kw"), STRATEGIES)
def test_ragged_batch_with_eos_equals_greedy(strategy: str, kw: dict) -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(1))
    lengths = [6, 2, 4]
    N = 16
    greedy = generate(model, x, GenerationConfig(max_new_tokens=N), prompt_lengths=lengths)
    eos = int(greedy.sequences[1, 2 + 5])  # row 1 stops after 6 new tokens
    cfg = GenerationConfig(max_new_tokens=N, eos_token_id=eos)
    rec = Recorder()
    out = generate(model, x, cfg, strategy=strategy, prompt_lengths=lengths, streamer=rec, **kw)
    ref = generate(model, x, cfg, prompt_lengths=lengths)
    assert torch.equal(out.sequences, ref.sequences)
    assert rec.ended
    assert torch.equal(rec.tokens(), new_tokens(out.sequences, lengths, N))
    assert out.stats.tokens_generated == ref.stats.tokens_generated


@pytest.mark.parametrize(("strategy", "kw"), STRATEGIES[:1] + STRATEGIES[2:3])
def test_repetitive_text_takes_fewer_forwards_than_tokens(strategy: str, kw: dict) -> None:
    model = copy_model(vocab=8, lag=5)
    x = torch.tensor([[1, 2, 3, 4, 5, 1, 2], [6, 2, 7, 3, 0, 6, 6]])
    cfg = GenerationConfig(max_new_tokens=24)
    ref = generate(model, x, cfg)
    out = generate(model, x, cfg, strategy=strategy, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert ref.stats.target_forward_passes == 24
    # tokens per forward > 1.5 proves guesses / pooled n-grams were accepted
    assert out.stats.target_forward_passes * 1.5 < out.stats.tokens_generated / 2
    assert max(out.stats.accepted_lengths) > 1


def test_lookahead_mask_is_causal_per_branch() -> None:
    vis = lookahead_local_mask(window=3, ngram=3, candidates=2)  # (1 + 2*(3+2)) = 11 slots
    assert vis.shape == (11, 11)
    # level 1, column 2 (slot 1 + 3 + 2 = 6) sees last, level 0 columns 0..2, itself
    assert vis[6].nonzero().flatten().tolist() == [0, 1, 2, 3, 6]
    # candidate 1 (slots 9, 10) sees last and its own earlier token only
    assert vis[10].nonzero().flatten().tolist() == [0, 9, 10]
    assert not vis.triu(1).any()  # every slot sees only earlier slots: a DAG in slot order


def test_bad_kwargs_and_unsupported_config() -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="window"):
        generate(model, x, GenerationConfig(max_new_tokens=2), strategy="jacobi", window=0)
    with pytest.raises(ConfigError, match="ngram"):
        generate(model, x, GenerationConfig(max_new_tokens=2), strategy="lookahead", ngram=1)
    with pytest.raises(ConfigError, match="repetition_penalty"):
        generate(
            model, x, GenerationConfig(max_new_tokens=2, repetition_penalty=1.2), strategy="jacobi"
        )
    with pytest.raises(InputError, match="lower window"):
        generate(model, x, GenerationConfig(max_new_tokens=100), strategy="jacobi", window=64)
