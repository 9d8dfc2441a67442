"""De novo peptide sequencing (CrossNovo-style) in ar-text.

It lives in ar-text because it is sequence generation over a residue vocabulary: the
spectrum is the condition, the peptide the sequence, and the AR decoder is decoded by beam
search like any ar-text model. See :mod:`ar_text.bio.crossnovo`.
"""

from ar_text.bio.crossnovo import (
    CrossNovo,
    CrossNovoConfig,
    SpectrumConfig,
    aa_match,
    b_ions,
    decode_tokens,
    encode_peptide,
    residue_masses,
    synthetic_batch,
    y_ions,
)

__all__ = [
    "CrossNovo",
    "CrossNovoConfig",
    "SpectrumConfig",
    "aa_match",
    "b_ions",
    "decode_tokens",
    "encode_peptide",
    "residue_masses",
    "synthetic_batch",
    "y_ions",
]
