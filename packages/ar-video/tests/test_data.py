"""The moving-digits generator and the folder loader."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ar_core.errors import ConfigError, InputError
from ar_video.data import check_clips, load_clips, moving_digits


def test_moving_digits_is_deterministic_and_shaped() -> None:
    a = moving_digits(5, frames=12, size=32, seed=3)
    b = moving_digits(5, frames=12, size=32, seed=3)
    c = moving_digits(5, frames=12, size=32, seed=4)
    assert a.shape == (5, 12, 1, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and float(a.max()) > 0.5
    assert not torch.equal(moving_digits(5, frames=12, seed=3, split="test"), a)
    big = moving_digits(2, frames=10, size=64, seed=0)
    assert big.shape == (2, 10, 1, 64, 64)


def test_speed_range_moves_digits() -> None:
    still = moving_digits(3, frames=10, speed=(0.0, 0.0), seed=1)
    assert torch.equal(still[:, 0], still[:, -1])
    moving = moving_digits(3, frames=10, speed=(2.0, 3.0), seed=1)
    diff = (moving[:, 1:] - moving[:, :-1]).abs().mean()
    assert float(diff) > 0.01


def test_number_of_digits_range() -> None:
    one = moving_digits(20, frames=2, digits=(1, 1), seed=0)
    three = moving_digits(20, frames=2, digits=(3, 3), seed=0)
    assert float(three.sum()) > 2 * float(one.sum())  # more digits, more ink


def test_generator_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="digits"):
        moving_digits(2, digits=(0, 2))
    with pytest.raises(ConfigError, match="frames"):
        moving_digits(2, frames=1)
    with pytest.raises(ConfigError, match="speed"):
        moving_digits(2, speed=(3.0, 1.0))


def _png(path: Path, side: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), value, dtype=np.uint8)).save(path)


def test_load_folders_and_gifs(tmp_path: Path) -> None:
    for c in range(2):
        for f in range(5):
            _png(tmp_path / f"clip{c}" / f"{f:03d}.png", 16, 10 * f)
    frames = [Image.fromarray(np.full((16, 16), 20 * i, dtype=np.uint8)) for i in range(6)]
    frames[0].save(tmp_path / "z.gif", save_all=True, append_images=frames[1:], duration=50)
    clips = load_clips(tmp_path)
    assert clips.shape == (3, 5, 1, 16, 16)
    assert torch.allclose(clips[0, :, 0, 0, 0], torch.arange(5) * 10 / 255.0)
    assert torch.allclose(clips[2, :, 0, 0, 0], torch.arange(5) * 20 / 255.0)
    assert load_clips(tmp_path, frames=4).shape[1] == 4


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no clips"):
        load_clips(empty)
    with pytest.raises(InputError, match="not a folder"):
        load_clips(tmp_path / "missing")
    bad = tmp_path / "sizes"
    _png(bad / "a" / "0.png", 16)
    _png(bad / "b" / "0.png", 8)
    with pytest.raises(InputError, match=r"b.*8x8"):
        load_clips(bad)
    with pytest.raises(InputError, match=r"0\.png.*size=32"):
        load_clips(bad, size=32)
    broken = tmp_path / "broken" / "c"
    broken.mkdir(parents=True)
    (broken / "0.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"0\.png.*not a readable image"):
        load_clips(tmp_path / "broken")
    short = tmp_path / "short"
    _png(short / "a" / "0.png", 8)
    with pytest.raises(InputError, match="1 frames, fewer than the 3"):
        load_clips(short, frames=3)


def test_check_clips() -> None:
    x = torch.zeros(2, 5, 1, 32, 32)
    assert check_clips(x, size=32, min_frames=5) is x
    with pytest.raises(InputError, match="16x16 but the model needs 32x32"):
        check_clips(torch.zeros(2, 5, 1, 16, 16), size=32)
    with pytest.raises(InputError, match="5 frames but at least 6"):
        check_clips(x, min_frames=6)
    with pytest.raises(InputError, match="N, F, 1, H, W"):
        check_clips(torch.zeros(5, 1, 32, 32))
