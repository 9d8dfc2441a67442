"""Recipe ``diffusion-text``: registered, runs end to end at toy size, samples again from
its folder, and refuses block sizes that do not divide the lengths."""

from __future__ import annotations

from pathlib import Path

import pytest

from ar_core import registry
from ar_core.errors import ConfigError
from ar_core.recipes import build_config, write_recipe_file
from ar_diffusion.recipes.text import DiffusionTextConfig


def toy(**kw: object) -> DiffusionTextConfig:
    fields = dict(
        max_bytes=20_000,
        seq_len=16,
        block_sizes=[4],
        steps=3,
        batch_size=4,
        dim=16,
        n_layers=1,
        n_heads=2,
        eval_windows=2,
        eval_samples=1,
        n_samples=2,
        prompt_bytes=8,
        gen_tokens=8,
        freecache_block=4,
        policy_updates=2,
        policy_sizes=[2, 4],
        progress_bar=False,
    )
    return DiffusionTextConfig(**(fields | kw))


def test_runs_and_samples_from_its_folder(tmp_path: Path) -> None:
    recipe = registry.recipes.get("diffusion-text")
    assert registry.recipes.provider("diffusion-text") == "diffusion"
    assert recipe.in_demo
    config = toy()
    write_recipe_file(tmp_path, "diffusion-text", config)
    result = recipe.run(config, tmp_path, lambda msg: None)
    bpb, sampling, policy = result.tables
    assert [row[0] for row in bpb.rows] == ["ar", "mdlm", "bd3-4"]
    assert all(0 < row[1] < 16 for row in bpb.rows)
    names = [row[0] for row in sampling.rows]
    assert names == [
        "ar sample",
        "mdlm",
        "bd3-4",
        "mdlm freecache (block 4)",
        "mdlm ar-guided (block 4)",
    ]
    calls = {row[0]: row[1] for row in sampling.rows}
    assert calls["ar sample"] == 1.0  # one call per token
    assert calls["bd3-4"] == (1 + 2 * 4 + 1) / 8  # prefill + 2 blocks x 4 steps + 1 KV write
    assert [row[0] for row in policy.rows] == ["fixed 2", "fixed 4", "policy"]
    fixed = {row[0]: row[1] for row in policy.rows}
    assert fixed["fixed 4"] == (1 + 2 * 4 + 1) / 8  # the ctrldiff calls of a fixed size
    assert fixed["fixed 2"] == (1 + 4 * 2 + 3) / 8
    curves = {f"{r} train loss (bits/byte)" for r in ("ar", "mdlm", "bd3-4")}
    assert set(result.curves) == curves | {"block-size policy mean reward"}
    del result.curves["block-size policy mean reward"]
    assert all(len(c) == 3 for c in result.curves.values())
    assert len(result.samples) == 5
    for run in ("ar", "mdlm", "bd3-4"):
        assert (tmp_path / run / "model.safetensors").is_file()
    again = recipe.sample(tmp_path, 3, lambda msg: None)
    assert len(again.tables[0].rows) == 5
    assert "diffusion-text samples" in again.title


def test_demo_config_and_bad_settings() -> None:
    recipe = registry.recipes.get("diffusion-text")
    demo = recipe.demo_config()
    assert demo.steps < DiffusionTextConfig().steps
    with pytest.raises(ValueError, match=r"block_sizes \[5\] do not divide seq_len=16"):
        toy(block_sizes=[4, 5])
    with pytest.raises(ValueError, match="freecache_block=3 does not divide gen_tokens=8"):
        toy(freecache_block=3)
    with pytest.raises(ConfigError, match="block_sizes"):
        build_config(DiffusionTextConfig, toy(), {"block_sizes": [3]})
