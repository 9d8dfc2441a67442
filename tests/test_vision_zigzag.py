"""A third-party ordering (the docs' example plugin ``zigzag``) trains and samples with
ar-vision's class-conditional step model, like the built-in orderings."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ar_zigzag")
pytest.importorskip("ar_vision")

from ar_core import registry
from ar_core.trainer import TrainConfig, Trainer
from ar_vision.model import build_step_model
from ar_vision.recipes.digits import TokenData, plan_loss
from ar_vision.sampling import generate_images


def test_zigzag_trains_and_samples_with_the_vision_step_model() -> None:
    torch.set_num_threads(1)
    plan = registry.orderings.get("zigzag")().plan((4, 4))
    assert plan.num_steps == 16
    gen = torch.Generator().manual_seed(0)
    # toy "images": a class-dependent constant grid plus noise, over 5 grey levels
    labels = torch.randint(0, 10, (256,), generator=gen)
    tokens = (labels[:, None] % 5 + (torch.rand(256, 16, generator=gen) < 0.1).long()) % 5
    model = build_step_model(vocab_size=5, num_classes=10, num_positions=16, seed=0)
    config = TrainConfig.build(steps=30, batch_size=32, lr=3e-3, warmup_steps=3, progress=False)
    losses = Trainer(model, plan_loss(plan), TokenData(tokens, labels, 0.1), config).train()
    assert losses[-1] < losses[0]
    model.eval()
    cached = generate_images(
        model, plan, torch.arange(4), cfg_scale=2.0, generator=torch.Generator().manual_seed(1)
    )
    uncached = generate_images(
        model,
        plan,
        torch.arange(4),
        cfg_scale=2.0,
        generator=torch.Generator().manual_seed(1),
        use_cache=False,
    )
    assert cached.calls == 16
    assert torch.equal(cached.tokens, uncached.tokens)
    order = plan.order()
    assert order[:3].tolist() == [0, 1, 4]  # the zig-zag order, not raster
