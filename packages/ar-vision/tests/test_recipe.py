"""Recipe ``vision-digits`` end to end at toy sizes: the result, the files, ``sample``."""

from __future__ import annotations

from pathlib import Path

import pytest

import ar_core
from ar_core import registry
from ar_core.recipes import Recipe, build_config, write_recipe_file
from ar_vision.recipes.digits import VisionDigitsConfig, recipe


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
    assert result.metrics["network_calls_per_image"] == 16  # raster over 4x4 VQ tokens
    assert 0.0 <= result.metrics["class_accuracy"] <= 1.0
    assert result.metrics["frechet_distance"] >= 0.0
    assert result.images and result.images[0][1].is_file()
    assert result.curves["train loss"]
    assert (tmp_path / "model" / "vision.json").is_file()
    more = recipe.sample(tmp_path, 10, lambda _: None)
    assert more.metrics["network_calls_per_image"] == 16
    assert more.images[0][1].is_file()
