"""Video data: a seeded moving-digits generator and a loader for folders of clips.

``moving_digits`` follows Moving MNIST (Srivastava et al., "Unsupervised Learning of Video
Representations using LSTMs", 2015, arXiv:1502.04681) with scikit-learn's 8x8 digits
("Optical Recognition of Handwritten Digits", UCI) upsampled and bounced around a square
canvas: each clip has 1..3 digits, each with its own start position and a velocity whose
speed lies in ``speed`` (pixels per frame) and whose direction is uniform; a digit that
would leave the canvas reflects off the wall. Digits are composited with ``max``. Train
and test clips use disjoint digit images (every 5th digit image is a test image), and
everything is drawn from ``numpy.random.default_rng(seed)`` (a different stream per split),
so a (seed, split) pair always gives the same clips.

``load_clips`` reads a folder of clips: sub-folders of frame images (one clip each, frames
in name order), a flat folder of frame images (one clip), or animated GIFs (one clip each;
``.mp4``/``.avi``/``.mov``/``.webm`` through the optional ``video-files`` extra, imageio).

Clips are float32 tensors of shape (N, F, 1, H, W) with values in [0, 1] (grey levels).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core.errors import ConfigError, InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "check_clips",
    "load_clips",
    "moving_digits",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv")
TEST_EVERY = 5  # every 5th digit image belongs to the test split


@functools.lru_cache(maxsize=1)
def _raw_digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]


def _digit_bank(split: str, digit_size: int) -> np.ndarray:
    images = _raw_digits()
    index = np.arange(images.shape[0])
    keep = index % TEST_EVERY == 0 if split == "test" else index % TEST_EVERY != 0
    x = torch.from_numpy(images[keep])[:, None]  # (n, 1, 8, 8)
    x = F.interpolate(x, size=(digit_size, digit_size), mode="bilinear", align_corners=False)
    return x[:, 0].clamp(0, 1).numpy()  # (n, s, s)


def moving_digits(
    n_clips: int,
    *,
    frames: int = 16,
    size: int = 32,
    digits: tuple[int, int] = (1, 3),
    speed: tuple[float, float] = (1.0, 3.0),
    digit_size: int | None = None,
    split: str = "train",
    seed: int = 0,
) -> Tensor:
    """``n_clips`` bouncing-digit clips, (n_clips, frames, 1, size, size) float32 in [0, 1].

    ``digits``: (min, max) digits per clip, inclusive; ``speed``: (min, max) pixels per
    frame; ``digit_size``: side of a digit in pixels (default ``size * 3 // 8``: 12 on a
    32-pixel canvas, 24 on 64).
    """
    if n_clips < 1:
        raise ConfigError(f"moving_digits: n_clips must be >= 1, got {n_clips}")
    if frames < 2:
        raise ConfigError(f"moving_digits: a clip needs frames >= 2, got {frames}")
    if split not in ("train", "test"):
        raise ConfigError(f"moving_digits: split must be 'train' or 'test', got {split!r}")
    lo, hi = digits
    if not 1 <= lo <= hi:
        raise ConfigError(
            f"moving_digits: digits must be (min, max) with 1 <= min <= max, got {digits}"
        )
    s_lo, s_hi = speed
    if not 0 <= s_lo <= s_hi:
        raise ConfigError(
            f"moving_digits: speed must be (min, max) with 0 <= min <= max, got {speed}"
        )
    d = size * 3 // 8 if digit_size is None else digit_size
    if not 1 <= d <= size:
        raise ConfigError(f"moving_digits: digit_size={d} must lie in [1, size={size}]")
    bank = _digit_bank(split, d)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    out = np.zeros((n_clips, frames, size, size), dtype=np.float32)
    room = float(size - d)  # top-left corners live in [0, room]
    for c in range(n_clips):
        for _ in range(int(rng.integers(lo, hi + 1))):
            image = bank[int(rng.integers(bank.shape[0]))]
            pos = rng.uniform(0, room, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            vel = rng.uniform(s_lo, s_hi) * np.array([np.cos(angle), np.sin(angle)])
            for f in range(frames):
                y, x = int(np.rint(pos[0])), int(np.rint(pos[1]))
                window = out[c, f, y : y + d, x : x + d]
                np.maximum(window, image, out=window)
                pos, vel = _bounce(pos + vel, vel, room)
    return torch.from_numpy(out)[:, :, None]  # (N, F, 1, H, W)


def _bounce(pos: np.ndarray, vel: np.ndarray, room: float) -> tuple[np.ndarray, np.ndarray]:
    """Reflect a position that left [0, room] back inside and flip that velocity."""
    pos, vel = pos.copy(), vel.copy()
    for axis in range(2):
        if pos[axis] < 0:
            pos[axis], vel[axis] = -pos[axis], -vel[axis]
        elif pos[axis] > room:
            pos[axis], vel[axis] = 2 * room - pos[axis], -vel[axis]
        pos[axis] = min(max(pos[axis], 0.0), room)
    return pos, vel


# -- checks ---------------------------------------------------------------------------------


def check_clips(clips: Tensor, *, size: int | None = None, min_frames: int = 1) -> Tensor:
    """``clips`` itself when it is (N, F, 1, H, W) float with H = W (= ``size`` when given)
    and F >= ``min_frames``; else an InputError naming the problem and the fix."""
    if not isinstance(clips, Tensor) or clips.dim() != 5:
        shape = tuple(clips.shape) if isinstance(clips, Tensor) else type(clips).__name__
        raise InputError(
            f"clips must be a (N, F, 1, H, W) tensor, got {shape}; add a batch dimension with "
            f"clip[None] for one clip"
        )
    n, f, c, h, w = clips.shape
    if not clips.dtype.is_floating_point:
        raise InputError(
            f"clips must be float in [0, 1], got dtype {clips.dtype}; use x.float() / 255"
        )
    if c != 1:
        raise InputError(f"clips must have 1 (grey) channel, got {c}; convert frames to grey")
    if h != w or (size is not None and h != size):
        want = f"{size}x{size}" if size is not None else "square"
        raise InputError(
            f"frames are {h}x{w} but the model needs {want} frames; resize the frames "
            f"(load_clips(..., size={size or max(h, w)}))"
        )
    if f < min_frames:
        raise InputError(
            f"clips have {f} frames but at least {min_frames} are needed (the context plus "
            f"one frame to predict); pass longer clips or a shorter context"
        )
    if n == 0:
        raise InputError("clips is empty (N = 0)")
    return clips


# -- folders --------------------------------------------------------------------------------


def _grey(image: object, path: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    assert isinstance(image, Image.Image)
    grey = image.convert("L")
    if size is not None and grey.size != (size, size):
        raise InputError(
            f"{path}: frame is {grey.size[0]}x{grey.size[1]} but size={size} was asked for; "
            f"resize the frames to {size}x{size} or pass size={grey.size[1]}"
        )
    return np.asarray(grey, dtype=np.float32) / 255.0


def _read_image(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return _grey(image, path, size)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable image ({exc}); remove or replace it") from None


def _read_gif(path: Path, size: int | None) -> list[np.ndarray]:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return [_grey(frame.copy(), path, size) for frame in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable GIF ({exc}); remove or replace it") from None


def _read_video(path: Path, size: int | None) -> list[np.ndarray]:
    try:
        import imageio.v3 as iio
    except ImportError:
        raise InputError(
            f"{path}: reading {path.suffix} files needs imageio; install the extra "
            f"(pip install 'ar-video[video-files]') or convert the clip to a GIF"
        ) from None
    from PIL import Image

    try:
        frames = iio.imread(path)
    except Exception as exc:  # imageio raises many types for a bad file
        raise InputError(f"{path}: not a readable video ({exc}); remove or replace it") from None
    return [_grey(Image.fromarray(np.asarray(fr)), path, size) for fr in frames]


def _frames_of(items: Sequence[Path], size: int | None) -> list[np.ndarray]:
    return [_read_image(p, size) for p in items]


def load_clips(path: str | Path, *, size: int | None = None, frames: int | None = None) -> Tensor:
    """Clips from a folder, (N, F, 1, H, W) float32 in [0, 1].

    ``path`` holds sub-folders of frame images (one clip each), frame images (one clip),
    or GIF / video files (one clip each). ``size``: the frame side every frame must have
    (None: that of the first frame). ``frames``: keep the first ``frames`` of each clip
    (None: the shortest clip's length); a clip with fewer frames is an error naming it.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; pass a folder of clips")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    clips: list[tuple[Path, list[np.ndarray]]] = []
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        clips.append((root, _frames_of(loose, size)))
    for p in entries:
        if p.is_dir():
            images = sorted(
                q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
            )
            if images:
                clips.append((p, _frames_of(images, size)))
        elif p.suffix.lower() == ".gif":
            clips.append((p, _read_gif(p, size)))
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            clips.append((p, _read_video(p, size)))
    if not clips:
        raise InputError(
            f"{root} holds no clips: put frame images ({', '.join(IMAGE_SUFFIXES)}) in "
            f"sub-folders, or GIF / video files, in it"
        )
    side = clips[0][1][0].shape
    for where, fr in clips:
        if fr[0].shape != side or any(x.shape != fr[0].shape for x in fr):
            bad = next(x.shape for x in fr if x.shape != side)
            raise InputError(
                f"{where}: frames are {bad[1]}x{bad[0]} but the first clip's are "
                f"{side[1]}x{side[0]}; resize every frame to one size"
            )
        if side[0] != side[1]:
            raise InputError(f"{where}: frames are {side[1]}x{side[0]}; square frames are needed")
    length = min(len(fr) for _, fr in clips) if frames is None else frames
    for where, fr in clips:
        if len(fr) < length:
            raise InputError(
                f"{where}: {len(fr)} frames, fewer than the {length} asked for; pass "
                f"frames={len(fr)} or remove the clip"
            )
    data = np.stack([np.stack(fr[:length]) for _, fr in clips])  # (N, F, H, W)
    return torch.from_numpy(data)[:, :, None].contiguous()
