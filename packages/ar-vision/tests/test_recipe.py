"""Recipe ``vision-digits`` end to end at toy sizes: the result, the files, ``sample``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ar_core
from ar_core import registry
from ar_core.recipes import Recipe, build_config, write_recipe_file
from ar_vision import metrics
from ar_vision.data import load_digits
from ar_vision.model import ClassConditionalStepModel
from ar_vision.recipes.digits import (
    NUM_CLASSES,
    VisionDigitsConfig,
    load_tokenizer,
    recipe,
    sample_images,
    sequence_nll,
)
from ar_vision.representation import Representation


def test_registered_and_follows_the_recipe_protocol() -> None:
    assert registry.recipes.get("vision-digits") is recipe
    assert recipe.in_demo
    assert isinstance(recipe, Recipe)
    assert isinstance(recipe.demo_config(), VisionDigitsConfig)
    for name in ("pixel", "vqvae", "msrvq", "nfig", "ctf"):  # the other engineer's, via us
        assert registry.tokenizers.provider(name) == "vision"


def test_bad_config_fails_at_once() -> None:
    with pytest.raises(ar_core.ConfigError, match="cfg_scale"):
        build_config(VisionDigitsConfig, None, {"cfg_scale": -1})
    with pytest.raises(ar_core.ConfigError, match="not_a_field"):
        build_config(VisionDigitsConfig, None, {"not_a_field": 1})


def test_ordering_that_does_not_fit_the_tokenizer_names_the_fix(tmp_path: Path) -> None:
    config = VisionDigitsConfig(tokenizer="vqvae", ordering="next-scale", progress_bar=False)
    with pytest.raises(ar_core.ConfigError, match="multi-scale tokenizer"):
        recipe.run(config, tmp_path, lambda _: None)


def test_run_and_sample_at_toy_size(tmp_path: Path) -> None:
    config = VisionDigitsConfig(
        tokenizer_steps=10, steps=8, batch_size=16, samples_per_class=2, progress_bar=False
    )
    write_recipe_file(tmp_path, "vision-digits", config)
    result = recipe.run(config, tmp_path, lambda _: None)
    m = result.metrics
    assert m["network_calls_per_image"] == 16  # raster over 4x4 VQ tokens
    assert result.images and result.images[0][1].is_file()
    assert [step for step, _ in result.curves["train loss"]] == list(range(1, 9))
    # the reported numbers are those of the saved checkpoint: recount them from disk
    rep = Representation.of(load_tokenizer("vqvae", tmp_path / "tokenizer"))
    model = ClassConditionalStepModel.from_pretrained(tmp_path / "model").eval()
    plan = rep.plan("raster")
    test_x, test_y = load_digits(8, "test", config.seed)
    nll = sequence_nll(model, rep, plan, rep.encode(test_x), test_y)
    assert m["nll_nats_per_token"] == round(nll, 5)
    assert m["bits_per_dim"] == round(metrics.bits_per_dim(nll * rep.num_tokens, 64), 5)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(config.samples_per_class)
    out, _ = sample_images(model, rep, plan, labels, config)  # the recipe's seed: same draws
    images = rep.decode(out.tokens).clamp(0, 1)
    assert m["class_accuracy"] == round(metrics.class_accuracy(images, labels), 5)
    assert m["frechet_distance"] == round(metrics.frechet_distance(images, test_x), 5)
    more = recipe.sample(tmp_path, 10, lambda _: None)
    assert more.metrics["network_calls_per_image"] == 16
    assert more.images[0][1].is_file()
    labels = torch.arange(10) % NUM_CLASSES
    out, _ = sample_images(model, rep, plan, labels, config)
    again = metrics.class_accuracy(rep.decode(out.tokens).clamp(0, 1), labels)
    assert more.metrics["class_accuracy"] == again
