"""ar-kernels: attention backends beyond SDPA (FlexAttention, xformers, Triton)."""

__version__ = "0.1.0"
