"""BD3-LM: the vectorised loss equals running each block on its clean prefix; block size 1
is AR; cached semi-AR sampling equals the uncached reference token for token."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_model

import ar_core as ar
from ar_core import masks
from ar_core.errors import ConfigError, InputError
from ar_diffusion.bd3 import bd3_loss, bd3_nelbo_terms
from ar_diffusion.schedule import LogLinearSchedule
from ar_diffusion.subs import subs_log_probs

MASK = 11


def blockwise_terms(model, x_t, x0, L):
    """Reference: each block b run separately, after its clean prefix x0[:, :bL], under a
    block-causal mask (the prefix's blocks causal, the noisy block bidirectional)."""
    n = x0.shape[1]
    out = torch.zeros(x0.shape)
    for b in range(n // L):
        seq = torch.cat([x0[:, : b * L], x_t[:, b * L : (b + 1) * L]], 1)
        steps = torch.arange(seq.shape[1]) // L
        logits = model(seq, mask=masks.block_causal(steps)).logits[:, -L:]
        noisy = x_t[:, b * L : (b + 1) * L]
        logp = subs_log_probs(logits, noisy, MASK)
        nll = -logp.gather(-1, x0[:, b * L : (b + 1) * L, None])[..., 0]
        out[:, b * L : (b + 1) * L] = torch.where(noisy == MASK, nll, 0.0)
    return out


@pytest.mark.parametrize("L", [1, 2, 4, 12])
@torch.no_grad()
def test_vectorised_loss_equals_each_block_on_its_clean_prefix(L: int) -> None:
    model = tiny_model(11, seed=1)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 11, (3, 12), generator=g)
    sched = LogLinearSchedule(t_min=0.3, t_max=0.8)
    t = sched.clip(torch.rand(3, 12 // L, generator=g))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss = bd3_loss(model, x0, block_size=L, mask_id=MASK, schedule=sched, t=t, generator=g1)
    u = torch.rand(x0.shape, generator=g2)
    t_pos = t.repeat_interleave(L, 1)
    x_t = torch.where(u < sched.mask_rate(t_pos), MASK, x0)
    assert bool((x_t == MASK).any())
    ref = blockwise_terms(model, x_t, x0, L)
    torch.testing.assert_close(bd3_nelbo_terms(model, x_t, x0, L, MASK), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, (ref / t_pos).sum(-1), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_block_size_one_nelbo_is_the_ar_nll() -> None:
    """L = 1: a block is masked with probability t, weight 1/t: the t-integral is exactly
    the AR NLL sum_l -log p(x_l | x_<l, [MASK] at l). Seeded Monte Carlo (eps = 0, full
    range) must agree within 3 standard errors; at t = 1 every position is masked and the
    one-sample estimate is the AR NLL exactly."""
    model = tiny_model(11, seed=2, sharp=10.0)
    x0 = torch.randint(0, 11, (1, 8), generator=torch.Generator().manual_seed(3))
    ar_nll = 0.0
    for pos in range(8):  # the AR NLL with a causal mask, one position at a time
        seq = torch.cat([x0[:, :pos], torch.tensor([[MASK]])], 1)
        logits = model(seq, mask=masks.causal()).logits[0, -1, :MASK]
        ar_nll -= float(torch.log_softmax(logits, -1)[x0[0, pos]])
    sched = LogLinearSchedule(eps=0.0)
    exact = bd3_loss(model, x0, block_size=1, mask_id=MASK, schedule=sched, t=torch.ones(1, 8))
    assert math.isclose(float(exact), ar_nll, rel_tol=1e-5)
    g = torch.Generator().manual_seed(4)
    draws = bd3_loss(
        model, x0.repeat(4000, 1), block_size=1, mask_id=MASK, schedule=sched, generator=g
    )
    se = float(draws.std()) / math.sqrt(draws.numel())
    assert abs(float(draws.mean()) - ar_nll) < 3 * se, (float(draws.mean()), ar_nll, se)


@pytest.mark.parametrize(
    ("L", "kwargs"),
    [(4, {}), (4, {"steps": 2}), (2, {"steps": 5}), (1, {}), (4, {"threshold": 0.3}), (12, {})],
)
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_equals_uncached(L: int, kwargs: dict, temperature: float) -> None:
    model = tiny_model(11, seed=6, sharp=5.0)
    prompt = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(7))
    cfg = ar.GenerationConfig(max_new_tokens=12, temperature=temperature, seed=8)
    run = dict(strategy="block-diffusion", block_size=L, **kwargs)
    cached = ar.generate(model, prompt, cfg, **run)
    ref = ar.generate(model, prompt, cfg, use_cache=False, **run)
    assert torch.equal(cached.sequences, ref.sequences)
    assert torch.equal(cached.sequences[:, :6], prompt)
    assert bool((cached.sequences[:, 6:] < MASK).all())
    if "threshold" not in kwargs:
        steps = kwargs.get("steps", L)
        denoise = (12 // L) * min(steps, L)
        assert ref.stats.target_forward_passes == denoise
        # + the prompt's prefill + one clean-KV write per finished block but the last
        assert cached.stats.target_forward_passes == denoise + 1 + 12 // L - 1


def test_threshold_unmasking_uses_fewer_calls_as_the_threshold_drops() -> None:
    model = tiny_model(11, seed=6, sharp=20.0)
    prompt = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(9))
    cfg = ar.GenerationConfig(max_new_tokens=16, temperature=0.0, seed=1)
    calls = [
        ar.generate(
            model,
            prompt,
            cfg,
            strategy="block-diffusion",
            block_size=8,
            threshold=th,
            use_cache=False,
        ).stats.target_forward_passes
        for th in (1.0, 0.5, 0.05)
    ]
    assert calls[0] == 16  # threshold 1: one position a step (probabilities are < 1)
    assert calls[0] >= calls[1] >= calls[2] >= 2
    assert calls[2] < calls[0]


def test_bad_input() -> None:
    model = tiny_model(11)
    prompt = torch.randint(0, 11, (1, 4))
    cfg = ar.GenerationConfig(max_new_tokens=12)
    bd = "block-diffusion"
    with pytest.raises(ConfigError, match="block_size=5 does not divide the length 12"):
        ar.generate(model, prompt, cfg, strategy=bd, block_size=5)
    with pytest.raises(ConfigError, match="steps must be an int >= 1"):
        ar.generate(model, prompt, cfg, strategy=bd, steps=0)
    with pytest.raises(ConfigError, match="block_size must be an int >= 1"):
        ar.generate(model, prompt, cfg, strategy=bd, block_size=0)
    with pytest.raises(ConfigError, match="threshold must be in"):
        ar.generate(model, prompt, cfg, strategy=bd, threshold=1.5)
    with pytest.raises(ConfigError, match="not both"):
        ar.generate(model, prompt, cfg, strategy=bd, threshold=0.5, steps=2)
    with pytest.raises(InputError, match="mask_id=2 is a real token"):
        ar.generate(model, torch.tensor([[2, 1]]), cfg, strategy=bd, mask_id=2)
    with pytest.raises(InputError, match="exceed the model's max_seq_len=64"):
        ar.generate(model, torch.zeros(1, 60, dtype=torch.long), cfg, strategy=bd)
    with pytest.raises(ConfigError, match="does not divide the length 10"):
        bd3_loss(model, torch.zeros(2, 10, dtype=torch.long), block_size=4)


@torch.no_grad()
def test_block_size_equal_to_the_length_is_mdlm() -> None:
    """One block: the noisy half sees only itself, bidirectionally: MDLM's terms."""
    from ar_diffusion.mdlm import mdlm_nelbo_terms

    model = tiny_model(11, seed=3)
    g = torch.Generator().manual_seed(6)
    x0 = torch.randint(0, 11, (3, 12), generator=g)
    x_t = torch.where(torch.rand(x0.shape, generator=g) < 0.5, MASK, x0)
    torch.testing.assert_close(
        bd3_nelbo_terms(model, x_t, x0, 12, MASK),
        mdlm_nelbo_terms(model, x_t, x0, MASK),
        atol=1e-5,
        rtol=1e-5,
    )
