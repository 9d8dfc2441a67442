"""Prompts of different lengths in one batch: each row's output equals running it alone.

The samplers draw with one generator for the whole batch, so a row's random draws depend
on its batch; the comparison uses the deterministic settings (argmax tokens, and reveal
rules that do not draw: every position at once, or the confidence threshold)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

import ar_core as ar

LENGTHS = [7, 2, 5]
CASES = [
    ("mdlm", {"steps": 1}),
    ("block-diffusion", {"block_size": 4, "threshold": 0.2}),
    ("block-diffusion", {"block_size": 4, "threshold": 0.2, "use_cache": False}),
    ("block-diffusion", {"block_size": 3, "steps": 1}),
    ("freecache", {"block_size": 4, "threshold": 0.2}),
    ("freecache", {"block_size": 4, "threshold": 0.2, "use_cache": False}),
]


@pytest.mark.parametrize(("strategy", "kwargs"), CASES)
def test_ragged_batch_equals_one_at_a_time(strategy: str, kwargs: dict) -> None:
    model = tiny_model(11, seed=6)
    with torch.no_grad():  # larger weights: sharper attention, so padding seen would show
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(4.0)
    prompt = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(2))
    prompt[1, 2:] = 10  # padding may hold any id, the mask id included
    prompt[1, 3] = 11
    cfg = ar.GenerationConfig(max_new_tokens=12, temperature=0.0, seed=0)
    batch = ar.generate(model, prompt, cfg, strategy=strategy, prompt_lengths=LENGTHS, **kwargs)
    for b, n in enumerate(LENGTHS):
        alone = ar.generate(model, prompt[b : b + 1, :n], cfg, strategy=strategy, **kwargs)
        assert torch.equal(batch.sequences[b, : n + 12], alone.sequences[0]), (b, n)
