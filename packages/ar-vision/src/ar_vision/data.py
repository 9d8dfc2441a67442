"""Image data that is always there: scikit-learn's digits; and a loader for a folder of images.

``load_digits`` reads the 1,797 8x8 handwritten digits that ship with scikit-learn
("Optical Recognition of Handwritten Digits", Alpaydin & Kaynak 1998, UCI), values
0..16 scaled to [0, 1] by /16. Larger sizes are upsampled with bilinear interpolation
(``align_corners=False``; smooth strokes, values stay in [0, 1]) or ``resample="nearest"``
(blocky, keeps the 17 grey levels exactly). The train/test split is stratified by class and
deterministic: 20% of every class (rounded) goes to the test split, chosen by a permutation
from ``numpy.random.default_rng(seed)``; the rest is the training split, in the original order.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core.errors import ConfigError, InputError

TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm")


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)  # (1797, 8, 8)


def split_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) row indices, each ascending; ``TEST_FRACTION`` of each class."""
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n_test = round(len(rows) * TEST_FRACTION)
        test.append(rng.permutation(rows)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def resize(images: Tensor, size: int, resample: Literal["bilinear", "nearest", "area"]) -> Tensor:
    """(N, C, H, W) -> (N, C, size, size), values kept in [0, 1]."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if resample == "bilinear":
        out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    else:
        out = F.interpolate(images, size=(size, size), mode=resample)
    return out.clamp_(0.0, 1.0)  # bilinear is a convex combination; clamp float round-off


def load_digits(
    size: int = 8,
    split: Literal["train", "test", "all"] = "train",
    seed: int = 0,
    *,
    resample: Literal["bilinear", "nearest"] = "bilinear",
) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as ``(images (N, 1, size, size) float32 in [0, 1], labels (N,) long)``.

    ``size``: 8 (native), 16 or 32 (upsampled). ``split``: "train" (1,438 images),
    "test" (359) or "all" (1,797); the split depends on ``seed`` only.
    """
    if size not in (8, 16, 32):
        raise ConfigError(f"digits come in sizes 8, 16 or 32; got size={size}")
    if split not in ("train", "test", "all"):
        raise ConfigError(f"split must be 'train', 'test' or 'all'; got {split!r}")
    if resample not in ("bilinear", "nearest"):
        raise ConfigError(f"resample must be 'bilinear' or 'nearest'; got {resample!r}")
    images, labels = _raw_digits()
    if split != "all":
        train_idx, test_idx = split_indices(labels, seed)
        rows = train_idx if split == "train" else test_idx
        images, labels = images[rows], labels[rows]
    x = torch.from_numpy(images.copy())[:, None]  # (N, 1, 8, 8)
    return resize(x, size, resample), torch.from_numpy(labels.copy())


class ImageFolder:
    """Your own images: every image file under ``root`` (sorted), resized to size x size.

    Files directly in ``root`` get label 0; with sub-folders, each sub-folder is a class
    (labels in sorted order of the folder names, ``classes`` lists them). Non-square images
    are centre-cropped to a square first. Pixel values are scaled to [0, 1].

    ``resize=False`` refuses an image that is not already ``size`` x ``size`` (naming it)
    instead of resizing it; ``skip_bad=True`` makes :meth:`load_all` skip unreadable files
    with a warning naming each (otherwise the first one is an InputError naming it).
    """

    def __init__(
        self,
        root: str | Path,
        size: int,
        grayscale: bool = True,
        *,
        resize: bool = True,
        skip_bad: bool = False,
    ) -> None:
        self.root = Path(root)
        if size < 1:
            raise ConfigError(f"size must be >= 1; got {size}")
        if not self.root.is_dir():
            raise InputError(f"no image folder at {self.root}: it does not exist or is a file")
        self.size, self.grayscale = size, grayscale
        self.resize, self.skip_bad = resize, skip_bad
        files = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise InputError(
                f"no images in {self.root}: expected files ending in {', '.join(IMAGE_SUFFIXES)}"
            )
        self.files = files
        self.classes = sorted({p.parent.relative_to(self.root).as_posix() for p in files})
        self._label = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """(image (C, size, size) float32 in [0, 1], label); C = 1 if grayscale else 3."""
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as file:
                img = file.convert("L" if self.grayscale else "RGB")
            w, h = img.size
            if not self.resize and (w, h) != (self.size, self.size):
                raise InputError(
                    f"image {path} is {w}x{h}, not {self.size}x{self.size}; resize it or "
                    f"set resize=true to resize every image to {self.size}x{self.size}"
                )
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise InputError(
                f"cannot read image {path}: {exc} (remove it, or set skip_bad=true to skip "
                f"unreadable files with a warning)"
            ) from None
        x = torch.from_numpy(array.copy())
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)  # (C, size, size)
        return x, self._label[path.parent.relative_to(self.root).as_posix()]

    def load_all(self) -> tuple[Tensor, Tensor]:
        """Every image: (images (N, C, size, size), labels (N,) long)."""
        items = []
        for i in range(len(self)):
            try:
                items.append(self[i])
            except InputError as exc:
                if not self.skip_bad or "cannot read image" not in str(exc):
                    raise
                warnings.warn(f"skipping {exc}", stacklevel=2)
        if not items:
            raise InputError(f"no readable images in {self.root}")
        images = torch.stack([x for x, _ in items])
        return images, torch.tensor([y for _, y in items], dtype=torch.long)
