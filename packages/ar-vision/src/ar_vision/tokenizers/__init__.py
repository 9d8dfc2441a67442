"""Image tokenizers: images (B, 1, S, S) in [0, 1] <-> tokens (B, N).

| name    | class                | tokens for 8x8 digits        | paper                         |
|---------|----------------------|------------------------------|-------------------------------|
| pixel   | PixelTokenizer       | 64 quantised pixels          | PixelCNN, arXiv:1601.06759    |
| vqvae   | VQVAE                | 16 codes (patch 2)           | VQ-VAE, arXiv:1711.00937      |
| msrvq   | MultiScaleRVQ        | 1+4+16+64 codes, by scale    | VAR, arXiv:2404.02905         |
| nfig    | FrequencyRVQ         | as msrvq, low bands first    | NFIG (Huang et al. 2025)      |
| ctf     | CoarseFineCodebook   | a VQ tokenizer + coarse map  | CTF (Guo et al. 2025)         |
| dar     | ar_vision.dar.DARTokenizer | 4 groups of 4 codes    | D-AR, arXiv:2505.23660        |

``register`` is the body of the ``register_tokenizers`` hook (ar_vision._plugin calls it).
"""

from __future__ import annotations

from typing import Any

from ar_core.hookspecs import Register
from ar_vision.tokenizers.base import (
    ImageTokenizer,
    MultiScaleTokenizer,
    VQTokenizer,
    scale_offsets,
)
from ar_vision.tokenizers.codebook import EMACodebook, code_usage, codebook_neighbours
from ar_vision.tokenizers.ctf import CoarseFineCodebook, coarse_labels
from ar_vision.tokenizers.msrvq import MultiScaleRVQ, MultiScaleRVQConfig
from ar_vision.tokenizers.nfig import FrequencyRVQ, FrequencyRVQConfig, highpass_energy, lowpass
from ar_vision.tokenizers.pixel import PixelTokenizer
from ar_vision.tokenizers.vqvae import VQVAE, VQVAEConfig

# the VQ tokenizers a CoarseFineCodebook can wrap, by name (used when loading one)
VQ_TOKENIZERS: dict[str, Any] = {
    VQVAE.name: VQVAE,
    MultiScaleRVQ.name: MultiScaleRVQ,
    FrequencyRVQ.name: FrequencyRVQ,
}

TOKENIZERS: dict[str, Any] = {
    PixelTokenizer.name: PixelTokenizer,
    **VQ_TOKENIZERS,
    CoarseFineCodebook.name: CoarseFineCodebook,
}


def tokenizer_class(name: str) -> Any:
    """The tokenizer class registered as ``name`` (``dar`` lives in :mod:`ar_vision.dar`,
    which imports this package, so it is looked up here rather than held in TOKENIZERS)."""
    if name == "dar":
        from ar_vision.dar import DARTokenizer

        return DARTokenizer
    return TOKENIZERS[name]


def register(register: Register) -> None:
    """Register ar-vision's tokenizer classes: pixel, vqvae, msrvq, nfig, ctf, dar."""
    for name in [*TOKENIZERS, "dar"]:
        register(name, tokenizer_class(name))


__all__ = [
    "TOKENIZERS",
    "VQVAE",
    "VQ_TOKENIZERS",
    "CoarseFineCodebook",
    "EMACodebook",
    "FrequencyRVQ",
    "FrequencyRVQConfig",
    "ImageTokenizer",
    "MultiScaleRVQ",
    "MultiScaleRVQConfig",
    "MultiScaleTokenizer",
    "PixelTokenizer",
    "VQTokenizer",
    "VQVAEConfig",
    "coarse_labels",
    "code_usage",
    "codebook_neighbours",
    "highpass_energy",
    "lowpass",
    "register",
    "scale_offsets",
    "tokenizer_class",
]
