"""Recipe diffusion-digits: registered (not in the demo), a tiny run writes one table row
per generator and step count with honest network-call counts, accuracies in [0, 1], a
sample grid per generator and the models; the patch layout round-trips; bad settings and a
missing ar-vision are one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ar_core import registry
from ar_core.errors import ConfigError
from ar_core.recipes import build_config
from ar_diffusion.recipes.digits import DiffusionDigitsConfig, from_patches, recipe, to_patches


def test_registered_not_in_demo() -> None:
    assert registry.recipes.get("diffusion-digits") is recipe and not recipe.in_demo
    assert isinstance(recipe.demo_config(), DiffusionDigitsConfig)


def test_patches_round_trip() -> None:
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    tok = to_patches(img)
    torch.testing.assert_close(tok[0, 1], torch.tensor([2.0, 3.0, 10.0, 11.0]))
    torch.testing.assert_close(tok[0, 4], torch.tensor([16.0, 17.0, 24.0, 25.0]))
    torch.testing.assert_close(from_patches(tok), img, rtol=0, atol=0)


def test_tiny_run(tmp_path: Path) -> None:
    config = DiffusionDigitsConfig(
        updates=2,
        steps=[1, 2],
        arflow_images=2,
        batch_size=4,
        width=16,
        layers=1,
        fm_width=16,
        fm_depth=1,
        samples_per_class=1,
        progress_bar=False,
    )
    result = recipe.run(config, tmp_path, progress=lambda msg: None)
    rows = result.tables[0].rows
    # calls per image: ACDiT nb * steps + nb - 1 commits; ARFlow n; flow matching steps
    assert [(r[0], r[3]) for r in rows] == [
        ("test images", 0),
        ("ACDiT (block 1)", 16 + 15),
        ("ACDiT (block 1)", 32 + 15),
        ("ACDiT (block 4)", 4 + 3),
        ("ACDiT (block 4)", 8 + 3),
        ("ACDiT (block 16)", 1),
        ("ACDiT (block 16)", 2),
        ("ARFlow", 2),
        ("flow matching", 1),
        ("flow matching", 2),
    ]
    assert rows[0][4] > 0.9  # the classifier on real test digits
    assert all(0 <= r[4] <= 1 and r[5] >= 0 for r in rows)
    assert len(result.images) == 5
    for _, png in result.images:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method in ("acdit-1", "acdit-4", "acdit-16", "arflow", "fm"):
        assert (tmp_path / f"{method}.pt").exists()


def test_bad_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps"):
        build_config(DiffusionDigitsConfig, None, {"steps": [0]})
    with pytest.raises(ConfigError, match="pair layout needs an even count"):
        build_config(DiffusionDigitsConfig, None, {"arflow_images": 5, "arflow_chunk": 2})
    with pytest.raises(ConfigError, match="fewer images than one ARFlow sequence"):
        build_config(DiffusionDigitsConfig, None, {"batch_size": 4})
    with pytest.raises(ConfigError, match="methods"):
        build_config(DiffusionDigitsConfig, None, {"methods": ["fm", "fm"]})
    monkeypatch.setitem(sys.modules, "ar_vision", None)  # import ar_vision -> ImportError
    with pytest.raises(ConfigError, match=r"ar-diffusion\[vision\]"):
        recipe.run(DiffusionDigitsConfig(updates=1), tmp_path, progress=lambda msg: None)
