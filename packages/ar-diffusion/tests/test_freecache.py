"""FreeCache: refreshed at every call it equals the uncached reference token for token;
without refreshes it makes the same number of calls, most of them over the block only."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

import ar_core as ar
from ar_core.errors import ConfigError, InputError

MASK = 11


@pytest.mark.parametrize("kwargs", [{}, {"steps": 2}, {"threshold": 0.3}, {"block_size": 12}])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_refreshed_every_call_equals_uncached(kwargs: dict, temperature: float) -> None:
    model = tiny_model(11, seed=6, sharp=5.0)
    prompt = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(7))
    cfg = ar.GenerationConfig(max_new_tokens=12, temperature=temperature, seed=8)
    run = {"strategy": "freecache", "block_size": 4} | kwargs
    exact = ar.generate(model, prompt, cfg, refresh=1, **run)
    ref = ar.generate(model, prompt, cfg, use_cache=False, **run)
    assert torch.equal(exact.sequences, ref.sequences)
    assert torch.equal(ref.sequences[:, :6], prompt)
    assert bool((ref.sequences[:, 6:] < MASK).all())
    reuse = ar.generate(model, prompt, cfg, **run)  # refreshes at block starts only
    assert reuse.stats.target_forward_passes == ref.stats.target_forward_passes
    if "threshold" not in kwargs:
        L = run["block_size"]
        assert ref.stats.target_forward_passes == (12 // L) * kwargs.get("steps", L)


@torch.no_grad()
def test_block_calls_use_the_cached_stable_keys() -> None:
    """A block call after a refresh equals the reference's block logits when nothing
    outside the block changed (the stable keys are then exactly current); it runs L
    queries, not T."""
    from ar_diffusion.freecache import FreeCacheDenoiser
    from ar_diffusion.layout import PromptLayout

    model = tiny_model(11, seed=3)
    B, P, N, L = 2, 5, 8, 4
    prompt = torch.randint(0, 11, (B, P), generator=torch.Generator().manual_seed(1))
    layout = PromptLayout.build(model, prompt, torch.full((B,), P), N, "t")
    x = torch.cat([prompt, torch.full((B, N), MASK)], 1)
    stats = ar.GenerationStats()
    den = FreeCacheDenoiser(model, layout, L, use_cache=True, refresh=None, stats=stats)
    ref = FreeCacheDenoiser(model, layout, L, use_cache=False, refresh=None, stats=stats)
    den.start_block(1)
    ref.start_block(1)
    x[:, P : P + L] = torch.randint(0, 11, (B, L))  # block 0 finished
    torch.testing.assert_close(den.logits(x), ref.logits(x), atol=1e-5, rtol=1e-5)  # refresh
    torch.testing.assert_close(den.logits(x), ref.logits(x), atol=1e-5, rtol=1e-5)  # block only
    x[:, P + L] = 3  # the block changes: its own keys are recomputed at the block call
    diff = (den.logits(x) - ref.logits(x)).abs().max()
    assert 0 < float(diff) < 0.5  # approximate: the stable keys are stale now
    assert stats.target_forward_passes == 6


def test_freecache_bad_input() -> None:
    model = tiny_model(11)
    prompt = torch.randint(0, 11, (1, 4))
    cfg = ar.GenerationConfig(max_new_tokens=12)
    fc = "freecache"
    with pytest.raises(ConfigError, match="block_size=5 does not divide the length 12"):
        ar.generate(model, prompt, cfg, strategy=fc, block_size=5)
    with pytest.raises(ConfigError, match="steps must be an int >= 1, got 0"):
        ar.generate(model, prompt, cfg, strategy=fc, steps=0)
    with pytest.raises(ConfigError, match="refresh must be an int >= 1, got 0"):
        ar.generate(model, prompt, cfg, strategy=fc, refresh=0)
    with pytest.raises(ConfigError, match="not both"):
        ar.generate(model, prompt, cfg, strategy=fc, threshold=0.5, steps=2)
    with pytest.raises(InputError, match="mask_id=2 is a real token of the input"):
        ar.generate(model, torch.tensor([[2, 1]]), cfg, strategy=fc, mask_id=2)
    with pytest.raises(InputError, match="60 \\+ max_new_tokens 12 = 72 .* max_seq_len=64"):
        ar.generate(model, torch.zeros(1, 60, dtype=torch.long), cfg, strategy=fc)
