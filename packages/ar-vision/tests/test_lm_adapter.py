"""The causal-LM adapter: its logits are the step model's, greedy through ar_core.generate
equals the step loop's greedy, and SJD / LANTERN at temperature 0 reproduce greedy."""

from __future__ import annotations

import pytest
import torch

import ar_core
from ar_core.generation import GenerationConfig
from ar_core.ordering import Raster
from ar_core.protocols import CausalLM, KVCache
from ar_core.steps import plan_slots
from ar_vision.lm_adapter import CausalLMAdapter, generate_tokens
from ar_vision.model import ClassConditionalStepModel, build_step_model
from ar_vision.orderings import NextScale
from ar_vision.sampling import generate_images

V, C = 8, 10
PLAN = Raster().plan((4, 4))


def _model() -> ClassConditionalStepModel:
    return build_step_model(vocab_size=V, num_classes=C, num_positions=16, seed=2).eval()


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_adapter_logits_equal_the_step_model_forward(cfg_scale: float) -> None:
    model = _model()
    adapter = CausalLMAdapter(model, PLAN, cfg_scale=cfg_scale)
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([3, 7])
    tokens = torch.randint(0, V, (2, 16), generator=gen)
    cache = adapter.new_cache(2)
    # ragged chunks like a speculative strategy: the class, then 5 pending + commit 3, ...
    first = adapter(labels[:, None], cache=cache).logits  # (B, 1, V)
    chunk = adapter(tokens[:, :5], cache=cache, commit=False).logits  # (B, 5, V)
    cache.commit(torch.tensor([3, 1]))
    cont = torch.stack([tokens[0, 3:6], tokens[1, 1:4]])  # each row continues its own
    rest = adapter(cont, cache=cache, commit=False).logits  # (B, 3, V)
    order, slot_steps = plan_slots(PLAN)
    with torch.no_grad():
        cond = model(tokens, labels, order, slot_steps)  # (B, N, V)
        uncond = model(tokens, torch.full_like(labels, C), order, slot_steps)
    ref = uncond + cfg_scale * (cond - uncond)
    torch.testing.assert_close(first[:, 0], ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunk[:, :4], ref[:, 1:5], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rest[0], ref[0, 4:7], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rest[1], ref[1, 2:5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
@pytest.mark.parametrize("strategy", ["greedy", "sjd", "lantern"])
def test_temperature_zero_strategies_equal_the_step_loop(cfg_scale: float, strategy: str) -> None:
    model = _model()
    labels = torch.tensor([0, 4, C])
    reference = generate_images(model, PLAN, labels, cfg_scale=cfg_scale, temperature=0.0)
    adapter = CausalLMAdapter(model, PLAN, cfg_scale=cfg_scale)
    kwargs: dict[str, object] = {}
    if strategy != "greedy":
        kwargs["window"] = 8
    if strategy == "lantern":
        kwargs["neighbours"] = torch.stack([(torch.arange(V) + d) % V for d in (1, 2, 3)], 1)
    config = GenerationConfig(max_new_tokens=16, temperature=0.0, seed=0)
    tokens, stats = generate_tokens(adapter, labels, config, strategy=strategy, **kwargs)
    assert torch.equal(tokens, reference.tokens)
    if strategy == "greedy":
        assert stats.target_forward_passes == 16


def test_adapter_refuses_multi_position_steps_and_wrong_lengths() -> None:
    model = build_step_model(vocab_size=V, num_classes=C, num_positions=21)
    with pytest.raises(ar_core.ConfigError, match="one position per step"):
        CausalLMAdapter(model, NextScale(scales=[1, 2, 4]).plan((21,)))
    adapter = CausalLMAdapter(_model(), PLAN)
    with pytest.raises(ar_core.ConfigError, match="max_new_tokens"):
        generate_tokens(adapter, torch.tensor([1]), GenerationConfig(max_new_tokens=4))


def test_adapter_follows_the_causal_lm_and_cache_protocols() -> None:
    adapter = CausalLMAdapter(_model(), PLAN, cfg_scale=2.0)
    lm: CausalLM = adapter  # mypy checks the signatures, isinstance the members
    assert isinstance(lm, CausalLM)
    cache = adapter.new_cache(3, max_len=10)
    kv: KVCache = cache
    assert isinstance(kv, KVCache)
    assert (cache.batch_size, cache.max_len, cache.inner.batch_size) == (3, 10, 6)
    with pytest.raises(ar_core.InputError, match="max_seq_len"):
        adapter.new_cache(1, max_len=adapter.max_seq_len + 1)
    adapter(torch.tensor([[1], [2], [3]]), cache=cache)
    with pytest.raises(ar_core.InputError, match="max_len=10"):
        cache.commit(torch.tensor([0, 10, 0]))
    with pytest.raises(ar_core.InputError, match="own cache"):
        adapter(torch.tensor([[1]]), cache=_model().step_model.transformer.new_cache(2))


def test_adapter_takes_default_positions_and_refuses_others() -> None:
    """Positions are the plan's: the default ones give the same logits as None, others
    (a tree or lookahead verification) are refused instead of silently ignored."""
    adapter = CausalLMAdapter(_model(), PLAN)
    tokens = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(1))
    a, b = adapter.new_cache(2), adapter.new_cache(2)
    labels = torch.tensor([[3], [7]])
    adapter(labels, cache=a), adapter(labels, cache=b)
    plain = adapter(tokens, cache=a).logits
    given = adapter(tokens, positions=torch.arange(1, 5).expand(2, 4), cache=b).logits
    assert torch.equal(plain, given)
    with pytest.raises(ar_core.InputError, match="positions=None"):
        adapter(tokens, positions=torch.zeros(2, 4, dtype=torch.long), cache=b)
    config = GenerationConfig(max_new_tokens=16, temperature=0.0)
    with pytest.raises(ar_core.InputError, match="CausalLMAdapter supports the causal mask"):
        generate_tokens(
            adapter, labels[:, 0], config, strategy="lookahead", window=2, ngram=2, pool_size=1
        )


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_fork_reset_and_move_entries(cfg_scale: float) -> None:
    adapter = CausalLMAdapter(_model(), PLAN, cfg_scale=cfg_scale)
    labels = torch.tensor([[3], [7], [C]])
    tokens = torch.randint(0, V, (3, 6), generator=torch.Generator().manual_seed(1))
    cache = adapter.new_cache(3)
    adapter(labels, cache=cache)
    adapter(tokens[:, :4], cache=cache)
    cache.crop(torch.tensor([5, 3, 4]))  # ragged rows, as after a speculative rollback
    # a fork of rows (2, 0) continues exactly like those rows of the original
    fork = cache.fork(torch.tensor([2, 0]))
    assert fork.lengths.tolist() == [4, 5]
    nxt = torch.stack([tokens[0, 4:6], tokens[1, 2:4], tokens[2, 3:5]])
    ref = adapter(nxt, cache=cache).logits  # (3, 2, V)
    got = adapter(nxt[[2, 0]], cache=fork).logits
    torch.testing.assert_close(got, ref[[2, 0]], rtol=0, atol=0)
    assert cache.lengths.tolist() == [7, 5, 6] and fork.lengths.tolist() == [6, 7]
    # reset: the cache starts over like a new one
    fresh = adapter(labels, cache=adapter.new_cache(3)).logits
    cache.reset()
    assert cache.lengths.tolist() == [0, 0, 0] and cache.max_length() == 0
    torch.testing.assert_close(adapter(labels, cache=cache).logits, fresh, rtol=0, atol=0)
    # move_entries: sequence slot s is slot s + 1 of every copy of the row in the step model
    adapter(tokens[:, :4], cache=cache)
    before = [k.clone() for k in cache.inner.k]
    cache.move_entries(torch.tensor([[1], [2], [0]]), torch.tensor([[4], [3], [2]]))
    R = cache.inner.batch_size
    for layer, k in enumerate(cache.inner.k):
        for r in range(R):
            b = r % 3
            src, dst = [2, 3, 1][b], [5, 4, 3][b]
            assert torch.equal(k[r, :, dst], before[layer][r, :, src])
            keep = [s for s in range(k.shape[2]) if s != dst]
            assert torch.equal(k[r, :, keep], before[layer][r, :, keep])
    with pytest.raises(ar_core.InputError, match=r"\(3, m\)"):
        cache.move_entries(torch.tensor([[1]]), torch.tensor([[2]]))


@pytest.mark.parametrize("window", [9, 10, 16])
def test_sjd_window_up_to_the_whole_image(window: int) -> None:
    """The model's max_seq_len is sized from the image (room for a window of N drafts):
    windows past the old cap of 9 run, and at temperature 0 still equal greedy."""
    model = _model()
    labels = torch.tensor([0, 4, C])
    reference = generate_images(model, PLAN, labels, cfg_scale=2.0, temperature=0.0)
    adapter = CausalLMAdapter(model, PLAN, cfg_scale=2.0)
    config = GenerationConfig(max_new_tokens=16, temperature=0.0, seed=0)
    tokens, stats = generate_tokens(adapter, labels, config, strategy="sjd", window=window)
    assert torch.equal(tokens, reference.tokens)
    assert stats.target_forward_passes <= 16


def test_sjd_window_is_bounded_by_the_image_length() -> None:
    adapter = CausalLMAdapter(_model(), PLAN)
    config = GenerationConfig(max_new_tokens=16, temperature=0.0, seed=0)
    with pytest.raises(ar_core.InputError, match="max_seq_len"):
        generate_tokens(adapter, torch.tensor([1]), config, strategy="sjd", window=16 + 1)
    small = build_step_model(vocab_size=V, num_classes=C, num_positions=16, seed=2, window=12)
    adapter = CausalLMAdapter(small.eval(), PLAN)
    generate_tokens(adapter, torch.tensor([1]), config, strategy="sjd", window=12)
    with pytest.raises(ar_core.InputError, match="max_seq_len"):  # room for 12 only
        generate_tokens(adapter, torch.tensor([1]), config, strategy="sjd", window=13)


def test_window_room_changes_no_number_of_the_model(tmp_path) -> None:
    """The room only lengthens the position table: every weight a plan uses is the one a
    model without room (window=0: max_seq_len 2 (N + 2), as before) draws, and so is the
    training forward; the image length is kept through save and load."""
    roomy, bare = (
        _model(),
        build_step_model(vocab_size=V, num_classes=C, num_positions=16, seed=2, window=0).eval(),
    )
    assert bare.step_model.max_positions == 17  # as 2 (N + 2) gave before the room
    a, b = roomy.state_dict(), bare.state_dict()
    assert a.keys() == b.keys()
    for key, value in b.items():
        assert torch.equal(a[key][: value.shape[0]], value), key
    tokens = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(0))
    order, slot_steps = plan_slots(PLAN)
    labels = torch.tensor([1, 2, C])
    with torch.no_grad():
        assert torch.equal(
            roomy(tokens, labels, order, slot_steps), bare(tokens, labels, order, slot_steps)
        )
    roomy.save_pretrained(tmp_path / "m")
    loaded = ClassConditionalStepModel.from_pretrained(tmp_path / "m")
    assert loaded.max_tokens == 16
    with pytest.raises(ar_core.InputError, match="do not fit a model built for 16"):
        loaded.check_tokens(17)


def test_tight_step_model_cache_grows_for_a_longer_call() -> None:
    """The step-model cache is sized for generate's calls (one-token passes see a short
    cache); a longer call grows it, keeping every entry: the logits equal those of a
    cache of the full size."""
    adapter = CausalLMAdapter(_model(), PLAN, cfg_scale=2.0)
    labels = torch.tensor([[3], [7]])
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(3))
    small, full = adapter.new_cache(2, max_len=17), adapter.new_cache(2)
    assert small.inner.max_len == 1 + 17 + 2 < full.inner.max_len
    outs = []
    for cache in (small, full):
        adapter(labels, cache=cache)
        a = adapter(tokens[:, :2], cache=cache).logits
        b = adapter(tokens[:, 2:12], cache=cache, commit=False).logits  # needs 3 + 20 slots
        outs.append((a, b))
    assert small.inner.max_len > 1 + 17 + 2
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-6, atol=1e-6)
