"""Beam search: num_beams = 1 equals greedy; with enough beams it equals an exhaustive
search over every continuation (scored by the uncached forward), with and without EOS
and length penalty; ragged rows."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import tiny

from ar_core import generate
from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig
from ar_core.model import Transformer


def brute_force(
    model: Transformer, prompt: list[int], n: int, eos: int | None, length_penalty: float
) -> list[int]:
    """Best hypothesis among all V**n continuations (cut at the first EOS), padded with 0."""
    V = model.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=n)))  # (V^n, n)
    x = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits.double(), -1)
    L = len(prompt)
    steps = logp[:, L - 1 : L - 1 + n].gather(-1, seqs[..., None]).squeeze(-1)  # (V^n, n)
    best, best_score = None, float("-inf")
    for seq, lp in zip(seqs.tolist(), steps.tolist()):
        length = seq.index(eos) + 1 if eos is not None and eos in seq else n
        score = sum(lp[:length]) / length**length_penalty
        if score > best_score + 1e-9:
            best, best_score = seq[:length] + [0] * (n - length), score
    assert best is not None
    return best


def test_one_beam_is_greedy() -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(1))
    cfg = GenerationConfig(max_new_tokens=10)
    lengths = [6, 2, 4]
    ref = generate(model, x, cfg, prompt_lengths=lengths)
    out = generate(model, x, cfg, strategy="beam", num_beams=1, prompt_lengths=lengths)
    assert torch.equal(out.sequences, ref.sequences)


@pytest.mark.parametrize(("eos", "length_penalty"), [(None, 1.0), (2, 1.0), (2, 0.0), (0, 2.0)])
def test_enough_beams_equal_exhaustive_search(eos: int | None, length_penalty: float) -> None:
    V, n = 4, 3
    model = tiny(V, dim=16, n_heads=2, n_kv_heads=1, ffn_hidden=64, std=0.3)
    x = torch.tensor([[1, 2, 3], [3, 0, 0], [2, 2, 0]])
    lengths = [3, 1, 2]
    cfg = GenerationConfig(max_new_tokens=n, eos_token_id=eos)
    out = generate(
        model, x, cfg, strategy="beam", num_beams=V ** (n - 1), length_penalty=length_penalty,
        prompt_lengths=lengths,
    )  # fmt: skip
    for b, L in enumerate(lengths):
        expected = brute_force(model, x[b, :L].tolist(), n, eos, length_penalty)
        assert out.sequences[b, L : L + n].tolist() == expected


def test_beam_beats_greedy_somewhere() -> None:
    """The comparison is not vacuous: on this model beam search and greedy disagree."""
    V, n = 4, 3
    model = tiny(V, dim=16, n_heads=2, n_kv_heads=1, ffn_hidden=64, std=0.3)
    prompts = torch.tensor(list(itertools.product(range(V), repeat=2)))  # (16, 2)
    cfg = GenerationConfig(max_new_tokens=n)
    greedy = generate(model, prompts, cfg)
    beams = generate(model, prompts, cfg, strategy="beam", num_beams=V ** (n - 1))
    assert not torch.equal(greedy.sequences, beams.sequences)


def test_bad_kwargs() -> None:
    model = tiny(8, dim=32, ffn_hidden=64)
    x = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="num_beams"):
        generate(model, x, GenerationConfig(max_new_tokens=2), strategy="beam", num_beams=0)
