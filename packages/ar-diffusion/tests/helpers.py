"""Tiny ar_core Transformers with one extra id for [MASK]."""

from __future__ import annotations

import torch

from ar_core.model import Transformer, TransformerConfig


def tiny_model(data_vocab: int = 11, *, seed: int = 0, sharp: float = 1.0) -> Transformer:
    """A random 2-layer model over ``data_vocab`` real tokens plus [MASK] (the last id);
    ``sharp`` scales the output head so the predictions are far from uniform."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=data_vocab + 1, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.output.weight.mul_(sharp)
    return model
