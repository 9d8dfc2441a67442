"""MDLM: SUBS exactly, the NELBO as a valid bound computed in closed form on an enumerable
case, and the cached sampler equal to the uncached one token for token."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import tiny_model

import ar_core as ar
from ar_core import masks
from ar_core.errors import ConfigError, InputError
from ar_diffusion.mdlm import mdlm, mdlm_loss, mdlm_nelbo_terms
from ar_diffusion.schedule import LogLinearSchedule
from ar_diffusion.subs import subs_log_probs


def test_subs_copies_unmasked_and_never_predicts_mask() -> None:
    V, mask_id = 7, 6
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, V, generator=g) * 5
    x_t = torch.randint(0, V, (3, 9), generator=g)  # mask_id appears at some positions
    logp = subs_log_probs(logits, x_t, mask_id)
    probs = logp.exp()
    assert bool((probs[..., mask_id] == 0).all())  # zero masking, exactly
    unmasked = x_t != mask_id
    assert bool(unmasked.any() and (~unmasked).any())
    own = logp.gather(-1, x_t[..., None])[..., 0]
    assert bool((own[unmasked] == 0).all())  # carry-over: probability exactly 1
    others = probs.clone().scatter_(-1, x_t[..., None], 0.0)
    assert bool((others[unmasked] == 0).all())
    torch.testing.assert_close(probs[~unmasked].sum(-1), torch.ones(int((~unmasked).sum())))
    # masked positions: the network's softmax renormalised without the mask id
    ref = torch.softmax(logits[..., :mask_id], -1)
    torch.testing.assert_close(probs[~unmasked][:, :mask_id], ref[~unmasked])


def exact_nelbo(model: torch.nn.Module, x0: torch.Tensor, mask_id: int) -> float:
    """NELBO of one sequence with eps = 0 (mask rate t): over every mask pattern with k of
    L positions masked, int_0^1 (1/t) t^k (1-t)^(L-k) dt = (k-1)! (L-k)! / L!."""
    L = x0.shape[0]
    total = 0.0
    for pattern in itertools.product([False, True], repeat=L):
        k = sum(pattern)
        if k == 0:
            continue
        m = torch.tensor(pattern)
        x_t = torch.where(m, torch.full_like(x0, mask_id), x0)[None]
        nll = float(mdlm_nelbo_terms(model, x_t, x0[None], mask_id).sum())
        total += math.factorial(k - 1) * math.factorial(L - k) / math.factorial(L) * nll
    return total


@torch.no_grad()
def test_nelbo_is_a_bound_and_the_estimator_is_unbiased() -> None:
    data_vocab, L = 3, 3
    model = tiny_model(data_vocab, sharp=30.0)
    mask_id = data_vocab
    seqs = [torch.tensor(s) for s in itertools.product(range(data_vocab), repeat=L)]
    nelbos = torch.tensor([exact_nelbo(model, x, mask_id) for x in seqs])
    # sum over all sequences of exp(-NELBO) <= sum of the model's probabilities = 1
    mass = float(torch.exp(-nelbos).sum())
    assert mass <= 1.0 + 1e-6, mass
    assert mass < 0.999  # a sharp model is not at the uniform point where the bound is tight
    # L = 1: the bound is exact, NELBO = -log x_theta([MASK])_{x}
    for x in range(data_vocab):
        x0 = torch.tensor([x])
        direct = float(mdlm_nelbo_terms(model, torch.tensor([[mask_id]]), x0[None], mask_id).sum())
        assert math.isclose(exact_nelbo(model, x0, mask_id), direct, rel_tol=1e-9)
    # Monte Carlo with antithetic times: mean within 4 standard errors of the closed form
    sched = LogLinearSchedule(eps=0.0)
    g = torch.Generator().manual_seed(1)
    x0 = seqs[5]
    draws = torch.cat(
        [
            mdlm_loss(model, x0[None].repeat(64, 1), mask_id=mask_id, schedule=sched, generator=g)
            for _ in range(40)
        ]
    )
    se = float(draws.std()) / math.sqrt(draws.numel())
    assert abs(float(draws.mean()) - float(nelbos[5])) < 4 * se, (draws.mean(), nelbos[5], se)


def test_mdlm_loss_weighs_masked_positions_by_one_over_t() -> None:
    model = tiny_model(5)
    x0 = torch.randint(0, 5, (4, 10), generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.2, 0.5, 0.7, 1.0])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    loss = mdlm_loss(model, x0, mask_id=5, t=t, generator=g1)
    rate = LogLinearSchedule().mask_rate(t)
    u = torch.rand(x0.shape, generator=g2)
    x_t = torch.where(u < rate[:, None], 5, x0)
    logits = model(x_t, mask=masks.prefix(10)).logits
    logp = torch.log_softmax(logits[..., :5].float(), -1)
    nll = -logp.gather(-1, x0[..., None])[..., 0] * (x_t == 5)
    torch.testing.assert_close(loss, nll.sum(-1) / t)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_sampler_equals_uncached(temperature: float) -> None:
    model = tiny_model(11, seed=4)
    prompt = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(5))
    cfg = ar.GenerationConfig(max_new_tokens=12, temperature=temperature, seed=7)
    cached = ar.generate(model, prompt, cfg, strategy="mdlm", steps=40)
    ref = ar.generate(model, prompt, cfg, strategy="mdlm", steps=40, use_cache=False)
    assert torch.equal(cached.sequences, ref.sequences)
    assert ref.stats.target_forward_passes == 40
    # 40 steps for 12 tokens x 3 rows: many steps change nothing and reuse x_theta
    assert cached.stats.target_forward_passes < ref.stats.target_forward_passes
    new = cached.sequences[:, 5:]
    assert bool((new < 11).all())  # no [MASK] left, no mask id drawn
    assert torch.equal(cached.sequences[:, :5], prompt)


def test_mdlm_bad_input() -> None:
    model = tiny_model(11)
    prompt = torch.randint(0, 11, (1, 4))
    cfg = ar.GenerationConfig(max_new_tokens=8)
    with pytest.raises(ConfigError, match="steps must be an int >= 1"):
        ar.generate(model, prompt, cfg, strategy="mdlm", steps=0)
    with pytest.raises(InputError, match="mask_id=3 is a real token"):
        ar.generate(model, torch.tensor([[1, 3, 2]]), cfg, strategy="mdlm", mask_id=3)
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        ar.generate(model, prompt, cfg, strategy="mdlm", mask_id=12)
    with pytest.raises(InputError, match="exceed the model's max_seq_len=64"):
        ar.generate(model, prompt, ar.GenerationConfig(max_new_tokens=61), strategy="mdlm")
    with pytest.raises(InputError, match="real token"):
        mdlm_loss(model, torch.tensor([[1, 11]]))
    assert callable(mdlm)
