"""Digits loader and ImageFolder."""

import numpy as np
import pytest
import torch
from PIL import Image

from ar_core.errors import ConfigError, InputError
from ar_vision.data import ImageFolder, load_digits, split_indices


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_shapes_ranges(size: int) -> None:
    x, y = load_digits(size, "train")
    xt, yt = load_digits(size, "test")
    assert x.shape == (1438, 1, size, size) and xt.shape == (359, 1, size, size)
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10)) == set(yt.tolist())


def test_digits_native_values_are_sixteenths() -> None:
    x, _ = load_digits(8, "all")
    assert torch.equal(x * 16, torch.round(x * 16))
    nearest, _ = load_digits(16, "all", resample="nearest")
    assert torch.equal(nearest[:, :, ::2, ::2], x)


def test_split_deterministic_disjoint_stratified() -> None:
    a, ya = load_digits(8, "test", seed=3)
    b, yb = load_digits(8, "test", seed=3)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    c, _ = load_digits(8, "test", seed=4)
    assert not torch.equal(a, c)
    _, y_all = load_digits(8, "all")
    train_idx, test_idx = split_indices(y_all.numpy(), seed=3)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert len(train_idx) + len(test_idx) == len(y_all)
    assert torch.equal(ya, y_all[test_idx])
    # stratified: each class's test share is 20% (rounded)
    all_counts = np.bincount(y_all.numpy(), minlength=10)
    assert np.array_equal(np.bincount(ya.numpy(), minlength=10), np.round(all_counts * 0.2))


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="8, 16 or 32"):
        load_digits(12)
    with pytest.raises(ConfigError, match="split"):
        load_digits(8, "valid")  # type: ignore[arg-type]


def test_image_folder(tmp_path) -> None:
    for cls, value in (("ones", 255), ("zeros", 0)):
        (tmp_path / cls).mkdir()
        Image.new("L", (20, 10), color=value).save(tmp_path / cls / "a.png")
    Image.new("RGB", (12, 12), color=(255, 255, 255)).save(tmp_path / "ones" / "b.jpg")
    folder = ImageFolder(tmp_path, size=8)
    assert len(folder) == 3 and folder.classes == ["ones", "zeros"]
    images, labels = folder.load_all()
    assert images.shape == (3, 1, 8, 8) and labels.tolist() == [0, 0, 1]
    assert torch.allclose(images[0], torch.ones(1, 8, 8)) and float(images[2].max()) == 0.0
    rgb = ImageFolder(tmp_path, size=4, grayscale=False)
    assert rgb[0][0].shape == (3, 4, 4)


def test_image_folder_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="no image folder"):
        ImageFolder(tmp_path / "missing", size=8)
    with pytest.raises(InputError, match="no images in"):
        ImageFolder(tmp_path, size=8)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    folder = ImageFolder(tmp_path, size=8)
    with pytest.raises(InputError, match=r"cannot read image .*broken\.png"):
        folder.load_all()
