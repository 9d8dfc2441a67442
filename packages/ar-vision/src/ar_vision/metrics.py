"""Image metrics on digits: a small classifier, class accuracy, a Fréchet distance on its
features, bits per dimension, and image grids.

* ``frechet_distance``: the FID recipe ("GANs Trained by a Two Time-Scale Update Rule
  Converge to a Local Nash Equilibrium", Heusel et al. 2017, arXiv:1706.08500) with the
  penultimate features of a digits classifier in place of Inception-v3:
  ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.
* The classifier: an MLP 64 -> 128 -> 64 -> 10 on 8x8 digits (other sizes are
  area-downsampled to 8x8 first), trained once with a fixed seed and cached in
  ``$AR_CACHE_DIR/vision`` (default ``~/.cache/ar/vision``) under a hash of its
  architecture, training settings and the data (test accuracy 0.964); written atomically
  with a sha256 of its tensors in the file's metadata, retrained when the file is missing,
  unreadable or does not match its checksum (e.g. weights zeroed in place).

Notation: N images, F = 64 feature dims.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pydantic
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.checkpoint import atomic_write_bytes, tensors_digest
from ar_core.errors import InputError
from ar_vision.data import load_digits, resize


class ClassifierSettings(pydantic.BaseModel):
    """Everything that changes the trained classifier (all of it goes into the cache key)."""

    model_config = pydantic.ConfigDict(frozen=True)

    arch: str = "mlp-64-128-64-10-silu"  # a new architecture must change this name
    steps: int = 400  # ~36 epochs of 1,438 images: test accuracy 0.964 in a few seconds
    batch_size: int = 128
    lr: float = 5e-3  # AdamW; stable for this MLP
    weight_decay: float = 1e-4
    seed: int = 0  # initial weights and batch order
    split_seed: int = 0  # the train/test split of load_digits
    format: int = 1  # bump when the cache file layout changes


SETTINGS = ClassifierSettings()
MIN_ACCURACY = 0.95


class DigitsClassifier(nn.Module):
    """(N, 1, S, S) digits in [0, 1] -> logits (N, 10); ``features`` gives (N, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64), nn.SiLU())
        self.head = nn.Linear(64, 10)

    def _flat(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
            raise InputError(f"expected square grey images (N, 1, S, S); got {tuple(images.shape)}")
        if images.shape[-1] % 8:
            raise InputError(f"image side must be a multiple of 8; got {images.shape[-1]}")
        return resize(images.float(), 8, "area").flatten(1)  # (N, 64)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate activations (N, F)."""
        return self.body(self._flat(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))  # (N, 10)


def cache_dir() -> Path:
    return Path(os.environ.get("AR_CACHE_DIR", Path.home() / ".cache" / "ar")) / "vision"


def _cache_file() -> Path:
    x, _ = load_digits(8, "all")
    data_hash = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
    key = json.dumps({**SETTINGS.model_dump(), "data": data_hash}, sort_keys=True)
    return (
        cache_dir()
        / f"digits-classifier-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    )


def train_classifier() -> tuple[DigitsClassifier, float]:
    """Train the classifier from scratch (deterministic); returns it and its test accuracy."""
    s = SETTINGS
    x, y = load_digits(8, "train", seed=s.split_seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = DigitsClassifier()
    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    with torch.enable_grad():  # callers may run under no_grad
        for _ in range(s.steps):
            rows = torch.randint(x.shape[0], (s.batch_size,), generator=gen)  # (batch,)
            loss = F.cross_entropy(model(x[rows]), y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = load_digits(8, "test", seed=s.split_seed)
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    return model, accuracy


def _read_cached(file: Path) -> DigitsClassifier | None:
    from safetensors.torch import load

    if not file.is_file():
        return None
    try:
        data = file.read_bytes()
        tensors = load(data)
        (n,) = struct.unpack("<Q", data[:8])
        stored = json.loads(data[8 : 8 + n]).get("__metadata__", {}).get("sha256")
        model = DigitsClassifier()
        model.load_state_dict(tensors, strict=True)
    except Exception as exc:  # corrupted or foreign file: retrain
        warnings.warn(
            f"the cached digits classifier {file} is unreadable ({exc}); retraining", stacklevel=3
        )
        return None
    if stored != tensors_digest(tensors):  # damaged weights of the right size, or no checksum
        warnings.warn(
            f"the cached digits classifier {file} does not match its checksum (damaged or "
            f"written by an older version); retraining",
            stacklevel=3,
        )
        return None
    return model.eval()


@functools.lru_cache(maxsize=1)
def _cached_classifier(file: Path) -> DigitsClassifier:
    from safetensors.torch import save

    model = _read_cached(file)
    if model is None:
        model, accuracy = train_classifier()
        if accuracy < MIN_ACCURACY:  # a guard on the settings above, not on the user
            raise RuntimeError(f"the digits classifier reached only {accuracy:.3f} test accuracy")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        meta = {"test_accuracy": f"{accuracy:.4f}", "sha256": tensors_digest(state)}
        atomic_write_bytes(file, save(state, metadata=meta))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def digits_classifier() -> DigitsClassifier:
    """The cached classifier (trained on first use, a few seconds)."""
    return _cached_classifier(_cache_file())


def _check_images(images: Tensor, who: str, channels: tuple[int, ...] = (1,)) -> None:
    if images.dim() != 4 or images.shape[1] not in channels:
        c = " or ".join(str(x) for x in channels)
        raise InputError(f"{who}: images must be (N, {c}, S, S); got {tuple(images.shape)}")


@torch.no_grad()
def class_accuracy(images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` (N, 1, S, S) that the classifier assigns to ``labels`` (N,)."""
    _check_images(images, "class_accuracy")
    if labels.shape != (images.shape[0],):
        raise InputError(
            f"class_accuracy: labels must be ({images.shape[0]},); got {tuple(labels.shape)}"
        )
    predicted = digits_classifier()(images.cpu()).argmax(1)
    return float((predicted == labels.cpu()).float().mean())


def gaussian_frechet(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b)."""
    diff = mu_a - mu_b
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise as in the FID code
        eps = 1e-6 * np.eye(cov_a.shape[0])
        covmean = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part: {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real  # round-off gives tiny imaginary parts
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_from_features(feat_a: Tensor, feat_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, F), (N_b, F)."""
    if feat_a.dim() != 2 or feat_b.dim() != 2 or feat_a.shape[1] != feat_b.shape[1]:
        raise InputError(
            f"features must be (N, F) with equal F; got {tuple(feat_a.shape)}, {tuple(feat_b.shape)}"
        )
    if min(feat_a.shape[0], feat_b.shape[0]) < 2:
        raise InputError("frechet distance needs at least 2 samples per set")
    a, b = feat_a.double().cpu().numpy(), feat_b.double().cpu().numpy()
    return gaussian_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


@torch.no_grad()
def frechet_distance(images_a: Tensor, images_b: Tensor) -> float:
    """Fréchet distance between two image sets (N, 1, S, S) on the classifier's features."""
    _check_images(images_a, "frechet_distance")
    _check_images(images_b, "frechet_distance")
    model = digits_classifier()
    return frechet_from_features(model.features(images_a.cpu()), model.features(images_b.cpu()))


def bits_per_dim(nll_nats_total: float, num_dims: int) -> float:
    """A total negative log-likelihood in nats over ``num_dims`` dimensions, in bits per dim."""
    if num_dims <= 0:
        raise InputError(f"num_dims must be positive; got {num_dims}")
    return float(nll_nats_total) / (num_dims * math.log(2.0))


def save_grid(
    images: Tensor,
    path: str | Path,
    nrow: int = 8,
    labels: list[str] | Tensor | None = None,
    *,
    cell: int = 64,
) -> Path:
    """Write images (N, 1, H, W) (grey) or (N, 3, H, W) (RGB) in [0, 1] as a PNG grid of ``nrow`` columns; each image is
    upscaled (nearest) to about ``cell`` pixels, with its label above it when given."""
    from PIL import Image, ImageDraw

    _check_images(images, "save_grid", (1, 3))
    n, nch, h, w = images.shape
    mode = "L" if nch == 1 else "RGB"
    if n == 0 or nrow < 1:
        raise InputError(f"save_grid needs at least one image and nrow >= 1; got {n}, {nrow}")
    if labels is not None and len(labels) != n:
        raise InputError(f"save_grid: {len(labels)} labels for {n} images")
    scale = max(1, cell // max(h, w))
    pad, text_h = 2, (12 if labels is not None else 0)
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    cw, ch = w * scale + pad, h * scale + pad + text_h
    canvas = Image.new(
        mode, (cols * cw + pad, rows * ch + pad), color=128 if nch == 1 else (128,) * 3
    )
    draw = ImageDraw.Draw(canvas)
    pixels = (images.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        x0, y0 = pad + c * cw, pad + r * ch
        array = pixels[i, 0] if nch == 1 else pixels[i].transpose(1, 2, 0)  # (H, W) or (H, W, 3)
        tile = Image.fromarray(array).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        canvas.paste(tile, (x0, y0 + text_h))
        if labels is not None:
            text = str(labels[i].item() if isinstance(labels, Tensor) else labels[i])
            draw.text((x0, y0), text, fill=255 if nch == 1 else (255,) * 3)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# -- a classifier at any size, trained on the data at hand ------------------------------------


class ImageClassifier(nn.Module):
    """An MLP on the flattened pixels of (N, C, S, S) images: C*S*S -> 256 -> 64 -> classes;
    ``features`` gives the 64 penultimate activations. Trained at the images' own size
    (:func:`train_image_classifier`), e.g. on digits upsampled to 32x32 for 32-px samples."""

    def __init__(self, channels: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.channels, self.size = channels, size
        self.body = nn.Sequential(
            nn.Linear(channels * size * size, 256), nn.SiLU(), nn.Linear(256, 64), nn.SiLU()
        )
        self.head = nn.Linear(64, num_classes)

    def features(self, images: Tensor) -> Tensor:
        expected = (self.channels, self.size, self.size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise InputError(
                f"this classifier was trained on images {expected}; got {tuple(images.shape)}"
            )
        return self.body(images.float().flatten(1))  # (N, 64)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))  # (N, classes)


def train_image_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    steps: int = 400,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> ImageClassifier:
    """Train an :class:`ImageClassifier` on ``images`` (N, C, S, S), ``labels`` (N,) with
    AdamW (weight decay 1e-4) for ``steps`` batches; deterministic given ``seed``."""
    _check_images(images, "train_image_classifier", (1, 3))
    if images.shape[0] == 0 or labels.shape != (images.shape[0],):
        raise InputError(
            f"train_image_classifier: need images (N, C, S, S) with N >= 1 and labels (N,); "
            f"got {tuple(images.shape)}, {tuple(labels.shape)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageClassifier(images.shape[1], images.shape[-1], num_classes)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(images.shape[0], (batch_size,), generator=gen)
            loss = F.cross_entropy(model(images[rows]), labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def accuracy_of(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to ``labels`` (N,)."""
    if labels.shape != (images.shape[0],):
        raise InputError(
            f"accuracy_of: labels must be ({images.shape[0]},); got {tuple(labels.shape)}"
        )
    return float((classifier(images.cpu()).argmax(1) == labels.cpu()).float().mean())


@torch.no_grad()
def frechet_on(classifier: ImageClassifier, images_a: Tensor, images_b: Tensor) -> float:
    """Fréchet distance between two image sets on ``classifier``'s features."""
    return frechet_from_features(
        classifier.features(images_a.cpu()), classifier.features(images_b.cpu())
    )


@torch.no_grad()
def pixel_frechet(images_a: Tensor, images_b: Tensor, side: int = 8) -> float:
    """Fréchet distance on the pixels area-downsampled to ``side`` x ``side`` (C*side^2
    features): a network-free comparison that needs no labels (unconditional data)."""
    _check_images(images_a, "pixel_frechet", (1, 3))
    _check_images(images_b, "pixel_frechet", (1, 3))
    a = F.adaptive_avg_pool2d(images_a.float().cpu(), side).flatten(1)
    b = F.adaptive_avg_pool2d(images_b.float().cpu(), side).flatten(1)
    return frechet_from_features(a, b)


@torch.no_grad()
def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, arXiv:1904.06991) of feature
    sets ``real`` (N, F) and ``fake`` (M, F): precision is the fraction of fake points inside
    some real point's k-NN ball (radius: distance to its k-th nearest real neighbour),
    recall the fraction of real points inside some fake point's k-NN ball."""
    if real.dim() != 2 or fake.dim() != 2 or min(real.shape[0], fake.shape[0]) <= k:
        raise InputError(
            f"precision_recall needs (N, F) and (M, F) features with N, M > k={k}; got "
            f"{tuple(real.shape)}, {tuple(fake.shape)}"
        )
    real, fake = real.double(), fake.double()

    def radii(x: Tensor) -> Tensor:  # distance to the k-th nearest other point, (N,)
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # +1: the point itself

    def covered(points: Tensor, centres: Tensor) -> float:
        inside = torch.cdist(points, centres) <= radii(centres)[None, :]
        return float(inside.any(dim=1).double().mean())

    return covered(fake, real), covered(real, fake)
