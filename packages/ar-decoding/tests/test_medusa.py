"""Medusa heads: exactly greedy (untrained and trained heads, ragged batches), trained heads
accept more than one token per base forward on a periodic text, the sampled distribution
equals the base's (chi-square at 0.001), training on stored features takes the steps of
training with the base running, heads work on a prepacked base, bad input is a clear
error."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import ALPHA, chi2_pvalue, exact_joint, tiny
from ramp_models import ramp_base, ramps

from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_core.quant import prepack
from ar_decoding.medusa import (
    MedusaHeads,
    base_features,
    train_medusa_heads,
    train_medusa_heads_on_features,
)

GREEDY = GenerationConfig(max_new_tokens=15, temperature=0)


def _trained_pair() -> tuple[torch.nn.Module, MedusaHeads, list[float]]:
    """The ramp base and Medusa heads trained on it."""
    base = ramp_base()
    heads, losses = train_medusa_heads(base, ramps(), num_heads=3, steps=40, batch_size=16, lr=3e-3)
    return base, heads, losses


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, MedusaHeads, list[float]]:
    return _trained_pair()


def test_untrained_heads_equal_greedy_on_ragged_batches() -> None:
    model = tiny()
    heads = MedusaHeads.for_model(model, 3)
    x = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1))
    lengths = [7, 2, 5]
    ref = generate(model, x, GREEDY, prompt_lengths=lengths)
    for expansion in (None, (2, 2, 1), (1,)):
        out = generate(
            model, x, GREEDY, strategy="medusa", prompt_lengths=lengths, heads=heads,
            expansion=expansion,
        )  # fmt: skip
        assert torch.equal(out.sequences, ref.sequences)


def test_trained_heads_accept_several_tokens_and_equal_greedy(pair) -> None:
    base, heads, losses = pair
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10  # the heads learned
    gen = torch.Generator().manual_seed(5)
    x = ramps(6)(gen, 2)  # (2, 6)
    cfg = GenerationConfig(max_new_tokens=24, temperature=0)
    ref = generate(base, x, cfg)
    out = generate(base, x, cfg, strategy="medusa", heads=heads)
    assert torch.equal(out.sequences, ref.sequences)
    # one base forward per step: fewer forwards than tokens
    assert out.stats.mean_accepted_length > 2.0
    assert out.stats.target_forward_passes < ref.stats.target_forward_passes / 2


def test_sampling_matches_the_exact_joint() -> None:
    base = tiny(4, dim=32, seed=11, scale=30.0)
    heads = MedusaHeads.for_model(base, 2)
    with torch.no_grad():  # heads that disagree with the base: the residual matters
        for lin in heads.projections():
            lin.weight.normal_(0, 1.0)
    prompt = [1, 2]
    x = torch.tensor([prompt]).expand(4000, -1).contiguous()
    out = generate(
        base, x, GenerationConfig(max_new_tokens=3, seed=0), strategy="medusa", heads=heads
    )
    assert chi2_pvalue(out.sequences[:, 2:], exact_joint(base, prompt, 3), 4) > ALPHA


def test_bad_input() -> None:
    model, x = tiny(), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="vocabulary of 32 ids"):
        generate(model, x, GREEDY, strategy="medusa", heads=MedusaHeads.for_model(tiny(32), 2))
    with pytest.raises(ConfigError, match="num_heads must be an int >= 1"):
        MedusaHeads(64, 64, 0)
    with pytest.raises(ConfigError, match="heads=MedusaHeads"):
        generate(model, x, GREEDY, strategy="medusa")
    with pytest.raises(ConfigError, match="needs 3 heads"):
        generate(
            model, x, GREEDY, strategy="medusa", heads=MedusaHeads.for_model(model, 2),
            expansion=(1, 1, 1),
        )  # fmt: skip


def test_training_on_stored_features_gives_the_model_running_loss() -> None:
    """The features path (the base run once, :func:`base_features`) takes the same steps
    as the path that runs the base on every batch, on the same rows."""
    model = tiny(std=0.3)
    batch = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    ran, ran_losses = train_medusa_heads(
        model, lambda gen, b: batch, heads=MedusaHeads.for_model(model, 3), steps=4,
        batch_size=4, lr=1e-2,
    )  # fmt: skip
    stored = MedusaHeads.for_model(model, 3)
    feats = base_features(model, batch, batch_size=3)  # two chunks: the same states
    assert torch.allclose(feats, model(batch).hidden, atol=1e-6)
    stored_losses = train_medusa_heads_on_features(
        stored, feats, batch, steps=4, batch_size=4, lr=1e-2
    )
    assert ran_losses[0] > ran_losses[-1]  # it learned, so later steps compare updates too
    assert stored_losses == pytest.approx(ran_losses, rel=1e-5)
    for a, b in zip(ran.parameters(), stored.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_heads_for_a_prepacked_model_and_prepacked_heads_equal_greedy() -> None:
    model = tiny(std=0.3)
    packed = prepack(copy.deepcopy(model))
    plain, from_packed = MedusaHeads.for_model(model, 2), MedusaHeads.for_model(packed, 2)
    for a, b in zip(plain.projections(), from_packed.projections(), strict=True):
        assert torch.equal(a.weight, b.weight)
    tokens = torch.randint(0, 64, (6, 10), generator=torch.Generator().manual_seed(4))
    feats = base_features(packed, tokens)  # the prepacked base's states (no grad needed)
    train_medusa_heads_on_features(from_packed, feats, tokens, steps=5, batch_size=2, window=6)
    x = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(2))
    ref = generate(packed, x, GREEDY)
    out = generate(packed, x, GREEDY, strategy="medusa", heads=prepack(from_packed))
    assert torch.equal(out.sequences, ref.sequences)


def test_bad_features() -> None:
    heads = MedusaHeads(64, 64, 2)
    with pytest.raises(ConfigError, match="hidden must be"):
        train_medusa_heads_on_features(heads, torch.zeros(2, 5, 64), torch.zeros(2, 4).long())
    with pytest.raises(ConfigError, match="width 32"):
        train_medusa_heads_on_features(heads, torch.zeros(2, 5, 32), torch.zeros(2, 5).long())
    with pytest.raises(ConfigError, match="window must be"):
        train_medusa_heads_on_features(
            heads, torch.zeros(2, 5, 64), torch.zeros(2, 5).long(), window=6
        )
    with pytest.raises(ConfigError, match="T >= 3"):
        base_features(tiny(), torch.zeros(2, 2).long())
