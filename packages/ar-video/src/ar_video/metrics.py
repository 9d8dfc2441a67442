"""Next-frame metrics by horizon, the copy-last-frame baseline, and pictures of rollouts.

MSE, PSNR and SSIM (Wang et al., "Image Quality Assessment: From Error Visibility to
Structural Similarity", 2004) come from scikit-image (``skimage.metrics``) with
``data_range=1`` on frames in [0, 1]. Horizon h is the h-th frame after the context.

Notation: N clips, H horizons, S frame side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from ar_core.errors import InputError

__all__ = [
    "by_horizon",
    "copy_last",
    "per_clip_metrics",
    "save_rollout_gif",
    "save_strip",
    "sign_test",
]


def copy_last(context: Tensor, n_new: int) -> Tensor:
    """The baseline: the last context frame repeated, (N, n_new, 1, S, S)."""
    return context[:, -1:].expand(-1, n_new, -1, -1, -1).clone()


def per_clip_metrics(pred: Tensor, target: Tensor) -> dict[str, np.ndarray]:
    """``mse``, ``psnr``, ``ssim`` of every clip and horizon, each (N, H), for frames
    ``pred`` and ``target`` (N, H, 1, S, S) in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if pred.shape != target.shape:
        raise InputError(
            f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape"
        )
    p = pred.clamp(0, 1).double().numpy()[:, :, 0]  # (N, H, S, S)
    t = target.clamp(0, 1).double().numpy()[:, :, 0]
    n, h = p.shape[:2]
    mse = ((p - t) ** 2).mean(axis=(2, 3))
    psnr = np.empty((n, h))
    ssim = np.empty((n, h))
    win = min(7, p.shape[-1] - (1 - p.shape[-1] % 2))  # odd, at most the frame side
    for i in range(n):
        for j in range(h):
            psnr[i, j] = (
                peak_signal_noise_ratio(t[i, j], p[i, j], data_range=1.0)
                if mse[i, j] > 0
                else 100.0  # identical frames: PSNR is infinite; 100 dB stands for it
            )
            ssim[i, j] = structural_similarity(t[i, j], p[i, j], data_range=1.0, win_size=win)
    return {"mse": mse, "psnr": psnr, "ssim": ssim}


def by_horizon(metrics: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """The mean over clips of every metric, one value per horizon."""
    return {k: [float(x) for x in v.mean(axis=0)] for k, v in metrics.items()}


def _tile(rows: list[list[Tensor]], scale: int) -> np.ndarray:
    """Frames (1, S, S) laid out as a grid: rows of equal length, 2-pixel grey gutters."""
    s = rows[0][0].shape[-1]
    gap = 2
    h = len(rows) * (s + gap) - gap
    w = len(rows[0]) * (s + gap) - gap
    canvas = np.full((h, w), 0.5, dtype=np.float32)
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            y, x = r * (s + gap), c * (s + gap)
            canvas[y : y + s, x : x + s] = frame[0].clamp(0, 1).numpy()
    img = (canvas * 255).round().astype(np.uint8)
    return np.kron(img, np.ones((scale, scale), dtype=np.uint8))


def save_rollout_gif(
    videos: list[Tensor], path: Path, *, scale: int = 3, duration_ms: int = 200
) -> Path:
    """An animated GIF of several (N, F, 1, S, S) videos side by side (one column per
    video, one row per clip)."""
    n_frames = videos[0].shape[1]
    images = []
    for f in range(n_frames):
        rows = [[v[i, f] for v in videos] for i in range(videos[0].shape[0])]
        images.append(Image.fromarray(_tile(rows, scale)))
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def save_strip(videos: list[Tensor], path: Path, *, scale: int = 3) -> Path:
    """A PNG with one row per video of frames (F, 1, S, S) side by side."""
    rows = [list(v.unbind(0)) for v in videos]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_tile(rows, scale)).save(path)
    return path


def sign_test(better: np.ndarray, worse: np.ndarray) -> tuple[int, int, float]:
    """One-sided exact sign test of paired errors: H1 says ``better`` < ``worse`` more
    often than not. Returns (wins, pairs without ties, p-value = P(Binomial(n, 1/2) >=
    wins))."""
    from math import comb

    diff = np.asarray(worse) - np.asarray(better)
    wins, n = int((diff > 0).sum()), int((diff != 0).sum())
    p = sum(comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0
    return wins, n, float(p)
