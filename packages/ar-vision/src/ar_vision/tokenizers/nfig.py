"""Frequency-guided residual VQ: the tokenizer of next-frequency image generation.

"NFIG: Autoregressive Image Generation with Next-Frequency Prediction" (Huang et al.
2025, arXiv:2503.07076 — *id unverified*). The residual pyramid of VAR (:mod:`ar_vision.tokenizers.msrvq`)
with one change in training: the decode after scale k is trained to reconstruct the image
low-pass filtered at cutoff r_k, so the first scales (few tokens) carry the low
frequencies and later scales add higher bands; the last scale reconstructs the full image.

Low-pass filter (:func:`lowpass`): an FFT box mask that keeps the frequencies (u, v), in
cycles per image, with max(|u|, |v|) <= cutoff * S / 2 (S / 2 is the Nyquist frequency),
so ``cutoff=1`` keeps everything. Default cutoff of scale k: s_k / scales[-1], the highest
frequency an s_k x s_k grid can hold. *Unverified against the paper*: the mask shape, the
cutoff schedule and the per-band loss weights are parameters (``cutoffs``,
``band_weights``), not the paper's numbers.
"""

from __future__ import annotations

import itertools

import pydantic
import torch
from torch import Tensor

from ar_core.errors import InputError
from ar_vision.tokenizers.msrvq import MultiScaleRVQ, MultiScaleRVQConfig


def frequency_radius(size: int) -> Tensor:
    """max(|u|, |v|) of each FFT bin of a size x size image, in cycles per image: (S, S)."""
    f = torch.fft.fftfreq(size).abs() * size  # (S,)
    return torch.maximum(f[:, None], f[None, :])


def lowpass(images: Tensor, cutoff: float) -> Tensor:
    """Keep the frequencies up to ``cutoff`` (a fraction of Nyquist) of (B, C, S, S) images."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"lowpass expects square images (B, C, S, S); got {tuple(images.shape)}")
    if cutoff >= 1.0:
        return images
    size = images.shape[-1]
    keep = (frequency_radius(size) <= cutoff * size / 2).to(images.device)  # (S, S) symmetric
    spectrum = torch.fft.fft2(images)  # (B, C, S, S) complex
    return torch.fft.ifft2(spectrum * keep).real


def highpass_energy(images: Tensor, cutoff: float) -> Tensor:
    """Mean (over the batch) spectral energy above ``cutoff`` (fraction of Nyquist), per pixel."""
    size = images.shape[-1]
    high = frequency_radius(size) > cutoff * size / 2  # (S, S)
    power = torch.fft.fft2(images).abs().pow(2) / (size * size)  # (B, C, S, S), Parseval
    return (power * high.to(images.device)).sum(dim=(-1, -2)).mean()


class FrequencyRVQConfig(MultiScaleRVQConfig):
    """:class:`MultiScaleRVQConfig` plus the band schedule (unverified: parameters)."""

    cutoffs: list[float] | None = None  # None: s_k / scales[-1]; the last must be 1 (full image)
    band_weights: list[float] | None = None  # None: every band's decode weighted 1

    @pydantic.model_validator(mode="after")
    def _bands(self) -> FrequencyRVQConfig:
        k = len(self.scales)
        if self.cutoffs is not None:
            c = self.cutoffs
            if (
                len(c) != k
                or any(x <= 0 for x in c)
                or any(a > b for a, b in itertools.pairwise(c))
            ):
                raise ValueError(
                    f"cutoffs must be {k} positive non-decreasing fractions of Nyquist (one "
                    f"per scale); got {c}"
                )
            if c[-1] < 1.0:
                raise ValueError(f"the last cutoff must be 1.0 (the full image); got {c[-1]}")
        if self.band_weights is not None and (
            len(self.band_weights) != k or any(w < 0 for w in self.band_weights)
        ):
            raise ValueError(
                f"band_weights must be {k} non-negative numbers; got {self.band_weights}"
            )
        return self


class FrequencyRVQ(MultiScaleRVQ):
    """MultiScaleRVQ whose decode after scale k is trained against lowpass(image, r_k)."""

    name = "nfig"
    config_cls = FrequencyRVQConfig

    @property
    def cutoffs(self) -> list[float]:
        """Cutoff of each scale as a fraction of the image's Nyquist frequency."""
        if self.cfg.cutoffs is not None:
            return list(self.cfg.cutoffs)
        return [s / self.scales[-1] for s in self.scales]

    @property
    def band_weights(self) -> list[float]:
        if self.cfg.band_weights is not None:
            return list(self.cfg.band_weights)
        return [1.0] * len(self.scales)

    def scale_targets(self, images: Tensor) -> list[tuple[float, Tensor]]:
        """(weight, lowpass(image, r_k)) for each scale k."""
        return [(w, lowpass(images, c)) for w, c in zip(self.band_weights, self.cutoffs)]
