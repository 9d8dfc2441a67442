"""Recipe diffusion-2d: registered and in the demo, a tiny run writes the table (one row
per method and step count, honest call counts), the scatter PNG and the models; bad
settings are one-line errors."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch

from ar_core import registry
from ar_core.errors import ConfigError
from ar_core.recipes import build_config
from ar_diffusion.recipes.two_d import Diffusion2DConfig, recipe, scatter_png


def test_registered_and_in_demo() -> None:
    assert registry.recipes.get("diffusion-2d") is recipe and recipe.in_demo
    assert isinstance(recipe.demo_config(), Diffusion2DConfig)


def test_tiny_run(tmp_path: Path) -> None:
    config = Diffusion2DConfig(
        updates=3,
        steps=[1, 2],
        width=16,
        depth=1,
        head_width=8,
        head_steps=2,
        fhtm_width=16,
        fhtm_tokens=64,
        samples=40,
        progress_bar=False,
    )
    result = recipe.run(config, tmp_path, progress=lambda msg: None)
    rows = result.tables[0].rows
    assert [r[:4] for r in rows] == [
        ["DTM", 1, 1, 2],
        ["DTM", 2, 2, 4],
        ["ARTM", 1, 2, 4],
        ["ARTM", 2, 4, 8],
        ["FHTM", 1, 2, 4],
        ["FHTM", 2, 4, 8],
        ["Euler FM", 1, 1, 0],
        ["Euler FM", 2, 2, 0],
    ]
    assert all(r[4] > 0 for r in rows)
    png = result.images[0][1].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    for method in ("dtm", "artm", "fhtm", "fm"):
        assert (tmp_path / f"{method}.pt").exists()


def test_scatter_png_pixels(tmp_path: Path) -> None:
    """The decoded PNG has the panel layout and a black pixel where each point falls."""
    pts = torch.tensor([[0.0, 0.0], [-3.0, 3.0]])
    path = scatter_png([[pts, pts[:1]]], tmp_path / "p.png", size=11, lim=3.0)
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (2 * 15 + 4, 19)
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    img = [raw[r * (width + 1) + 1 : (r + 1) * (width + 1)] for r in range(height)]
    assert img[4 + 5][4 + 5] == 0 and img[4][4] == 0  # centre and top-left of panel 0
    assert img[4 + 5][4 + 15 + 5] == 0 and img[4][4 + 15] == 245  # panel 1: centre only


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="steps"):
        build_config(Diffusion2DConfig, None, {"steps": [0, 2]})
    with pytest.raises(ConfigError, match="methods"):
        build_config(Diffusion2DConfig, None, {"methods": []})
    with pytest.raises(ConfigError, match="data"):
        build_config(Diffusion2DConfig, None, {"data": "spirals"})
