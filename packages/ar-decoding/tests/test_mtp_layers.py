"""MTP with the adapters on the top blocks only (``lora_layers``) and training on stored
features of the frozen base (``mtp_features``, ``train_mtp_on_features``): the stored-
feature losses equal the full forward's; after training the base's logits are bit-
identical; linear and quadratic decoding (also on a prepacked model) equal the base's
greedy output and accept several tokens per forward; bad values are clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny
from ramp_models import VOCAB, ramp_base, ramps

from ar_core import masks
from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer
from ar_decoding.lora import LoRALinear, add_lora
from ar_decoding.mtp import (
    MTPModel,
    mtp_features,
    mtp_losses,
    mtp_losses_on_features,
    train_mtp_on_features,
)

DATA = ramps()


@pytest.fixture(scope="module")
def trained() -> tuple[Transformer, MTPModel, list[dict[str, float]]]:
    reference = ramp_base(layers=2)
    torch.manual_seed(0)
    model = MTPModel(copy.deepcopy(reference), 3, rank=4, lora_layers=1)
    feats = mtp_features(model, DATA(torch.Generator().manual_seed(1), 32), batch_size=16)
    history = train_mtp_on_features(
        model, feats, steps=100, batch_size=16, anchors=4, anchor_from=2, lr=1e-2
    )
    return reference, model, history


@pytest.mark.parametrize("lora_layers", [None, 2, 1])
def test_stored_feature_losses_equal_the_full_forward(lora_layers: int | None) -> None:
    """The masks alone over stored keys/values give the full forward's three losses and
    gradients (random adapters, masks and sampler: every part matters)."""
    torch.manual_seed(0)
    model = MTPModel(tiny(VOCAB, dim=32, layers=2), 3, rank=4, lora_layers=lora_layers)
    assert model.split == (0 if lora_layers is None else 2 - lora_layers)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0, 0.1)
    x = DATA(torch.Generator().manual_seed(2), 4)
    anchors = torch.tensor([1, 6, 13])
    grads = []
    for losses in (
        mtp_losses(model, x, anchors),
        mtp_losses_on_features(model, mtp_features(model, x, batch_size=3), anchors),
    ):
        model.zero_grad()
        losses["total"].backward()
        grads.append([p.grad.clone() for p in model.trainable_parameters()])  # type: ignore[union-attr]
        grads[-1].append(torch.stack([losses[k].detach() for k in sorted(losses)]))
    for full, stored in zip(*grads, strict=True):
        torch.testing.assert_close(stored, full, rtol=1e-4, atol=1e-6)


def test_top_block_adapters_keep_the_base_and_decode_losslessly(trained) -> None:  # type: ignore[no-untyped-def]
    reference, model, history = trained
    adapted = [any(isinstance(m, LoRALinear) for m in b.modules()) for b in model.base.layers]
    assert adapted == [False, True]  # the top block only
    first = sum(h["mask_ce"] for h in history[:10]) / 10
    last = sum(h["mask_ce"] for h in history[-10:]) / 10
    assert last < 0.5 * first
    x = DATA(torch.Generator().manual_seed(9), 4)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference(x).logits)
    from ar_core.quant import prepack

    packed = prepack(copy.deepcopy(model))
    x = DATA(torch.Generator().manual_seed(3), 3)[:, :6]
    lengths = [6, 3, 5]
    cfg = GenerationConfig(max_new_tokens=20, temperature=0)
    ref = generate(reference, x, cfg, prompt_lengths=lengths)
    for m in (model, packed):
        acc = {}
        for quadratic in (False, True):
            out = generate(m, x, cfg, strategy="mtp", prompt_lengths=lengths, quadratic=quadratic)
            assert torch.equal(out.sequences, ref.sequences)
            acc[quadratic] = out.stats.mean_accepted_length
        assert acc[False] > 1.5
        assert acc[True] >= acc[False]


def test_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"lora_layers must be an int in \[1, 2\]"):
        MTPModel(tiny(), 2, lora_layers=3)
    with pytest.raises(ConfigError, match=r"lora_layers must be an int in \[1, 2\]"):
        MTPModel(tiny(), 2, lora_layers=0)
    with pytest.raises(ConfigError, match="blocks must be indices in"):
        add_lora(tiny(), 2, blocks=[5])
    model = MTPModel(tiny(), 2, lora_layers=1)
    with pytest.raises(ConfigError, match="takes the real tokens first"):
        ids, index = torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), -1)
        model.mixed(ids, index, torch.arange(3), masks.causal())
    with pytest.raises(ConfigError, match=r"T >= k \+ 3 = 5"):
        mtp_features(model, torch.zeros(2, 4, dtype=torch.long))
    feats = mtp_features(model, torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"anchor_from must be an int in \[0, 6\]"):
        train_mtp_on_features(model, feats, steps=1, anchor_from=7)
