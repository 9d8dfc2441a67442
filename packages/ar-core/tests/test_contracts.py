"""The contracts every package builds on: the KVCache, CausalLM, Strategy, StepRunner and
StepSampler protocols, the cache's move/set methods, table-defined masks, the one step
loop (with a condition and guidance), the strategy scaffolding and the Trainer's step."""

from __future__ import annotations

import pytest
import torch

import ar_core as ar
from ar_core import masks, registry
from ar_core.cache import StaticKVCache
from ar_core.errors import ConfigError, InputError
from ar_core.generation import (
    GenerationConfig,
    Rows,
    TokenPicker,
    cache_budget,
    generate,
    make_generator,
    prefill,
)
from ar_core.model import Transformer, TransformerConfig
from ar_core.ordering import Block, Plan, RandomOrder, Raster
from ar_core.protocols import CausalLM, KVCache, StepRunner, StepSampler, check_protocol
from ar_core.steps import (
    AllowedValues,
    CachedStepRunner,
    Categorical,
    ClassifierFreeGuidance,
    TwoStreamStepModel,
    UncachedStepRunner,
    generate_steps,
    guide,
    step_sampler,
)
from ar_core.trainer import TrainConfig, Trainer

# -- protocols -----------------------------------------------------------------------------


def small_lm(seed: int = 0, max_seq_len: int = 32) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=17, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len
    )
    return Transformer(cfg).eval()


def test_builtins_follow_the_protocols() -> None:
    model = small_lm()
    assert isinstance(model, CausalLM)
    assert isinstance(model.new_cache(2), KVCache)
    assert isinstance(Categorical(), StepSampler)
    assert not isinstance(object(), KVCache)
    with pytest.raises(ConfigError, match=r"KVCache: missing .*commit"):
        check_protocol(object(), KVCache, "cache", attrs=["commit", "lengths"])


# -- the cache -----------------------------------------------------------------------------


def filled_cache(B: int = 2, S: int = 8) -> StaticKVCache:
    cache = StaticKVCache(3, B, 2, 4, S)
    gen = torch.Generator().manual_seed(0)
    for layer in range(3):
        cache.write(
            layer, torch.randn(B, 2, S, 4, generator=gen), torch.randn(B, 2, S, 4, generator=gen)
        )
    cache.commit(S)
    return cache


def test_move_entries_equals_a_loop_reference_even_when_slots_overlap() -> None:
    cache = filled_cache()
    before_k = [k.clone() for k in cache.k]
    before_v = [v.clone() for v in cache.v]
    src = torch.tensor([[3, 4, 5], [6, 2, 0]])
    dst = torch.tensor([[2, 3, 4], [1, 6, 7]])  # row 0 overlaps (shift left by one)
    cache.move_entries(src, dst)
    for layer in range(3):
        want_k, want_v = before_k[layer].clone(), before_v[layer].clone()
        for b in range(2):
            for s, d in zip(src[b].tolist(), dst[b].tolist()):
                want_k[b, :, d] = before_k[layer][b, :, s]
                want_v[b, :, d] = before_v[layer][b, :, s]
        assert torch.equal(cache.k[layer], want_k)
        assert torch.equal(cache.v[layer], want_v)
    assert cache.lengths.tolist() == [8, 8]  # lengths untouched


def test_move_entries_and_set_lengths_refuse_bad_input() -> None:
    cache = filled_cache()
    with pytest.raises(InputError, match=r"\[0, 8\)"):
        cache.move_entries(torch.tensor([[0], [8]]), torch.tensor([[1], [1]]))
    with pytest.raises(InputError, match="both be"):
        cache.move_entries(torch.tensor([[0, 1]]), torch.tensor([[1, 2]]))
    with pytest.raises(InputError, match=r"\[0, 8\]"):
        cache.set_lengths(torch.tensor([3, 9]))
    cache.set_lengths(torch.tensor([3, 5]))
    assert cache.lengths.tolist() == [3, 5] and cache.max_length() == 5


