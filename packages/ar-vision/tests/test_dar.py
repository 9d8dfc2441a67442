"""D-AR (Gao & Shou 2025): token groups drive the stages of a flow-matching decoder.

The tokenizer is fitted once (seed 0, STEPS updates, batch 128) on the training split of
8x8 digits; the preview checks run on the held-out test split.
"""

import itertools

import pytest
import torch

from ar_core import registry
from ar_core.errors import ConfigError, InputError
from ar_core.recipes import write_recipe_file
from ar_vision import metrics
from ar_vision.dar import DARTokenizer, stream_samples
from ar_vision.data import load_digits
from ar_vision.model import ClassConditionalStepModel, build_step_model
from ar_vision.recipes.digits import VisionDigitsConfig, load_tokenizer, recipe, sample_images
from ar_vision.representation import Representation
from ar_vision.sampling import generate_images

STEPS = 1000


@pytest.fixture(scope="module")
def dar() -> DARTokenizer:
    x, _ = load_digits(8, "train")
    tok = DARTokenizer(seed=0)
    tok.fit(x, steps=STEPS, batch_size=128, generator=torch.Generator().manual_seed(0))
    return tok


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    return load_digits(8, "test")[0]


def _with_later_groups_replaced(tok: DARTokenizer, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """``tokens`` with every token of the groups after ``k`` drawn afresh (and changed)."""
    other = tokens.clone()
    cut = (k + 1) * tok.group_size
    gen = torch.Generator().manual_seed(k)
    shift = torch.randint(1, tok.vocab_size, other[:, cut:].shape, generator=gen)
    other[:, cut:] = (other[:, cut:] + shift) % tok.vocab_size  # every later token differs
    return other


def test_layout(dar: DARTokenizer, test_images: torch.Tensor) -> None:
    tokens = dar.encode(test_images[:5])
    assert tokens.shape == (5, 16) and dar.groups == 4 and dar.group_size == 4
    assert dar.previews(tokens).shape == (4, 5, 1, 8, 8)
    times = dar.step_times()
    assert times[0] == 0 and times[-1] == 1 and bool((times.diff() > 0).all())


def test_preview_after_group_k_ignores_later_tokens(
    dar: DARTokenizer, test_images: torch.Tensor
) -> None:
    tokens = dar.encode(test_images[:32])
    previews = dar.previews(tokens)  # (G, B, 1, S, S)
    for k in range(dar.groups):
        other = _with_later_groups_replaced(dar, tokens, k)
        assert torch.equal(dar.previews(other)[k], previews[k]), k  # exact
        assert torch.equal(dar.decode_partial(tokens[:, : (k + 1) * 4], k), previews[k])
        assert torch.equal(dar.decode_partial(other, k), previews[k])
        if k < dar.groups - 1:  # the replaced groups do change the next preview
            assert not torch.equal(dar.previews(other)[k + 1], previews[k + 1])
    changed = tokens.clone()
    changed[:, 0] = (changed[:, 0] + 1) % dar.vocab_size  # group 0 itself matters
    assert not torch.equal(dar.previews(changed)[0], previews[0])


def test_decoder_stage_k_has_no_path_from_later_codes(dar: DARTokenizer) -> None:
    """The training forward at stage k: zero gradient into the codes of groups > k."""
    b, n, d = 3, dar.token_count, dar.cfg.dim
    codes = torch.randn(b, n, d, requires_grad=True)
    x, t = torch.randn(b, dar.pixels), torch.tensor([0.0, 0.3, 0.7])
    for k in range(dar.groups):
        stage = torch.full((b,), k)
        grad = torch.autograd.grad(dar.velocity(x, t, codes, stage).sum(), codes)[0]
        later = dar.group_of > k  # (N,)
        assert torch.equal(grad[:, later], torch.zeros_like(grad[:, later]))
        assert bool((grad[:, ~later].abs().sum(-1) > 0).all())  # earlier codes are read


def test_stream_is_decode(dar: DARTokenizer, test_images: torch.Tensor) -> None:
    tokens = dar.encode(test_images[:6])
    noise = torch.randn(6, dar.pixels, generator=torch.Generator().manual_seed(5))
    stream = dar.stream(6, noise)
    shown = [stream.feed(tokens[:, 4 * k : 4 * k + 4]) for k in range(4)]
    assert stream.done
    assert torch.equal(torch.stack(shown), dar.previews(tokens, noise))
    assert torch.equal(shown[-1], dar.decode(tokens, noise))
    assert not torch.equal(dar.decode(tokens, noise), dar.decode(tokens))  # the noise is used
    # default noise: fixed by noise_seed, row i the same whatever the batch size (the
    # decodes then agree up to the rounding of batched matrix products)
    assert torch.equal(dar.noise(6)[:2], dar.noise(2))
    assert torch.allclose(dar.decode(tokens)[:2], dar.decode(tokens[:2]), atol=1e-5)


def test_preview_error_falls_with_groups(dar: DARTokenizer, test_images: torch.Tensor) -> None:
    """Measured on the 360 held-out test digits (seed 0, 1000 updates, batch 128): preview
    MSE after groups 0..3 = 0.0274 > 0.0176 > 0.0130 > 0.0122 (the last is the decode,
    PSNR 19.1 dB). With an even time grid (time_power=1) the last group added nothing
    (0.0131 then 0.0135): the flow is then too clean at the last stage for its tokens to
    matter, hence the default time_power=2."""
    previews = dar.previews(dar.encode(test_images)).clamp(0, 1)
    errors = [float(((p - test_images) ** 2).mean()) for p in previews]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.6 * errors[0], errors


def test_save_load_exact(dar: DARTokenizer, test_images: torch.Tensor, tmp_path) -> None:
    dar.save(tmp_path / "dar")
    loaded = DARTokenizer.load(tmp_path / "dar")
    tokens = dar.encode(test_images[:8])
    assert torch.equal(loaded.encode(test_images[:8]), tokens)
    assert torch.equal(loaded.previews(tokens), dar.previews(tokens))


def test_bad_input(dar: DARTokenizer, test_images: torch.Tensor) -> None:
    tokens = dar.encode(test_images[:2])
    with pytest.raises(InputError, match="groups of 4 tokens"):
        dar.decode_partial(tokens[:, :6], 1)  # one and a half groups
    with pytest.raises(InputError, match=r"\(B, 16\)"):
        dar.decode(tokens[:, :12])  # three groups of four
    with pytest.raises(InputError, match=r"group k must lie in \[0, 4\)"):
        dar.decode_partial(tokens, 4)
    with pytest.raises(InputError, match=r"must lie in \[0, 64\)"):
        dar.decode(tokens.clone().fill_(64))
    with pytest.raises(InputError, match=r"must lie in \[0, 64\)"):
        dar.stream(2).feed(torch.full((2, 4), -1))
    stream = dar.stream(2)
    with pytest.raises(InputError, match=r"group 0 must have shape \(2, 4\)"):
        stream.feed(tokens[:, :3])
    for k in range(4):
        stream.feed(tokens[:, 4 * k : 4 * k + 4])
    with pytest.raises(InputError, match="all 4 groups were fed"):
        stream.feed(tokens[:, :4])
    with pytest.raises(InputError, match=r"noise must be \(2, 64\)"):
        dar.decode(tokens, torch.zeros(2, 63))
    with pytest.raises(InputError, match="not fitted"):
        DARTokenizer().decode(tokens)
    with pytest.raises(ConfigError, match="steps_per_group"):
        DARTokenizer(steps_per_group=0)
    with pytest.raises(ConfigError, match="groups"):
        DARTokenizer(groups=0)
    with pytest.raises(InputError, match="one grey channel"):
        dar.encode(test_images[:2].expand(-1, 3, -1, -1))


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_streamed_sampling_equals_sampling_the_whole_sequence(
    dar: DARTokenizer, cfg_scale: float
) -> None:
    """Group by group (a prefix plan each, the earlier groups as prompt) draws the same
    tokens as ar-core's one pass over the whole sequence, and each preview is the one of
    the finished tokens."""
    model = build_step_model(vocab_size=64, num_classes=10, num_positions=16, seed=1).eval()
    labels = torch.tensor([0, 3, 7])
    streamed = list(
        stream_samples(
            model, dar, labels, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(4)
        )
    )
    assert [t.shape[1] for t, _ in streamed] == [4, 8, 12, 16]
    plan = Representation.of(dar).plan("raster")
    whole = generate_images(
        model, plan, labels, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(4)
    )
    tokens = streamed[-1][0]
    assert torch.equal(tokens, whole.tokens)
    for k, (so_far, preview) in enumerate(streamed):
        assert torch.equal(so_far, tokens[:, : 4 * (k + 1)])
        assert torch.equal(preview, dar.previews(tokens)[k])


def test_vision_digits_with_dar_tokens(tmp_path) -> None:
    """``ar train vision-digits --set tokenizer=dar``: 16 tokens, 16 calls; the numbers are
    those of the saved tokenizer and model (decoding is deterministic: noise_seed)."""
    config = VisionDigitsConfig(
        tokenizer="dar",
        tokenizer_steps=5,
        steps=4,
        batch_size=16,
        samples_per_class=1,
        progress_bar=False,
    )
    assert registry.tokenizers.provider("dar") == "vision"
    write_recipe_file(tmp_path, "vision-digits", config)
    result = recipe.run(config, tmp_path, lambda _: None)
    assert result.metrics["network_calls_per_image"] == 16
    (_, grid), (_, previews) = result.images  # samples, then the previews by group
    assert grid.is_file() and previews.is_file()
    rep = Representation.of(load_tokenizer("dar", tmp_path / "tokenizer"))
    model = ClassConditionalStepModel.from_pretrained(tmp_path / "model").eval()
    labels = torch.arange(10)
    out, _ = sample_images(model, rep, rep.plan("raster"), labels, config)
    accuracy = metrics.class_accuracy(rep.decode(out.tokens).clamp(0, 1), labels)
    assert result.metrics["class_accuracy"] == round(accuracy, 5)
    more = recipe.sample(tmp_path, 4, lambda _: None)
    assert more.metrics["network_calls_per_image"] == 16
