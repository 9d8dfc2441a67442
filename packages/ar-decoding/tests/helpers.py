"""Tiny random models, the streamer recorder, and the exact enumerated joint distribution."""

from __future__ import annotations

import itertools

import torch
from scipy.stats import chisquare

from ar_core.model import Transformer, TransformerConfig


def tiny(vocab: int = 64, layers: int = 2, seed: int = 0, dim: int = 64) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=vocab, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, max_seq_len=128
    )
    return Transformer(cfg).eval()


def sharpen(model: Transformer, scale: float) -> Transformer:
    """Scale the output head so an untrained model's distributions are far from uniform."""
    with torch.no_grad():
        model.output.weight.mul_(scale)
    return model


class Recorder:
    def __init__(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.ended = False

    def put(self, tokens: torch.Tensor) -> None:
        self.chunks.append(tokens.clone())

    def end(self) -> None:
        self.ended = True


def exact_joint(model: Transformer, prompt: list[int], n: int) -> dict[tuple[int, ...], float]:
    """p(x_1..x_n | prompt) for every continuation, by the chain rule with full forwards."""
    V = model.vocab_size
    out = {}
    with torch.no_grad():
        for seq in itertools.product(range(V), repeat=n):
            x = torch.tensor([prompt + list(seq)])
            logp = torch.log_softmax(model(x).logits[0].double(), -1)  # (T, V)
            out[seq] = float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(seq)).exp())
    return out


def chi2_pvalue(samples: torch.Tensor, joint: dict[tuple[int, ...], float]) -> float:
    """Chi-square p-value of sampled rows (S, n) against the exact joint."""
    keys = list(joint)
    index = {k: i for i, k in enumerate(keys)}
    counts = torch.zeros(len(keys), dtype=torch.float64)
    for row in samples.tolist():
        counts[index[tuple(row)]] += 1
    probs = torch.tensor([joint[k] for k in keys], dtype=torch.float64)
    expected = probs / probs.sum() * counts.sum()
    return float(chisquare(counts.numpy(), expected.numpy()).pvalue)
