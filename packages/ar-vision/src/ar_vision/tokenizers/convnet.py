"""The small convolutional encoder and decoder shared by the learned tokenizers.

The encoder maps images (B, C, S, S) (C = 1 grey or 3 RGB) to a latent grid (B, D, S/p, S/p): two 3x3
convolutions, a p x p patchifying convolution of stride p, and a 1x1 projection to D.
The decoder mirrors it with a transposed p x p convolution and ends in a sigmoid, so its
output is always a valid image in [0, 1]. Sized for 8-32 pixel digits, not for photos
(VQGAN, Esser et al. 2021, arXiv:2012.09841, is the scaled-up version of the same idea).
"""

from __future__ import annotations

from torch import nn


def build_encoder(*, patch: int, hidden: int, dim: int, channels: int = 1) -> nn.Sequential:
    """(B, C, S, S) -> (B, dim, S/patch, S/patch); C = ``channels``."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, patch, stride=patch),  # patchify
        nn.SiLU(),
        nn.Conv2d(hidden, dim, 1),
    )


def build_decoder(*, patch: int, hidden: int, dim: int, channels: int = 1) -> nn.Sequential:
    """(B, dim, S/patch, S/patch) -> (B, C, S, S) in [0, 1]; C = ``channels``."""
    return nn.Sequential(
        nn.Conv2d(dim, hidden, 1),
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.SiLU(),
        nn.ConvTranspose2d(hidden, hidden, patch, stride=patch),  # un-patchify
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(hidden, channels, 3, padding=1),
        nn.Sigmoid(),
    )
