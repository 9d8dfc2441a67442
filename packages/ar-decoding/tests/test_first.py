"""FiRST layer skipping: routers that keep every layer give the base model's output exactly;
under a fixed skip set the cached decode equals recomputation without a cache; per-row skip
sets equal each row decoded alone; self-speculative decoding with the skipping draft
equals the full model's greedy output; trained routers skip layers; bad input is a clear
error."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny

from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_decoding.first import FiRSTRouters, LayerSkipModel, choose_skip, train_routers

GREEDY = GenerationConfig(max_new_tokens=12, temperature=0)


def _ragged() -> tuple[torch.Tensor, list[int]]:
    return torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1)), [7, 2, 5]


def test_routers_keeping_every_layer_equal_the_base() -> None:
    model = tiny(layers=3)
    x, lengths = _ragged()
    routers = FiRSTRouters.for_model(model, keep_bias=5.0)
    ref = generate(model, x, GREEDY, prompt_lengths=lengths)
    out = generate(model, x, GREEDY, strategy="first", prompt_lengths=lengths, routers=routers)
    assert torch.equal(out.sequences, ref.sequences)
    sample = GenerationConfig(max_new_tokens=8, seed=3)
    ref_s = generate(model, x, sample, strategy="sample", prompt_lengths=lengths)
    out_s = generate(model, x, sample, strategy="first", prompt_lengths=lengths, routers=routers)
    assert torch.equal(out_s.sequences, ref_s.sequences)


def test_cached_decode_equals_recomputation_under_a_fixed_skip_set() -> None:
    model = tiny(layers=3, std=0.2)
    x = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(2))
    out = generate(model, x, GREEDY, strategy="first", skip_layers=[1])
    skipping = LayerSkipModel(model, [1])
    seq = x
    with torch.no_grad():
        for _ in range(GREEDY.max_new_tokens):  # no cache: the whole sequence every step
            seq = torch.cat([seq, skipping(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out.sequences, seq)
    assert not torch.equal(out.sequences, generate(model, x, GREEDY).sequences)  # it skipped


def test_per_row_skip_sets_equal_each_row_alone() -> None:
    model = tiny(layers=3, std=0.2)
    x, lengths = _ragged()
    routers = FiRSTRouters.for_model(model)
    with torch.no_grad():  # routers that read the prompt: different rows, different sets
        for lin in routers.linears():
            lin.weight.normal_(0, 30.0)
            lin.bias.zero_()
    skip = choose_skip(model, routers, x, torch.tensor(lengths))
    assert len({tuple(r.tolist()) for r in skip}) > 1
    out = generate(model, x, GREEDY, strategy="first", prompt_lengths=lengths, routers=routers)
    for b, n in enumerate(lengths):
        alone = generate(model, x[b : b + 1, :n], GREEDY, strategy="first", skip_layers=skip[b])
        assert torch.equal(out.sequences[b, : n + 12], alone.sequences[0])


def test_self_speculative_with_the_skipping_draft_equals_greedy() -> None:
    model = tiny(layers=3)
    x, lengths = _ragged()
    ref = generate(model, x, GREEDY, prompt_lengths=lengths)
    out = generate(
        model, x, GREEDY, strategy="first", prompt_lengths=lengths, skip_layers=[1, 2],
        speculative_draft=True, num_draft_tokens=3,
    )  # fmt: skip
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats.draft_forward_passes > 0


def test_trained_routers_skip_layers() -> None:
    model = tiny(16, dim=32, layers=3)

    def data(gen: torch.Generator, b: int) -> torch.Tensor:
        return torch.randint(0, 16, (b, 12), generator=gen)

    for gate in ("soft", "hard", "bernoulli"):
        routers = FiRSTRouters.for_model(model, keep_bias=1.0)
        history = train_routers(
            model, routers, data, prompt_len=6, steps=15, skip_weight=2.0, gate=gate
        )
        assert history[-1]["keep"] < history[0]["keep"]  # the regulariser pushes to skipping
    with pytest.raises(ConfigError, match="gate must be"):
        train_routers(model, routers, data, prompt_len=6, gate="sigmoid")  # type: ignore[arg-type]


def test_bad_input() -> None:
    model, x = tiny(layers=2), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="removes every one of the 2 layers"):
        generate(model, x, GREEDY, strategy="first", skip_layers=[0, 1])
    with pytest.raises(ConfigError, match=r"skip_layers \[5\]"):
        generate(model, x, GREEDY, strategy="first", skip_layers=[5])
    with pytest.raises(ConfigError, match="one"):
        generate(model, x, GREEDY, strategy="first")
    with pytest.raises(ConfigError, match="routers are for 3 layers"):
        generate(model, x, GREEDY, strategy="first", routers=FiRSTRouters(64, 3))