def test_cache_for_config_needs_no_model() -> None:
    cfg = TransformerConfig(vocab_size=9, dim=32, n_layers=3, n_heads=4, n_kv_heads=2)
    cache = StaticKVCache.for_config(cfg, 2, 10)
    assert (cache.n_layers, cache.n_kv_heads, cache.head_dim, cache.max_len) == (3, 2, 8, 10)
    with pytest.raises(InputError, match="n_layers"):
        StaticKVCache.for_config(object(), 1, 4)


# -- masks ---------------------------------------------------------------------------------


def test_table_mask_equals_its_definition() -> None:
    gen = torch.Generator().manual_seed(1)
    vis = torch.rand(2, 3, 3, generator=gen) < 0.5
    start = torch.tensor([1, 4])
    dense = masks.table(vis, start=start).to_dense(8, 8, batch_size=2)
    for b in range(2):
        s = int(start[b])
        for q in range(8):
            for kv in range(8):
                inside = s <= q < s + 3 and s <= kv < s + 3
                want = (inside and bool(vis[b, q - s, kv - s])) or (kv < s and kv <= q)
                assert bool(dense[b, q, kv]) == want, (b, q, kv)


def test_table_cache_key_is_the_content_not_the_object() -> None:
    a = torch.tensor([[True, False], [True, True]])
    same = masks.table(a.clone(), start=torch.tensor([2])).cache_key
    assert masks.table(a, start=torch.tensor([2])).cache_key == same
    assert masks.table(~a, start=torch.tensor([2])).cache_key != same
    assert masks.table(a, start=torch.tensor([3])).cache_key != same
    with pytest.raises(ConfigError, match="bool"):
        masks.table(a.long())
    with pytest.raises(ConfigError, match=r"\(n, n\)"):
        masks.table(torch.ones(2, 3, dtype=torch.bool))


def test_document_inputs_and_context_and_self() -> None:
    ids = torch.tensor([[0, 0, 0, 1, 1]])
    is_input = torch.tensor([[True, True, False, True, False]])
    dense = masks.document_inputs(ids, is_input).to_dense(5, 5)[0]
    for q in range(5):
        for kv in range(5):
            want = ids[0, q] == ids[0, kv] and is_input[0, q] and is_input[0, kv]
            assert bool(dense[q, kv]) == bool(want)
    cas = masks.context_and_self(3).to_dense(2, 6, q_offset=4)[0]
    assert cas.tolist() == [
        [True, True, True, False, True, False],
        [True, True, True, False, False, True],
    ]


def test_two_stream_decode_mask_matches_its_rule() -> None:
    written_from, seq_start, n_content = torch.tensor([0, 3]), torch.tensor([0, 2]), 2
    spec = masks.two_stream_decode(written_from, seq_start, n_content)
    dense = spec.to_dense(4, 9, q_offset=written_from, batch_size=2)
    for b in range(2):
        for i in range(4):
            q = int(written_from[b]) + i
            for kv in range(9):
                if i >= n_content:
                    want = kv <= int(seq_start[b]) + (i - n_content) + 1 or kv == q
                else:
                    want = kv <= max(q, 1)
                assert bool(dense[b, i, kv]) == want


# -- the step loop -------------------------------------------------------------------------

V, N, C = 11, 9, 3  # data ids, positions, classes (+ a null class)


