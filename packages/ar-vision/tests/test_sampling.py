"""Classifier-free guidance: the guided logits of every step equal
``uncond + s_k * (cond - uncond)`` computed by separate forwards; schedules; filters."""

from __future__ import annotations

import pytest
import torch

import ar_core
from ar_core.ordering import Raster
from ar_core.sampling import TopK
from ar_core.steps import guidance_scale, plan_slots
from ar_vision.model import build_step_model
from ar_vision.orderings import NextScale
from ar_vision.sampling import generate_images

V, C = 11, 10


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_guided_logits_match_separate_cond_and_uncond_forwards(schedule: str) -> None:
    plan = NextScale(scales=[1, 2, 3]).plan((14,))
    model = build_step_model(vocab_size=V, num_classes=C, num_positions=14, seed=4).eval()
    labels = torch.tensor([2, 7])
    out = generate_images(
        model,
        plan,
        labels,
        cfg_scale=2.5,
        cfg_schedule=schedule,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(0),
        return_logits=True,
    )
    order, slot_steps = plan_slots(plan)
    with torch.no_grad():  # the reference: two plain forwards over the final tokens
        cond = model(out.tokens, labels, order, slot_steps)
        uncond = model(out.tokens, torch.full_like(labels, C), order, slot_steps)
    for k, logits in enumerate(out.step_logits):
        s = 2.5 if schedule == "constant" else 1.0 + 1.5 * k / (plan.num_steps - 1)
        slots = slot_steps == k
        expected = uncond[:, slots] + s * (cond[:, slots] - uncond[:, slots])
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_scale_zero_samples_the_unconditional_model() -> None:
    plan = Raster().plan((3, 3))
    model = build_step_model(vocab_size=V, num_classes=C, num_positions=9, seed=5).eval()
    guided = generate_images(
        model,
        plan,
        torch.tensor([1, 2, 3]),
        cfg_scale=0.0,
        generator=torch.Generator().manual_seed(3),
    )
    uncond = generate_images(
        model, plan, torch.full((3,), C), cfg_scale=1.0, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(guided.tokens, uncond.tokens)


def test_schedule_values_and_errors() -> None:
    assert guidance_scale(4.0, "constant", 3, 10) == 4.0
    assert guidance_scale(4.0, "linear", 0, 4) == 1.0
    assert guidance_scale(4.0, "linear", 3, 4) == 4.0
    assert guidance_scale(4.0, "linear", 0, 1) == 4.0  # a single step gets the full scale
    with pytest.raises(ar_core.ConfigError, match="unknown CFG schedule"):
        guidance_scale(2.0, "cosine", 0, 4)  # type: ignore[arg-type]
    model = build_step_model(vocab_size=V, num_classes=C, num_positions=4)
    with pytest.raises(ar_core.ConfigError, match="cfg_scale"):
        generate_images(model, Raster().plan((4,)), torch.tensor([0]), cfg_scale=-1.0)
    with pytest.raises(ar_core.ConfigError, match="unknown CFG schedule"):
        generate_images(
            model,
            Raster().plan((4,)),
            torch.tensor([0]),
            cfg_scale=2.0,
            cfg_schedule="cosine",  # type: ignore[arg-type]
        )


def test_top_k_one_is_greedy_on_the_guided_logits() -> None:
    plan = Raster().plan((2, 3))
    model = build_step_model(vocab_size=V, num_classes=C, num_positions=6, seed=6).eval()
    labels = torch.tensor([0, 5])
    top1 = generate_images(
        model,
        plan,
        labels,
        cfg_scale=2.0,
        processors=[TopK(1)],
        generator=torch.Generator().manual_seed(1),
        return_logits=True,
    )
    greedy = generate_images(model, plan, labels, cfg_scale=2.0, temperature=0.0)
    assert torch.equal(top1.tokens, greedy.tokens)
    picked = torch.cat([lg.argmax(-1) for lg in top1.step_logits], dim=1)  # (B, N) in slot order
    assert torch.equal(picked, top1.tokens)  # raster: slot order is position order
