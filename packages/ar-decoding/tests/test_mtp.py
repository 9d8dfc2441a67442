"""Multi-token prediction with gated LoRA: the base's logits are bit-identical after MTP
training (plain LoRA, the control, changes them); linear and quadratic decoding equal the
base's greedy output and accept several tokens per forward; quadratic accepts at least as
many as linear; sampling matches the base's exact joint (chi-square at 0.001); bad input
is a clear error."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import ALPHA, chi2_pvalue, exact_joint, tiny
from ramp_models import ramp_base, ramps

from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_decoding.lora import add_lora
from ar_decoding.mtp import MTPModel, train_mtp

DATA = ramps()


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, MTPModel, list[dict[str, float]]]:
    base = ramp_base()
    reference = copy.deepcopy(base)
    torch.manual_seed(0)  # the adapters' and mask embeddings' initialisation
    model = MTPModel(base, 3, rank=4)
    history = train_mtp(model, DATA, steps=100, batch_size=16, anchors=4, lr=1e-2)
    return reference, model, history


def test_base_logits_bit_identical_after_training_and_plain_lora_is_not(trained) -> None:  # type: ignore[no-untyped-def]
    reference, model, history = trained
    first = sum(h["mask_ce"] for h in history[:10]) / 10
    last = sum(h["mask_ce"] for h in history[-10:]) / 10
    assert last < 0.5 * first  # the masks learned to predict ahead
    x = DATA(torch.Generator().manual_seed(9), 4)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference(x).logits)
    plain = MTPModel(copy.deepcopy(reference), 3, rank=4, gated=False)
    train_mtp(plain, DATA, steps=3, batch_size=4, anchors=2, lr=1e-2)
    with torch.no_grad():
        assert not torch.equal(plain(x).logits, reference(x).logits)


def test_linear_and_quadratic_equal_base_greedy(trained) -> None:  # type: ignore[no-untyped-def]
    reference, model, _ = trained
    x = DATA(torch.Generator().manual_seed(3), 3)[:, :6]
    lengths = [6, 3, 5]
    cfg = GenerationConfig(max_new_tokens=20, temperature=0)
    ref = generate(reference, x, cfg, prompt_lengths=lengths)
    acc = {}
    for quadratic in (False, True):
        out = generate(model, x, cfg, strategy="mtp", prompt_lengths=lengths, quadratic=quadratic)
        assert torch.equal(out.sequences, ref.sequences)
        acc[quadratic] = out.stats.mean_accepted_length
        assert out.stats.target_forward_passes < ref.stats.target_forward_passes
    assert acc[False] > 1.5
    assert acc[True] >= acc[False]


def test_untrained_mtp_equals_greedy_on_a_random_model() -> None:
    base = tiny()
    reference = copy.deepcopy(base)
    model = MTPModel(base, 2, rank=8)
    x = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, repetition_penalty=1.3)
    ref = generate(reference, x, cfg)
    for quadratic in (False, True):
        out = generate(model, x, cfg, strategy="mtp", quadratic=quadratic, num_draft_tokens=2)
        assert torch.equal(out.sequences, ref.sequences)


def test_sampling_matches_the_exact_joint() -> None:
    base = tiny(4, dim=32, seed=11, scale=30.0)
    joint = exact_joint(base, [1, 2], 3)
    model = MTPModel(base, 2, rank=4)
    with torch.no_grad():  # a sampler that disagrees with the base: the residual matters
        model.mask_embed.normal_(0, 1.0)
        model.sampler[2].weight.normal_(0, 1.0)
    x = torch.tensor([[1, 2]]).expand(4000, -1).contiguous()
    cfg = GenerationConfig(max_new_tokens=3, seed=0)
    out = generate(model, x, cfg, strategy="mtp", quadratic=True)
    assert chi2_pvalue(out.sequences[:, 2:], joint, 4) > ALPHA


def test_bad_input() -> None:
    base, x = tiny(), torch.zeros(1, 3, dtype=torch.long)
    cfg = GenerationConfig(max_new_tokens=4, temperature=0)
    with pytest.raises(ConfigError, match="rank must be an int in"):
        MTPModel(tiny(), 2, rank=1000)
    with pytest.raises(ConfigError, match="num_masks must be an int >= 1"):
        MTPModel(tiny(), 0)
    with pytest.raises(ConfigError, match="wraps an ar_core Transformer or a from_hf model"):
        MTPModel(torch.nn.Linear(4, 4), 2)
    with pytest.raises(ConfigError, match="no nn.Linear .* named"):
        add_lora(torch.nn.Sequential(torch.nn.ReLU()), 2)
    with pytest.raises(ConfigError, match="needs an MTPModel"):
        generate(base, x, cfg, strategy="mtp")
    with pytest.raises(ConfigError, match="exceeds the model's 2 mask tokens"):
        generate(MTPModel(base, 2), x, cfg, strategy="mtp", num_draft_tokens=3)


def test_suffix_gate_equals_the_per_token_gate(trained) -> None:  # type: ignore[no-untyped-def]
    """Decoding's fast paths (the LoRA on the mask suffix only, through the merged weight
    W + scale B A; the block-diagonal B of a fused linear) give the per-token gate's
    outputs: the real tokens' bit for bit, the masks' up to rounding; the greedy sampler
    chain picks what the generic one picks."""
    from ar_core import masks
    from ar_core.generation import GenerationConfig as Cfg
    from ar_core.generation import Rows, TokenPicker
    from ar_decoding.mtp import _greedy_chain, _sampler_chain, block_layout

    _, model, _ = trained
    x = DATA(torch.Generator().manual_seed(5), 2)[:, :7]
    anchors = torch.tensor([[1, 4], [0, 6]])
    mask_index, offset, visible, _ = block_layout(7, anchors, 3)
    tokens = torch.cat([x, x.new_zeros(2, 6)], 1)
    spec = masks.table(visible)
    with torch.no_grad():
        per_token = model.mixed(tokens, mask_index, offset, spec)
        suffix = model.mixed(tokens, mask_index, offset, spec, first_mask=7)
        plain = model(x).logits
    assert torch.equal(suffix.logits[:, :7], per_token.logits[:, :7])
    torch.testing.assert_close(suffix.logits[:, :7], plain)  # another shape: rounding only
    torch.testing.assert_close(suffix.hidden, per_token.hidden, rtol=1e-4, atol=1e-5)
    h = per_token.hidden[:, 7:10]
    first = x[:, 2]
    picker = TokenPicker(Cfg(temperature=0))
    rows = Rows(x, torch.tensor([7, 7]), Cfg(max_new_tokens=4, temperature=0), None, scratch=4)
    with torch.no_grad():
        generic = model.sample_logits(h[:, 0], first).argmax(-1)[:, None]  # the head itself
        fast = _greedy_chain(model, h, first, 3)
        chain, q = _sampler_chain(model, h, first, 3, rows, picker)
    assert q is None and torch.equal(chain, fast) and torch.equal(fast[:, :1], generic)


def test_prepacked_mtp_model_decodes_and_a_prepacked_base_is_refused(trained) -> None:  # type: ignore[no-untyped-def]
    """``ar.prepack`` on a trained MTPModel (its base, adapters' base linears and sampler
    become PackedLinear): decoding takes the generic paths and still equals greedy on
    the ramps; wrapping an already prepacked base is a clear error."""
    from ar_core.quant import prepack

    reference, model, _ = trained
    packed = prepack(copy.deepcopy(model))
    x = DATA(torch.Generator().manual_seed(4), 2)[:, :5]
    cfg = GenerationConfig(max_new_tokens=12, temperature=0)
    ref = generate(reference, x, cfg)
    for quadratic in (False, True):
        out = generate(packed, x, cfg, strategy="mtp", quadratic=quadratic)
        assert torch.equal(out.sequences, ref.sequences)
        assert out.stats.mean_accepted_length > 1.5
    with pytest.raises(ConfigError, match="build the MTPModel first"):
        MTPModel(prepack(copy.deepcopy(reference)), 2)
