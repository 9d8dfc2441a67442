"""Digits classifier, class accuracy, Fréchet distance, bits per dim and image grids.

The classifier is trained into a temporary cache folder (AR_CACHE_DIR) once per module."""

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from ar_core.errors import InputError
from ar_vision import metrics
from ar_vision.data import load_digits


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        metrics._cached_classifier.cache_clear()
        yield
    metrics._cached_classifier.cache_clear()


def test_classifier_accuracy_on_test_split() -> None:
    x, y = load_digits(8, "test")
    assert metrics.class_accuracy(x, y) >= 0.95  # measured 0.964
    x16, y16 = load_digits(16, "test")  # downsampled to 8x8 first
    assert metrics.class_accuracy(x16, y16) >= 0.9


def test_classifier_cached_and_retrained_when_corrupted() -> None:
    metrics.digits_classifier()
    file = metrics._cache_file()
    assert file.is_file() and file.parent == metrics.cache_dir()
    x, _ = load_digits(8, "test")
    before = metrics.digits_classifier()(x)
    metrics._cached_classifier.cache_clear()
    assert torch.equal(metrics.digits_classifier()(x), before)  # read back from the file
    file.write_bytes(b"garbage")
    metrics._cached_classifier.cache_clear()
    with pytest.warns(UserWarning, match="retraining"):
        model = metrics.digits_classifier()
    assert torch.equal(model(x), before)  # deterministic training
    assert file.stat().st_size > 1000


def test_frechet_identical_sets_near_zero() -> None:
    x, _ = load_digits(8, "test")
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    noisy = (x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert metrics.frechet_distance(x, noisy) > 1.0


def test_frechet_gaussians_analytic() -> None:
    # exact formula: diagonal covariances commute, tr((A B)^1/2) = sum sqrt(a_i b_i)
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 2.0, 0.5]), np.array([4.0, 0.5, 0.5])
    expected = float(((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = metrics.gaussian_frechet(mu_a, np.diag(a), mu_b, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-9)
    # samples of shifted Gaussians with a shared full covariance: distance -> |shift|^2
    g = torch.Generator().manual_seed(0)
    n, d = 20000, 4
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    shift = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    fa = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    fb = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift
    analytic = float(shift @ shift)  # 5.25
    # sampling error of the mean term ~ sqrt(2 * 4 * |shift|^2 * ||cov|| / n): well below 0.3
    assert metrics.frechet_from_features(fa, fb) == pytest.approx(analytic, abs=0.3)


def test_frechet_symmetric_and_errors() -> None:
    g = torch.Generator().manual_seed(1)
    fa, fb = torch.randn(200, 3, generator=g), torch.randn(300, 3, generator=g) * 2
    assert metrics.frechet_from_features(fa, fb) == pytest.approx(
        metrics.frechet_from_features(fb, fa), rel=1e-6
    )
    with pytest.raises(InputError, match="at least 2"):
        metrics.frechet_from_features(fa[:1], fb)
    with pytest.raises(InputError, match="equal F"):
        metrics.frechet_from_features(fa, fb[:, :2])


def test_bits_per_dim() -> None:
    assert metrics.bits_per_dim(64 * math.log(2), 64) == pytest.approx(1.0)
    assert metrics.bits_per_dim(0.0, 10) == 0.0
    with pytest.raises(InputError):
        metrics.bits_per_dim(1.0, 0)


def test_save_grid(tmp_path) -> None:
    x, y = load_digits(8, "test")
    path = metrics.save_grid(x[:10], tmp_path / "sub" / "grid.png", nrow=4, labels=y[:10])
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "L"
        # 4 columns of 64 + 2 px, 3 rows of 64 + 2 + 12 (label) px, plus the outer border
        assert img.size == (4 * 66 + 2, 3 * 78 + 2)
        cell = np.asarray(img)[2 + 12 : 2 + 12 + 64, 2 : 2 + 64]
    expected = np.kron((x[0, 0].numpy() * 255).round(), np.ones((8, 8)))
    assert np.array_equal(cell, expected.astype(np.uint8))
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary files left
    with pytest.raises(InputError, match="labels"):
        metrics.save_grid(x[:3], tmp_path / "g.png", labels=["a"])
