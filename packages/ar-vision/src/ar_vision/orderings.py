"""Image orderings: which tokens of an image are generated at which step.

``raster`` (one token a step, row-major) is ar-core's. This file adds the orderings of
the scale- and frequency-based image generators, each a factory registered through
``register_orderings`` and returning a validated :class:`ar_core.Plan`:

* ``next-scale`` – VAR, Tian et al., "Visual Autoregressive Modeling: Scalable Image
  Generation via Next-Scale Prediction" (2024, arXiv:2404.02905): the token maps of
  scales ``1x1, 2x2, ..., sxs`` are laid out scale by scale; each step is one whole scale.
* ``next-frequency`` – NFIG, Huang et al., "NFIG: Autoregressive Image Generation with
  Next-Frequency Prediction" (2025, arXiv:2503.07076): the same scale-by-scale layout,
  but the steps are the frequency bands of a frequency-guided residual tokenizer.
* ``coarse-to-fine`` – CTF, Guo et al., "Improving Autoregressive Image Generation
  through Coarse-to-Fine Token Prediction" (2025, arXiv:2503.16194): N coarse tokens one
  per step in raster order, then all N fine tokens in one step.

The shape given to ``plan`` is the token layout: ``(sum s^2,)`` for the two multi-scale
orderings, ``(2N,)`` (or ``(2, H, W)``) for coarse-to-fine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ar_core.errors import ConfigError
from ar_core.ordering import Plan

DEFAULT_SCALES = (1, 2, 4, 8)


def _check_scales(scales: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(int(s) for s in scales)
    if not out or any(s < 1 for s in out):
        raise ConfigError(f"{name}: scales must be positive side lengths, got {list(scales)}")
    return out


def scale_steps(scales: Sequence[int], shape: Sequence[int], name: str) -> Plan:
    """One step per scale over a scale-by-scale layout of ``sum(s*s)`` tokens."""
    sizes = [s * s for s in scales]
    n = math.prod(shape)
    if n != sum(sizes):
        raise ConfigError(
            f"{name} over scales {list(scales)} needs {sum(sizes)} tokens (sum of s*s, laid "
            f"out scale by scale) but the shape {tuple(shape)} holds {n}; pass the "
            f"tokenizer's scales"
        )
    return Plan(list(torch.arange(n).split(sizes)), shape)


class NextScale:
    """VAR's next-scale prediction: step k generates every token of scale k (a
    ``scales[k] x scales[k]`` map) at once, from all tokens of the coarser scales."""

    name = "next-scale"

    def __init__(self, scales: Sequence[int] = DEFAULT_SCALES) -> None:
        self.scales = _check_scales(scales, self.name)

    def plan(self, shape: Sequence[int], *, generator: torch.Generator | None = None) -> Plan:
        return scale_steps(self.scales, shape, self.name)


class NextFrequency:
    """NFIG's next-frequency prediction: step k generates the tokens of frequency band
    k of a frequency-guided residual tokenizer (band k reconstructs the image low-pass
    filtered at cutoff ``r_k``), so early, small steps fix the low frequencies and later
    ones add higher bands. The layout is the tokenizer's, band by band; ``scales`` are
    the side lengths of the band token maps."""

    name = "next-frequency"

    def __init__(self, scales: Sequence[int] = DEFAULT_SCALES) -> None:
        self.scales = _check_scales(scales, self.name)

    def plan(self, shape: Sequence[int], *, generator: torch.Generator | None = None) -> Plan:
        return scale_steps(self.scales, shape, self.name)


class CoarseToFine:
    """CTF's two stages over ``2N`` tokens: positions ``0..N-1`` hold the coarse labels
    (k-means clusters of the codebook), one per step in raster order; positions
    ``N..2N-1`` hold the fine labels, all generated in ONE final step from the coarse
    sequence. ``n`` (optional) pins N; otherwise it is half the shape's size."""

    name = "coarse-to-fine"

    def __init__(self, n: int | None = None) -> None:
        if n is not None and int(n) < 1:
            raise ConfigError(f"coarse-to-fine: n must be >= 1, got {n}")
        self.n = None if n is None else int(n)

    def plan(self, shape: Sequence[int], *, generator: torch.Generator | None = None) -> Plan:
        total = math.prod(shape)
        n = total // 2 if self.n is None else self.n
        if total != 2 * n or n < 1:
            raise ConfigError(
                f"coarse-to-fine needs 2N positions (N coarse, then N fine) but the shape "
                f"{tuple(shape)} holds {total}" + ("" if self.n is None else f" (n={self.n})")
            )
        coarse = [[i] for i in range(n)]
        return Plan([*coarse, list(range(n, 2 * n))], shape)
