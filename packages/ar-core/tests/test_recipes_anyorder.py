"""The core-anyorder recipe runs end to end (briefly) and samples from what it saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from ar_core import ConfigError, registry
from ar_core.recipes import build_config, write_recipe_file
from ar_core.recipes.anyorder import AnyOrderConfig, evaluate
from ar_core.steps import TwoStreamStepModel


def test_recipe_is_registered_and_runs(tmp_path: Path) -> None:
    recipe = registry.recipes.get("core-anyorder")
    assert recipe.in_demo and recipe.config_class is AnyOrderConfig
    config = AnyOrderConfig(
        length=6,
        steps=20,
        eval_sequences=8,
        dim=32,
        progress_bar=False,
        orderings=["raster", "block"],
    )
    write_recipe_file(tmp_path, "core-anyorder", config)
    messages: list[str] = []
    result = recipe.run(config, tmp_path, messages.append)
    table = result.tables[0]
    assert [row[0] for row in table.rows] == ["raster", "block"]
    # the table is what the saved model gives: a recount from disk reproduces it exactly
    loaded = TwoStreamStepModel.from_pretrained(tmp_path / "model")
    rows, _ = evaluate(loaded, config)
    assert rows == table.rows
    assert all(row[1] * config.eval_sequences == round(row[1] * 8) for row in table.rows)
    assert table.rows[0][2] == 1 + 4  # prefill + one call per generated position
    assert len(result.curves["train loss"]) > 1 and result.samples and messages
    assert (tmp_path / "model" / "model.safetensors").is_file()
    sampled = recipe.sample(tmp_path, 4, messages.append)
    assert len(sampled.samples) == 4 * 2  # every sample, in each ordering


def test_recipe_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="max_stride"):
        build_config(AnyOrderConfig, AnyOrderConfig(), {"max_stride": 40})
    with pytest.raises(ConfigError, match="ordering"):
        build_config(AnyOrderConfig, None, {"orderingz": ["raster"]})
