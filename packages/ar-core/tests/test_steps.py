"""Tests of ar_core.steps: the cached step loop equals the two-stream training forward,
outputs are block-causal in the plan's steps, and a random-order model generates in any
order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ar_core import ConfigError, InputError, registry
from ar_core.model import Transformer, TransformerConfig
from ar_core.ordering import Block, Plan, RandomOrder, Raster
from ar_core.recipes.anyorder import (
    AnyOrderConfig,
    ArithData,
    arith_sequences,
    build_model,
    prompted_plan,
    two_stream_loss,
)
from ar_core.steps import TwoStreamStepModel, generate_steps, plan_slots
from ar_core.trainer import TrainConfig, Trainer

V, N = 12, 10


def tiny_model(seed: int = 0) -> TwoStreamStepModel:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=V + 2, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=2 * N + 2
    )
    return TwoStreamStepModel(Transformer(cfg), V).eval()


PLANS = {
    "raster": Raster().plan((N,)),
    "random": RandomOrder().plan((N,), generator=torch.Generator().manual_seed(3)),
    "block3": Block(3).plan((N,)),
    "ragged": Plan([[0, 1], [5], [2, 3, 4], [9, 6], [7, 8]], (N,)),
}


@pytest.mark.parametrize("given_steps", [0, 1, 2])
@pytest.mark.parametrize("name", list(PLANS))
def test_cached_step_loop_equals_training_forward(name: str, given_steps: int) -> None:
    model, plan, B = tiny_model(), PLANS[name], 3
    prompt = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(1))
    out = generate_steps(
        model,
        plan,
        batch_size=B,
        prompt=prompt if given_steps else None,
        given_steps=given_steps,
        generator=torch.Generator().manual_seed(0),
        return_logits=True,
    )
    assert out.calls == plan.num_steps - given_steps + (1 if given_steps else 0)
    order, slot_steps = plan_slots(plan)
    with torch.no_grad():
        full = model(out.tokens, order.expand(B, N), slot_steps)  # (B, N, V), slot order
    first = sum(plan.step_sizes[:given_steps])
    sampled = full[:, first:].split(plan.step_sizes[given_steps:], dim=1)
    assert len(sampled) == len(out.step_logits)
    for k, (ref, got) in enumerate(zip(sampled, out.step_logits)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=f"step {k}")
    if given_steps:
        given = torch.cat(plan.steps[:given_steps])
        assert torch.equal(out.tokens[:, given], prompt[:, given])


@pytest.mark.parametrize("name", ["random", "ragged"])
def test_outputs_are_block_causal_in_steps(name: str) -> None:
    """Changing the tokens of steps >= k never changes the outputs of steps <= k."""
    model, plan, B = tiny_model(), PLANS[name], 2
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, V, (B, N), generator=gen)
    order, slot_steps = plan_slots(plan)
    with torch.no_grad():
        base = model(tokens, order.expand(B, N), slot_steps)  # (B, N, V)
    for k in range(1, plan.num_steps):
        later = torch.cat(plan.steps[k:])
        changed = tokens.clone()
        changed[:, later] = (
            tokens[:, later] + 1 + torch.randint(0, V - 1, (B, later.numel()), generator=gen)
        ) % V
        with torch.no_grad():
            out = model(changed, order.expand(B, N), slot_steps)
        upto = slot_steps <= k  # slots of steps <= k
        torch.testing.assert_close(out[:, upto], base[:, upto], rtol=0, atol=1e-6)
        if k + 1 < plan.num_steps:  # the perturbation is visible to later steps (not vacuous)
            assert not torch.allclose(out[:, slot_steps > k], base[:, slot_steps > k])


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A 2-layer, 64-wide model trains several times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SEED = 0
THRESHOLD = 0.95  # exact-match accuracy over 128 prompts, every ordering


def test_random_order_model_generates_in_any_order(one_thread: None, tmp_path: Path) -> None:
    """Trained 400 steps on random orders (seed 0), the model completes sequences
    c, x1, x1 + c, ... (mod 16, c in 1..3, 8 positions) in raster, reverse, three random
    permutations and blocks of 2 and 3, each with exact match >= 0.95 (measured: 1.0)."""
    config = AnyOrderConfig(length=8, max_stride=3, steps=400, eval_sequences=128, seed=SEED)
    model = build_model(config)
    data = ArithData(config.length, config.vocab_size, config.max_stride)
    train = TrainConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=0.0,
        warmup_steps=40,
        seed=SEED,
        progress=False,
    )
    losses = Trainer(model, two_stream_loss, data, train).train()
    assert losses[-1] < losses[0]
    model.eval()
    gen = torch.Generator().manual_seed(123)
    prompts = arith_sequences(gen, 128, config.length, config.vocab_size, config.max_stride)
    plans = [prompted_plan(name, config.length, gen) for name in ("raster", "reverse")]
    plans += [prompted_plan("random", config.length, gen) for _ in range(3)]
    rest = config.length - 2
    for size in (2, 3):
        plans.append(
            Plan([[0, 1], *(s + 2 for s in Block(size).plan((rest,)).steps)], (config.length,))
        )
    for plan in plans:
        out = generate_steps(
            model, plan, batch_size=128, prompt=prompts, given_steps=1, temperature=0.0
        )
        exact = (out.tokens == prompts).all(dim=1).float().mean().item()
        assert exact >= THRESHOLD, f"{plan}: exact match {exact}"
    # the saved model generates the same sequences
    model.save_pretrained(tmp_path / "model")
    loaded = TwoStreamStepModel.from_pretrained(tmp_path / "model").eval()
    again = generate_steps(
        loaded, plans[-1], batch_size=128, prompt=prompts, given_steps=1, temperature=0.0
    )
    assert torch.equal(again.tokens, out.tokens)


def test_random_orderings_come_from_the_registry() -> None:
    assert {"raster", "random", "block"} <= set(registry.orderings.names())
    plan = prompted_plan("random", 8, torch.Generator().manual_seed(0))
    assert plan.steps[0].tolist() == [0, 1] and plan.num_steps == 7


def test_errors_name_the_fix() -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=V, dim=32, n_layers=1, n_heads=4, max_seq_len=8)
    with pytest.raises(ConfigError, match="vocab_size"):
        TwoStreamStepModel(Transformer(cfg), V)
    small = TwoStreamStepModel(Transformer(cfg.model_copy(update={"vocab_size": V + 2})), V)
    with pytest.raises(InputError, match="max_seq_len"):
        generate_steps(small, Raster().plan((N,)))
    with pytest.raises(ConfigError, match="prompt"):
        generate_steps(tiny_model(), Raster().plan((N,)), given_steps=1)


def test_nan_weight_is_an_error_naming_step_and_row_not_silent_tokens() -> None:
    from ar_core.steps import ClassifierFreeGuidance

    plan, B = PLANS["block3"], 3
    model = tiny_model()
    with torch.no_grad():
        model.transformer.layers[0].attn.wqkv.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"non-finite logits .* at decode step 0, row 0:"):
        generate_steps(model, plan, batch_size=B, generator=torch.Generator().manual_seed(0))
    # a NaN in the embedding of a condition id only row 1 sees: row 1, the first step
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=V + 2, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=2 * N + 4
    )
    model = TwoStreamStepModel(Transformer(cfg), V).eval()
    condition = torch.tensor([[1], [2], [1]])  # content ids; later steps may emit 2 too
    healthy = generate_steps(model, plan, batch_size=B, condition=condition)
    assert bool((healthy.tokens >= 0).all())
    with torch.no_grad():
        model.transformer.tok_embeddings.weight[2, 3] = float("nan")
    with pytest.raises(InputError, match=r"at decode step 0, row 1:"):
        generate_steps(model, plan, batch_size=B, condition=condition)
    # guidance: row 1's unconditional copy (network row B + 1) is row 1's
    guided = torch.tensor([[1], [1], [1], [1], [2], [1]])
    cfg = ClassifierFreeGuidance(2.0, plan.num_steps)
    with pytest.raises(InputError, match=r"at decode step 1, row 1:"):
        generate_steps(
            model, plan, batch_size=B, condition=guided, transforms=[cfg], given_steps=1,
            prompt=torch.zeros(B, N, dtype=torch.long),
        )  # fmt: skip
