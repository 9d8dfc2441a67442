"""CTF's fine stage as one bidirectional step: queries of a step see each other."""

from __future__ import annotations

from pathlib import Path

import torch

from ar_core.steps import plan_slots
from ar_vision.bidirectional import query_logits
from ar_vision.model import ClassConditionalStepModel, build_step_model
from ar_vision.orderings import CoarseToFine
from ar_vision.sampling import generate_images

V, C, N = 12, 3, 6  # 2N = 12 positions: 6 coarse steps, then one step of 6 fine tokens
PLAN = CoarseToFine().plan((2 * N,))


def _model(own: bool) -> ClassConditionalStepModel:
    return build_step_model(
        vocab_size=V, num_classes=C, num_positions=2 * N, seed=1, own_step_queries=own
    ).eval()


@torch.no_grad()
def test_forward_against_the_causal_two_stream_model() -> None:
    """own_step=False is ar-core's query_outputs exactly; with own_step the one-position
    coarse steps are unchanged and the fine step's queries read each other."""
    model = _model(own=False).step_model
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (4, 2 * N), generator=gen)
    order, slot_steps = plan_slots(PLAN)
    order = order.expand(4, -1)
    cond = torch.randint(V, V + C, (4, 1), generator=gen)
    ref = model.query_outputs(tokens, order, slot_steps, cond).logits
    same = query_logits(model, tokens, order, slot_steps, cond, own_step=False).logits
    assert torch.equal(same, ref)
    bi = query_logits(model, tokens, order, slot_steps, cond, own_step=True).logits
    torch.testing.assert_close(bi[:, :N], ref[:, :N], rtol=1e-5, atol=1e-6)
    assert (bi[:, N:] - ref[:, N:]).abs().max() > 1e-4


@torch.no_grad()
def test_cached_equals_uncached_sampling() -> None:
    model = _model(own=True)
    labels = torch.tensor([0, 2, C])  # the null class too
    for cfg in (1.0, 2.0):
        a = generate_images(
            model, PLAN, labels, cfg_scale=cfg, generator=torch.Generator().manual_seed(5)
        )
        b = generate_images(
            model,
            PLAN,
            labels,
            cfg_scale=cfg,
            generator=torch.Generator().manual_seed(5),
            use_cache=False,
        )
        assert torch.equal(a.tokens, b.tokens) and a.calls == b.calls == N + 1
    # and the greedy fine step differs from the causal model's on the same weights
    causal = _model(own=False)
    g_bi = generate_images(model, PLAN, labels, temperature=0.0, return_logits=True)
    g_ca = generate_images(causal, PLAN, labels, temperature=0.0, return_logits=True)
    assert torch.equal(g_bi.tokens[:, :N], g_ca.tokens[:, :N])  # coarse steps: same logits


def test_flag_survives_save_and_load(tmp_path: Path) -> None:
    _model(own=True).save_pretrained(tmp_path / "m")
    assert ClassConditionalStepModel.from_pretrained(tmp_path / "m").own_step_queries
    _model(own=False).save_pretrained(tmp_path / "c")
    assert not ClassConditionalStepModel.from_pretrained(tmp_path / "c").own_step_queries
