"""Constrained decoding: every generated token is allowed by the callback (greedy and
sampling), the unconstrained callback reproduces greedy, an empty allowed set names the
row, EOS rows are not asked again."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny

from ar_core import generate
from ar_core.errors import InputError
from ar_core.generation import GenerationConfig


def even_after_odd(tokens: torch.Tensor) -> list[int]:
    """A toy grammar: after an odd token only even tokens below 10; after an even one, any odd."""
    last = int(tokens[-1])
    return list(range(0, 10, 2)) if last % 2 else list(range(1, 32, 2))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_token_is_allowed(temperature: float) -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.randint(0, 32, (4, 5), generator=torch.Generator().manual_seed(2))
    lengths = [5, 3, 1, 4]
    cfg = GenerationConfig(max_new_tokens=12, temperature=temperature, top_k=3, seed=0)
    out = generate(
        model, x, cfg, strategy="constrained", prompt_lengths=lengths, allowed_next=even_after_odd
    )
    for b, L in enumerate(lengths):
        row = out.sequences[b, : L + 12]
        for t in range(L, L + 12):
            assert int(row[t]) in even_after_odd(row[:t])


def test_unconstrained_equals_greedy_and_sampling() -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(3))
    everything = lambda tokens: torch.arange(32)  # noqa: E731
    for cfg, strategy in [
        (GenerationConfig(max_new_tokens=8, temperature=0.0), "greedy"),
        (GenerationConfig(max_new_tokens=8, seed=5, top_p=0.9), "sample"),
    ]:
        ref = generate(model, x, cfg, strategy=strategy)
        out = generate(model, x, cfg, strategy="constrained", allowed_next=everything)
        assert torch.equal(out.sequences, ref.sequences)


def test_empty_allowed_set_names_the_row() -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.zeros(3, 3, dtype=torch.long)

    def nothing_after_three(tokens: torch.Tensor) -> list[int]:
        return [] if len(tokens) == 3 else [1]

    with pytest.raises(InputError, match="row 2 after 3 tokens"):
        generate(
            model, x, GenerationConfig(max_new_tokens=4), strategy="constrained",
            prompt_lengths=[2, 2, 3], allowed_next=nothing_after_three,
        )  # fmt: skip


def test_finished_rows_are_not_asked() -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.zeros(2, 2, dtype=torch.long)
    seen: list[int] = []

    def eos_first(tokens: torch.Tensor) -> list[int]:
        seen.append(len(tokens))
        return [5] if len(tokens) == 2 else [6]

    cfg = GenerationConfig(max_new_tokens=4, eos_token_id=5)
    out = generate(model, x, cfg, strategy="constrained", allowed_next=eos_first)
    assert out.sequences[:, 2:].tolist() == [[5, 0, 0, 0]] * 2
    assert seen == [2, 2]
