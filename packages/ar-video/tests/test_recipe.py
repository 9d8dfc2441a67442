"""video-moving-digits at a tiny setting: trains, reports, saves, samples; bad configs."""

from pathlib import Path

import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_core.recipes import build_config
from ar_video.autoencoder import FrameAutoencoder
from ar_video.data import moving_digits
from ar_video.model import FrameTransformer
from ar_video.recipes.moving_digits import VideoMovingDigitsConfig, recipe
from ar_video.rollout import continue_clips

TINY = dict(
    train_clips=8,
    test_clips=3,
    ae_steps=5,
    steps=3,
    batch_size=4,
    n_layers=1,
    dim=32,
    horizon=3,
    frames=10,
    sample_steps=2,
    gif_clips=2,
    progress_bar=False,
)


def test_recipe_runs_and_samples(tmp_path: Path) -> None:
    config = VideoMovingDigitsConfig(**TINY)  # type: ignore[arg-type]
    result = recipe.run(config, tmp_path, lambda _: None)
    table = result.tables[0]
    assert table.columns[-1] == "h=3"
    labels = {row[0] for row in table.rows}
    assert labels == {
        "FAR",
        "ViD-GPT",
        "FAR (1 step: mean)",
        "ViD-GPT (1 step: mean)",
        "copy last frame",
        "autoencoder (truth)",
    }
    assert "far_vs_copy_last_h1_p" in result.metrics
    assert "far-mean_vs_copy_last_h1_p" in result.metrics
    gif, strip = (path for _, path in result.images)
    assert gif.suffix == ".gif" and strip.suffix == ".png"
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == config.context + config.horizon
    sampled = recipe.sample(tmp_path, 2, lambda _: None)
    assert sampled.images and "far_psnr_h1" in sampled.metrics
    # the saved pieces continue a clip from a folder-like tensor
    ae = FrameAutoencoder.load(tmp_path / "autoencoder")
    far, extra = FrameTransformer.load(tmp_path / "far")
    assert extra == {"method": "far"}
    clips = moving_digits(1, frames=10, split="test", seed=5)
    out = continue_clips("far", clips, 2, context=4, autoencoder=ae, model=far)
    assert out.shape == (1, 2, 1, 32, 32)
    with pytest.raises(InputError, match="shorter than the context of 4"):
        continue_clips("far", clips[:, :3], 2, context=4, autoencoder=ae, model=far)
    with pytest.raises(InputError, match="16x16 but the model needs 32x32"):
        continue_clips("far", torch.zeros(1, 5, 1, 16, 16), 2, context=4, autoencoder=ae, model=far)


def test_bad_configs_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="context 8 \\+ horizon 10 exceeds frames=16"):
        build_config(VideoMovingDigitsConfig, None, {"context": 8})
    with pytest.raises(ConfigError, match="min_digits=3 exceeds max_digits=2"):
        build_config(VideoMovingDigitsConfig, None, {"min_digits": 3})
    with pytest.raises(ConfigError, match="chunk=4 must be smaller than window=4"):
        build_config(VideoMovingDigitsConfig, None, {"chunk": 4})
