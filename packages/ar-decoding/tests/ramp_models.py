"""A tiny base trained on ramps ``x_{t+1} = x_t + 3 (mod 16)`` (a predictable future), shared
by the Medusa and MTP tests (trained once per test process)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
from helpers import tiny

from ar_core.model import Transformer

VOCAB, STEP, SEQ = 16, 3, 24


def ramps(seq_len: int = SEQ) -> Callable[[torch.Generator, int], torch.Tensor]:
    """``sample(generator, batch_size) -> (B, seq_len)`` ramps from random starts."""

    def sample(gen: torch.Generator, batch_size: int) -> torch.Tensor:
        start = torch.randint(0, VOCAB, (batch_size, 1), generator=gen)
        return (start + STEP * torch.arange(seq_len)) % VOCAB

    return sample


@functools.cache
def _trained(layers: int = 1) -> Transformer:
    """A ``layers``-block base: 60 AdamW steps on ramps (seeded)."""
    torch.manual_seed(0)
    base = tiny(VOCAB, dim=32, layers=layers)
    opt = torch.optim.AdamW(base.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    data = ramps()
    base.train()
    for _ in range(60):
        x = data(gen, 16)
        loss = torch.nn.functional.cross_entropy(
            base(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return base.eval()


def ramp_base(layers: int = 1) -> Transformer:
    """A fresh copy of the trained base of ``layers`` blocks (callers may wrap it in
    place)."""
    return copy.deepcopy(_trained(layers))