def conditioned_model(seed: int = 0) -> TwoStreamStepModel:
    """A step model over V data ids and C + 1 class ids (the condition)."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=V + C + 1 + 2,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=2 * (N + 2),
    )
    return TwoStreamStepModel(Transformer(cfg), V + C + 1).eval()


PLANS = {
    "raster": Raster().plan((N,)),
    "random": RandomOrder().plan((N,), generator=torch.Generator().manual_seed(3)),
    "block3": Block(3).plan((N,)),
    "ragged": Plan([[0, 1], [5], [2, 3, 4], [8, 6], [7]], (N,)),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_cached_runner_equals_uncached_with_condition_and_guidance(name: str) -> None:
    model, plan, B = conditioned_model(), PLANS[name], 3
    labels = torch.tensor([0, 2, 1])
    condition = torch.cat([labels, torch.full_like(labels, C)])[:, None] + V  # (2B, 1)
    cfg = ClassifierFreeGuidance(2.5, plan.num_steps, "linear")
    runs = [
        generate_steps(
            model,
            plan,
            batch_size=B,
            condition=condition,
            transforms=[cfg],
            generator=torch.Generator().manual_seed(0),
            return_logits=True,
            use_cache=use_cache,
            vocab_size=V,
        )
        for use_cache in (True, False)
    ]
    cached, uncached = runs
    assert cached.calls == uncached.calls == plan.num_steps
    assert torch.equal(cached.tokens, uncached.tokens)
    assert ((cached.tokens >= 0) & (cached.tokens < V)).all()
    for a, b in zip(cached.step_logits, uncached.step_logits):
        assert a.shape[0] == B and a.shape[-1] == V
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_guided_logits_are_the_cfg_combination_of_two_conditioned_runs() -> None:
    """Guidance merges rows: its logits equal uncond + s (cond - uncond) of the two
    separately conditioned runs fed the same tokens."""
    model, plan, B = conditioned_model(), PLANS["block3"], 2
    labels = torch.tensor([1, 0])
    cond = (labels + V)[:, None]
    null = torch.full_like(cond, V + C)
    guided = generate_steps(
        model,
        plan,
        batch_size=B,
        condition=torch.cat([cond, null]),
        transforms=[ClassifierFreeGuidance(3.0, plan.num_steps)],
        generator=torch.Generator().manual_seed(5),
        return_logits=True,
        vocab_size=V,
    )
    order, prompt = plan.order(), guided.tokens
    runs = []
    for c in (cond, null):
        runner = UncachedStepRunner(model, plan, B, condition=c, vocab_size=V)
        outs = []
        for step in plan.steps:
            outs.append(runner.predict(step).logits)
            runner.commit(step, prompt[:, step])
        runs.append(outs)
    for k in range(plan.num_steps):
        want = guide(torch.cat([runs[0][k], runs[1][k]]), 3.0)
        torch.testing.assert_close(guided.step_logits[k], want, atol=1e-5, rtol=1e-5)
    assert order.numel() == N


def test_allowed_values_constrain_every_step() -> None:
    model, plan = conditioned_model(), PLANS["random"]
    even = torch.zeros(V, dtype=torch.bool)
    even[::2] = True
    out = generate_steps(
        model,
        plan,
        batch_size=4,
        transforms=[AllowedValues(lambda step, values: even.expand(4, step.numel(), V))],
        generator=torch.Generator().manual_seed(1),
        vocab_size=V,
    )
    assert (out.tokens % 2 == 0).all()


def test_runner_protocol_and_registered_sampler() -> None:
    model, plan = conditioned_model(), PLANS["raster"]
    assert isinstance(CachedStepRunner(model, plan, 2), StepRunner)
    assert isinstance(UncachedStepRunner(model, plan, 2), StepRunner)
    sampler = step_sampler("categorical", temperature=0.0)
    assert sampler.name == "categorical" and "categorical" in registry.step_samplers.names()
    greedy = generate_steps(model, plan, batch_size=2, sampler=sampler, vocab_size=V)
    again = generate_steps(model, plan, batch_size=2, temperature=0.0, vocab_size=V)
    assert torch.equal(greedy.tokens, again.tokens)


def test_step_loop_errors_name_the_fix() -> None:
    model, plan = conditioned_model(), PLANS["raster"]
    with pytest.raises(InputError, match="multiple of batch_size"):
        generate_steps(model, plan, batch_size=2, condition=torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ConfigError, match="ClassifierFreeGuidance"):
        generate_steps(model, plan, batch_size=2, condition=torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ConfigError, match="schedule"):
        ClassifierFreeGuidance(2.0, 3, "cosine")


# -- strategy scaffolding ------------------------------------------------------------------


@torch.no_grad()
def test_prefill_takes_positions_and_a_mask() -> None:
    """A prefill at shifted positions under an explicit causal mask equals the model's
    forward at those positions; ``all_logits`` returns every position."""
    model = small_lm()
    x = torch.randint(0, 17, (2, 6), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(6) + 4
    cache = model.new_cache(2, 16)
    logits = prefill(
        model, x, cache, torch.tensor([6, 4]), positions=pos, mask=masks.causal(), all_logits=True
    )
    want = model(x, positions=pos).logits
    torch.testing.assert_close(logits, want)
    assert cache.lengths.tolist() == [6, 4]


def test_cache_budget_required_and_capped() -> None:
    model = small_lm(max_seq_len=12)
    x = torch.zeros(2, 5, dtype=torch.long)
    lengths = torch.tensor([5, 3])
    assert cache_budget(model, x, lengths, 4) == 8
    assert cache_budget(model, x, lengths, 4, extra=3) == 11
    assert cache_budget(model, x, lengths, 4, extra=10, extra_required=False) == 12
    with pytest.raises(InputError, match="draft fewer"):
        cache_budget(model, x, lengths, 4, extra=10, fix="draft fewer tokens")
    with pytest.raises(InputError, match="max_seq_len is 12"):
        cache_budget(model, x, lengths, 9, extra_required=False)


def test_rows_and_picker_reproduce_the_greedy_strategy() -> None:
    """A hand-written loop on Rows + TokenPicker + prefill gives exactly what the ``greedy``
    strategy gives, EOS and ragged rows included."""
    model = small_lm()
    x = torch.randint(0, 17, (3, 5), generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([5, 2, 4])
    config = GenerationConfig(max_new_tokens=7, eos_token_id=[3, 5], pad_token_id=1)
    want = generate(model, x, config, prompt_lengths=lengths)
    rows = Rows(x, lengths, config, scratch=0)
    picker = TokenPicker(config, do_sample=False)
    cache = model.new_cache(3, cache_budget(model, x, lengths, 7))
    with torch.no_grad():
        logits = prefill(model, x, cache, lengths)
        while True:
            token = picker.pick(logits, rows.seq)
            rows.emit(token[:, None], torch.ones_like(token))
            if rows.all_finished():
                break
            logits = model(token[:, None], cache=cache).logits[:, -1]
    got = rows.finish()
    assert torch.equal(got.sequences, want.sequences)
    assert got.stats.tokens_generated == want.stats.tokens_generated


def test_token_picker_samples_with_the_seeded_generator() -> None:
    config = GenerationConfig(temperature=0.7, top_k=5, seed=11)
    logits = torch.randn(4, 17, generator=torch.Generator().manual_seed(0))
    seq = torch.full((4, 1), -1)
    a = TokenPicker(config).pick(logits, seq)
    b = TokenPicker(config).pick(logits, seq)
    assert torch.equal(a, b)
    top5 = logits.topk(5, dim=-1).indices
    assert (top5 == a[:, None]).any(-1).all()
    gen = make_generator(config, torch.device("cpu"))
    assert gen.initial_seed() == 11


# -- trainer -------------------------------------------------------------------------------


def test_trainer_passes_the_step_to_a_loss_that_asks_for_it() -> None:
    seen: list[int] = []
    model = torch.nn.Linear(2, 1)

    def loss_fn(m: torch.nn.Module, batch: torch.Tensor, *, step: int) -> torch.Tensor:
        seen.append(step)
        return m(batch).pow(2).mean()

    def data(gen: torch.Generator, n: int) -> torch.Tensor:
        return torch.randn(n, 2, generator=gen)

    Trainer(
        model, loss_fn, data, TrainConfig(steps=3, batch_size=4, warmup_steps=0, progress=False)
    ).train()
    assert seen == [0, 1, 2]


def test_public_names() -> None:
    assert ar.KVCache is KVCache and ar.CausalLM is CausalLM
    assert ar.steps.generate_steps is generate_steps
