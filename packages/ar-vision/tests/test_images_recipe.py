"""Recipe ``vision-images`` on folders of PNGs written here (digits at 32 px), at toy sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import ar_core
from ar_core import registry
from ar_core.recipes import Recipe, build_config, write_recipe_file
from ar_vision.data import load_digits
from ar_vision.metrics import precision_recall, save_grid, train_image_classifier
from ar_vision.model import ClassConditionalStepModel
from ar_vision.recipes.digits import load_tokenizer
from ar_vision.recipes.images import (
    VisionImagesConfig,
    build_tokenizer,
    load_data,
    recipe,
    sample_images,
    sample_labels,
    scales_for,
)
from ar_vision.representation import Representation

TOY = {
    "tokenizer_steps": 3,
    "tokenizer_batch_size": 8,
    "steps": 3,
    "batch_size": 8,
    "samples_per_class": 2,
    "classifier_steps": 5,
    "progress_bar": False,
}


def write_digits(root: Path, per_class: int = 6, classes: tuple[int, ...] = (0, 1)) -> None:
    """``per_class`` digits of each class as 32x32 grey PNGs in one sub-folder per class."""
    x, y = load_digits(32, "all")
    for c in classes:
        (root / f"class{c}").mkdir(parents=True)
        rows = torch.nonzero(y == c).flatten()[:per_class]
        for i, r in enumerate(rows.tolist()):
            pixels = (x[r, 0] * 255).round().byte().numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def test_registered_not_in_demo() -> None:
    assert registry.recipes.get("vision-images") is recipe
    assert registry.recipes.provider("vision-images") == "vision"
    assert isinstance(recipe, Recipe) and not recipe.in_demo
    with pytest.raises(ar_core.ConfigError, match="image_size"):
        build_config(VisionImagesConfig, None, {"image_size": 24})
    with pytest.raises(ar_core.ConfigError, match="channels"):
        build_config(VisionImagesConfig, None, {"channels": 2})


@pytest.mark.parametrize(
    ("size", "tokenizer", "downsample", "tokens"),
    [
        (16, "vqvae", 4, 16),
        (32, "vqvae", 4, 64),
        (32, "vqvae", 8, 16),
        (64, "vqvae", 8, 64),
        (32, "msrvq", 4, 1 + 4 + 16 + 64),
        (64, "nfig", 4, 1 + 4 + 16 + 64 + 256),
        (32, "ctf", 8, 2 * 16),
        (16, "pixel", 4, 256),
    ],
)
def test_tokenizers_sized_from_the_config(
    size: int, tokenizer: str, downsample: int, tokens: int
) -> None:
    config = VisionImagesConfig(image_size=size, tokenizer=tokenizer, downsample=downsample)
    tok = build_tokenizer(config)
    assert tok.image_size == size and Representation.of(tok).num_tokens == tokens


def test_scale_schedule_ends_at_the_latent_side() -> None:
    assert scales_for(1) == [1]
    assert scales_for(4) == [1, 2, 4]
    assert scales_for(16) == [1, 2, 4, 8, 16]
    assert scales_for(6) == [1, 2, 4, 6]


def test_folder_with_classes_trains_and_samples_at_32px(tmp_path: Path) -> None:
    data = tmp_path / "images"
    write_digits(data)
    config = VisionImagesConfig(data=str(data), **TOY)
    loaded = load_data(config)
    assert loaded.conditional and loaded.classes == ["class0", "class1"]
    assert loaded.train_x.shape[1:] == (1, 32, 32)
    assert loaded.train_x.shape[0] + loaded.test_x.shape[0] == 12
    out = tmp_path / "run"
    write_recipe_file(out, "vision-images", config)
    result = recipe.run(config, out, lambda _: None)
    m = result.metrics
    assert m["network_calls_per_image"] == 64  # raster over 8x8 VQ tokens
    assert 0.0 <= m["class_accuracy"] <= 1.0 and "frechet_distance" in m
    assert result.images[0][1].is_file()
    # the reported samples are the saved checkpoint's: redraw them from disk
    rep = Representation.of(load_tokenizer("vqvae", out / "tokenizer"))
    model = ClassConditionalStepModel.from_pretrained(out / "model").eval()
    assert model.num_classes == 2
    plan = rep.plan("raster")
    labels = sample_labels(2, True, config.samples_per_class)
    drawn, _ = sample_images(model, plan, labels, config, True, rep)
    clf = train_image_classifier(loaded.train_x, loaded.train_y, 2, steps=5, seed=0)
    images = rep.decode(drawn.tokens).clamp(0, 1)
    accuracy = float((clf(images).argmax(1) == labels).float().mean())
    assert m["class_accuracy"] == round(accuracy, 5)
    more = recipe.sample(out, 4, lambda _: None)
    assert more.metrics["network_calls_per_image"] == 64 and more.images[0][1].is_file()


def test_cached_equals_uncached_sampling_at_32px(tmp_path: Path) -> None:
    from ar_vision.sampling import generate_images

    config = VisionImagesConfig(tokenizer="msrvq", ordering="next-scale", downsample=8, **TOY)
    rep = Representation.of(build_tokenizer(config))
    plan = rep.plan("next-scale")
    from ar_vision.model import build_step_model

    model = build_step_model(
        vocab_size=rep.vocab_size, num_classes=2, num_positions=rep.num_tokens, seed=0
    ).eval()
    labels = torch.tensor([0, 1, 1])
    a = generate_images(
        model, plan, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(3)
    )
    b = generate_images(
        model,
        plan,
        labels,
        cfg_scale=2.0,
        generator=torch.Generator().manual_seed(3),
        use_cache=False,
    )
    assert rep.num_tokens == 1 + 4 + 16 and torch.equal(a.tokens, b.tokens)


def test_unconditional_folder_rgb(tmp_path: Path) -> None:
    for i in range(6):
        colour = (40 * i, 255 - 40 * i, 128)
        Image.new("RGB", (20 + i, 16), color=colour).save(tmp_path / f"{i}.png")  # mixed sizes
    config = VisionImagesConfig(data=str(tmp_path), image_size=16, channels=3, **TOY)
    loaded = load_data(config)
    assert not loaded.conditional and loaded.train_x.shape[1:] == (3, 16, 16)
    result = recipe.run(config, tmp_path / "run", lambda _: None)
    assert "class_accuracy" not in result.metrics  # no classes, no classifier
    assert result.metrics["network_calls_per_image"] == 16
    assert result.images[0][1].is_file()


def test_corrupt_file_is_named_or_skipped(tmp_path: Path) -> None:
    data = tmp_path / "images"
    write_digits(data)
    (data / "class1" / "broken.png").write_bytes(b"not a png")
    config = VisionImagesConfig(data=str(data), **TOY)
    with pytest.raises(ar_core.InputError, match=r"broken\.png.*skip_bad=true"):
        load_data(config)
    with pytest.raises(ar_core.InputError, match=r"broken\.png.*skip_bad=true"):
        recipe.run(config, tmp_path / "refused", lambda _: None)  # the recipe, before training
    skipping = config.model_copy(update={"skip_bad": True})
    with pytest.warns(UserWarning, match=r"broken\.png"):
        loaded = load_data(skipping)
    assert loaded.train_x.shape[0] + loaded.test_x.shape[0] == 12
    # the same folder trains and samples at 32 px once the broken file is skipped
    write_recipe_file(tmp_path / "run", "vision-images", skipping)
    with pytest.warns(UserWarning, match=r"broken\.png"):
        result = recipe.run(skipping, tmp_path / "run", lambda _: None)
    assert result.metrics["network_calls_per_image"] == 64 and result.images[0][1].is_file()
    assert result.metrics["num_train_images"] == loaded.train_x.shape[0]
    more = recipe.sample(tmp_path / "run", 4, lambda _: None)
    assert more.images[0][1].is_file()


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ar_core.InputError, match="no images in"):
        load_data(VisionImagesConfig(data=str(tmp_path / "empty")))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (32, 32)).save(mixed / "a.png")
    Image.new("L", (40, 32)).save(mixed / "b.png")
    with pytest.raises(ar_core.InputError, match=r"b\.png is 40x32, not 32x32.*resize=true"):
        load_data(VisionImagesConfig(data=str(mixed), resize=False))
    both = tmp_path / "both"
    (both / "a").mkdir(parents=True)
    Image.new("L", (32, 32)).save(both / "x.png")
    Image.new("L", (32, 32)).save(both / "a" / "y.png")
    with pytest.raises(ar_core.InputError, match="both directly"):
        load_data(VisionImagesConfig(data=str(both)))
    # 3-channel images into a 1-channel tokenizer
    tok = build_tokenizer(VisionImagesConfig(image_size=16))
    with pytest.raises(ar_core.InputError, match=r"\(B, 1, H, W\).*channels=3"):
        tok.encode(torch.rand(2, 3, 16, 16))
    # orderings that do not fit the layout
    for tokenizer, ordering, message in [
        ("vqvae", "next-scale", "multi-scale tokenizer"),
        ("vqvae", "coarse-to-fine", "tokenizer=ctf"),
    ]:
        config = VisionImagesConfig(tokenizer=tokenizer, ordering=ordering, **TOY)
        with pytest.raises(ar_core.ConfigError, match=message):
            recipe.run(config, tmp_path / "out", lambda _: None)


def test_precision_recall_against_a_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(30, 4, generator=gen), torch.randn(20, 4, generator=gen) + 0.5
    precision, recall = precision_recall(real, fake, k=3)

    def reference(points: torch.Tensor, centres: torch.Tensor) -> float:
        hits = 0
        for p in points:
            for c in centres:
                d = sorted(float((c - o).norm()) for o in centres)
                if float((p - c).norm()) <= d[3]:  # d[0] = 0 is the point itself
                    hits += 1
                    break
        return hits / len(points)

    assert precision == pytest.approx(reference(fake, real))
    assert recall == pytest.approx(reference(real, fake))
    same_p, same_r = precision_recall(real, real.clone(), k=3)
    assert same_p == same_r == 1.0


def test_save_grid_rgb(tmp_path: Path) -> None:
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0] = 1.0  # red
    path = save_grid(images, tmp_path / "g.png", nrow=2, cell=4)
    with Image.open(path) as grid:
        assert grid.mode == "RGB" and grid.getpixel((2, 2)) == (255, 0, 0)


def test_ctf_coarse_and_fine_nll_add_up_to_the_sequence_nll() -> None:
    from ar_vision.model import build_step_model
    from ar_vision.recipes.digits import sequence_nll
    from ar_vision.recipes.images import coarse_fine_nll

    config = VisionImagesConfig(tokenizer="ctf", ordering="coarse-to-fine", downsample=8, **TOY)
    tokenizer = build_tokenizer(config)
    x, y = load_digits(32, "test")
    tokenizer.fit(x[:64], steps=3, batch_size=16, generator=torch.Generator().manual_seed(0))
    rep = Representation.of(tokenizer)
    plan = rep.plan("coarse-to-fine")
    model = build_step_model(
        vocab_size=rep.vocab_size, num_classes=10, num_positions=rep.num_tokens, seed=0
    ).eval()
    tokens, labels = rep.encode(x[:20]), y[:20]
    coarse, fine = coarse_fine_nll(model, rep, plan, tokens, labels, batch_size=7)
    total = sequence_nll(model, rep, plan, tokens, labels)  # nats per token of 2n
    assert coarse + fine == pytest.approx(2 * total, rel=1e-5)
    assert 0 < coarse <= torch.log(torch.tensor(float(config.n_coarse))) + 1.0
    with pytest.raises(ar_core.ConfigError, match="tokenizer=ctf"):
        vq = Representation.of(build_tokenizer(VisionImagesConfig(downsample=8)))
        coarse_fine_nll(model, vq, vq.plan("raster"), tokens[:, :16], labels)


def test_ctf_with_a_bidirectional_fine_stage_trains_and_samples(tmp_path: Path) -> None:
    data = tmp_path / "images"
    write_digits(data)
    config = VisionImagesConfig(
        data=str(data),
        tokenizer="ctf",
        ordering="coarse-to-fine",
        downsample=8,
        n_coarse=4,
        bidirectional_steps=True,
        **TOY,
    )
    out = tmp_path / "run"
    write_recipe_file(out, "vision-images", config)
    result = recipe.run(config, out, lambda _: None)
    assert result.metrics["network_calls_per_image"] == 16 + 1  # 16 coarse steps, 1 fine
    assert result.metrics["full_perplexity"] == pytest.approx(
        result.metrics["coarse_perplexity"] * result.metrics["fine_given_coarse_perplexity"],
        rel=1e-3,
    )
    assert ClassConditionalStepModel.from_pretrained(out / "model").own_step_queries
    assert recipe.sample(out, 2, lambda _: None).metrics["network_calls_per_image"] == 17
