"""ar-decoding: lossless and relaxed accelerated decoding strategies."""

__version__ = "0.1.0"
