"""CtrlDiff: with a fixed block size it is block-diffusion; guidance gamma = 0 reproduces
unguided samples; gamma > 0 raises a synthetic attribute's rate monotonically; the closed
form candidate scores equal substitution; the block-size policy learns, by policy
gradient, to buy fewer calls when quality does not depend on the block size."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

import ar_core as ar
from ar_core.errors import ConfigError
from ar_diffusion.ctrldiff import (
    BagOfTokensClassifier,
    BlockSizePolicy,
    SequenceClassifier,
    sample_with_policy,
    train_block_policy,
)

MASK = 11
ATTRIBUTE = torch.tensor([0, 1, 2])  # synthetic attribute: tokens 0, 1, 2


def attribute_classifier() -> BagOfTokensClassifier:
    w = torch.zeros(12)
    w[ATTRIBUTE] = 1.0
    return BagOfTokensClassifier(12, w, bias=-4.0)


def setup() -> tuple[torch.nn.Module, torch.Tensor]:
    model = tiny_model(11, seed=6, sharp=3.0)
    prompt = torch.randint(3, 11, (32, 4), generator=torch.Generator().manual_seed(7))
    return model, prompt


def test_fixed_block_size_is_block_diffusion() -> None:
    model, prompt = setup()
    cfg = ar.GenerationConfig(max_new_tokens=12, seed=3)
    for kwargs in ({"block_size": 4}, {"block_size": 4, "steps": 2}, {"block_size": 12}):
        a = ar.generate(model, prompt[:4], cfg, strategy="ctrldiff", **kwargs)
        b = ar.generate(model, prompt[:4], cfg, strategy="block-diffusion", **kwargs)
        assert torch.equal(a.sequences, b.sequences)
        assert a.stats.target_forward_passes == b.stats.target_forward_passes


def test_guidance_gamma_zero_reproduces_and_positive_gamma_raises_the_attribute() -> None:
    model, prompt = setup()
    cfg = ar.GenerationConfig(max_new_tokens=12, seed=5)
    run = {"strategy": "ctrldiff", "block_size": 4}
    plain = ar.generate(model, prompt, cfg, **run).sequences
    clf = attribute_classifier()
    zero = ar.generate(model, prompt, cfg, classifier=clf, gamma=0.0, **run).sequences
    assert torch.equal(zero, plain)
    rates = [float(torch.isin(plain[:, 4:], ATTRIBUTE).float().mean())]
    for gamma in (1.0, 3.0, 9.0):
        out = ar.generate(model, prompt, cfg, classifier=clf, gamma=gamma, **run).sequences
        rates.append(float(torch.isin(out[:, 4:], ATTRIBUTE).float().mean()))
    # 32 rows x 12 tokens = 384 tokens per rate, seeded
    assert rates == sorted(rates) and len(set(rates)) == 4, rates
    assert rates[-1] > rates[0] + 0.3, rates


@torch.no_grad()
def test_closed_form_candidates_equal_substitution() -> None:
    clf = BagOfTokensClassifier(12, torch.randn(12, generator=torch.Generator().manual_seed(1)))
    x = torch.randint(0, 12, (3, 9), generator=torch.Generator().manual_seed(2))
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[1, :2] = False  # padding columns do not count
    cols = torch.tensor([3, 7, 8])
    exact = SequenceClassifier(clf, 12, chunk=5).candidate_log_probs(x, valid, cols)
    torch.testing.assert_close(clf.candidate_log_probs(x, valid, cols), exact)


def test_policy_gradient_buys_fewer_calls_when_quality_is_flat() -> None:
    """quality = 0 for every continuation: the reward is -lam * calls / N, so the best
    policy always takes the largest block. After training the greedy policy's calls per
    token are below the untrained (uniform-argmax) policy's and its largest-size
    probability has risen."""
    torch.manual_seed(0)
    model = tiny_model(11, seed=2, sharp=3.0)
    prompts = torch.randint(0, 11, (16, 4), generator=torch.Generator().manual_seed(3))
    policy = BlockSizePolicy(model.cfg.dim, [1, 2, 4, 8])
    with torch.no_grad():
        h = model(prompts[:, :], mask=None).hidden[:, -1]
        before = float(policy(h).exp()[:, -1].mean())
    history = train_block_policy(
        model,
        policy,
        prompts,
        8,
        lambda p, new: torch.zeros(p.shape[0]),
        lam=1.0,
        updates=15,
        batch_size=6,
        lr=0.2,
        seed=1,
    )
    with torch.no_grad():
        after = float(policy(h).exp()[:, -1].mean())
    assert after > 0.9 > before == pytest.approx(0.25)
    assert history[-1] > history[0]
    _, eps = sample_with_policy(model, prompts[:4], 8, policy, explore=False, gen=torch.Generator())
    assert all(ep.sizes == [8] for ep in eps)  # one block: 8 denoising calls, no cache write
    cfg = ar.GenerationConfig(max_new_tokens=8, seed=0)
    res = ar.generate(model, prompts[:4], cfg, strategy="ctrldiff", policy=policy)
    assert res.stats.target_forward_passes == 4 * (1 + 8)  # per row: prefill + 8 steps


def test_ctrldiff_bad_input() -> None:
    model, prompt = setup()
    cfg = ar.GenerationConfig(max_new_tokens=12)
    cd = "ctrldiff"
    with pytest.raises(ConfigError, match="vocabulary of 20 ids but the model's has 12"):
        ar.generate(model, prompt, cfg, strategy=cd, classifier=BagOfTokensClassifier(20))
    with pytest.raises(ConfigError, match="gamma must be a number >= 0, got -1"):
        ar.generate(model, prompt, cfg, strategy=cd, classifier=attribute_classifier(), gamma=-1)
    with pytest.raises(ConfigError, match="block_size=5 does not divide the length 12"):
        ar.generate(model, prompt, cfg, strategy=cd, block_size=5)
    with pytest.raises(ConfigError, match="steps must be an int >= 1, got 0"):
        ar.generate(model, prompt, cfg, strategy=cd, steps=0)
    with pytest.raises(ConfigError, match="sizes must be ints >= 1"):
        BlockSizePolicy(32, [0, 4])
