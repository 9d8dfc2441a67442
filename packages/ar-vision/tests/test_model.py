"""The class-conditional step model: cached sampling equals the uncached reference, one
network call per step, and block causality for every ordering."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ar_core
from ar_core.ordering import Plan, Raster
from ar_core.steps import plan_slots
from ar_vision.model import ClassConditionalStepModel, build_step_model, drop_labels
from ar_vision.orderings import CoarseToFine, NextFrequency, NextScale
from ar_vision.sampling import generate_images

V, C = 13, 10

PLANS: dict[str, Plan] = {
    "raster-pixels": Raster().plan((8, 8)),
    "raster-tokens": Raster().plan((4, 4)),
    "next-scale": NextScale().plan((85,)),
    "next-frequency": NextFrequency(scales=[1, 2, 4]).plan((21,)),
    "coarse-to-fine": CoarseToFine().plan((32,)),
}


def _model(n: int, seed: int = 0) -> ClassConditionalStepModel:
    return build_step_model(vocab_size=V, num_classes=C, num_positions=n, seed=seed).eval()


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_cached_sampling_equals_uncached(name: str, cfg_scale: float) -> None:
    plan = PLANS[name]
    model = _model(plan.num_positions)
    labels = torch.tensor([0, 3, 9])
    runs = [
        generate_images(
            model,
            plan,
            labels,
            cfg_scale=cfg_scale,
            cfg_schedule="linear",
            generator=torch.Generator().manual_seed(7),
            use_cache=use_cache,
            return_logits=True,
        )
        for use_cache in (True, False)
    ]
    cached, uncached = runs
    assert torch.equal(cached.tokens, uncached.tokens)
    for a, b in zip(cached.step_logits, uncached.step_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert cached.calls == plan.num_steps  # the class costs no extra call
    assert int(cached.tokens.min()) >= 0 and int(cached.tokens.max()) < V


@pytest.mark.parametrize("name", list(PLANS))
def test_block_causal_perturbation(name: str) -> None:
    """Changing the tokens of steps >= k never changes the outputs of steps <= k."""
    plan = PLANS[name]
    model = _model(plan.num_positions, seed=1)
    order, slot_steps = plan_slots(plan)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (2, plan.num_positions), generator=gen)
    labels = torch.tensor([4, C])  # a class and the null class
    with torch.no_grad():
        base = model(tokens, labels, order, slot_steps)  # (B, N, V) in slot order
        step_ids = plan.step_ids()
        for k in sorted({0, 1, plan.num_steps // 2, plan.num_steps - 1}):
            changed = tokens.clone()
            later = step_ids >= k  # positions of steps >= k
            changed[:, later] = (tokens[:, later] + 1 + torch.randint(0, V - 1, (1,))) % V
            out = model(changed, labels, order, slot_steps)
            early = slot_steps <= k
            torch.testing.assert_close(out[:, early], base[:, early], rtol=0, atol=1e-6)
            if k + 1 < plan.num_steps:  # the check can fail: later steps do change
                assert not torch.allclose(out[:, slot_steps > k], base[:, slot_steps > k])


def test_class_token_changes_the_prediction() -> None:
    plan = PLANS["raster-tokens"]
    model = _model(16)
    order, slot_steps = plan_slots(plan)
    tokens = torch.zeros(2, 16, dtype=torch.long)
    with torch.no_grad():
        out = model(tokens, torch.tensor([1, 2]), order, slot_steps)
    assert not torch.allclose(out[0, 0], out[1, 0])  # even the first step sees the class


def test_label_dropout_rate_and_generator() -> None:
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(labels, C, 0.1, torch.Generator().manual_seed(0))
    rate = (dropped == C).float().mean().item()
    # binomial(20000, 0.1): sd 0.0021; 5 sd is a false alarm once in ~3.5 million
    assert abs(rate - 0.1) < 5 * 0.0021
    again = drop_labels(labels, C, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)


def test_bad_inputs_name_the_fix() -> None:
    model = _model(16)
    plan = PLANS["raster-tokens"]
    with pytest.raises(ar_core.InputError, match="null class"):
        generate_images(model, plan, torch.tensor([C + 1]))
    with pytest.raises(ar_core.InputError, match="num_positions=64"):
        generate_images(model, PLANS["raster-pixels"], torch.tensor([0]))
    with pytest.raises(ar_core.ConfigError, match="unknown model size"):
        build_step_model(vocab_size=V, num_classes=C, num_positions=4, size="huge")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    plan = PLANS["next-frequency"]
    model = _model(21, seed=3)
    model.save_pretrained(tmp_path / "m")
    loaded = ClassConditionalStepModel.from_pretrained(tmp_path / "m").eval()
    assert (loaded.vocab_size, loaded.num_classes) == (V, C)
    a, b = (
        generate_images(m, plan, torch.tensor([5]), generator=torch.Generator().manual_seed(2))
        for m in (model, loaded)
    )
    assert torch.equal(a.tokens, b.tokens)


def test_corrupted_vision_file_is_refused(tmp_path: Path) -> None:
    _model(21, seed=3).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "vision.json").write_text("{not json")
    with pytest.raises(ar_core.CheckpointError, match="vision.json is corrupted"):
        ClassConditionalStepModel.from_pretrained(tmp_path / "m")
