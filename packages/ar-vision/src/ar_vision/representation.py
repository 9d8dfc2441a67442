"""How an image becomes the token sequence a step model generates, for one ordering.

The survey's three levels (Xiong et al., "Autoregressive Models in Vision: A Survey",
2024, arXiv:2411.05902) differ only here: pixels (a (S, S) grid of grey levels), VQ
tokens (a (h, w) grid of codes) or a scale-by-scale stack of codes (``(sum s^2,)``).
Coarse-to-fine (CTF, Guo et al. 2025, arXiv:2503.16194) doubles the sequence: N coarse
labels (ids ``V + c``) then the N fine codes (ids ``< V``), and constrains sampling:
coarse positions take coarse ids only, the fine code at position ``i`` must lie in the
cluster chosen at coarse position ``i``.

``Representation.allowed`` is that constraint as a boolean mask; it is ``None`` for
every representation without one. :func:`factorised_nll` is the baseline every model
must beat: an independent categorical per position, fitted by counting with Laplace
smoothing.

Notation: B images, N tokens of the sequence, V token vocabulary, m tokens of one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ar_core import registry
from ar_core.errors import ConfigError
from ar_core.ordering import Ordering, Plan

# (step positions (m,), tokens so far (B, N), -1 = not sampled) -> allowed ids (B, m, V)
Allowed = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Representation:
    """A fitted tokenizer seen as a sequence of ``shape`` over ``vocab_size`` ids."""

    tokenizer: Any  # an ar_vision ImageTokenizer
    shape: tuple[int, ...]
    vocab_size: int
    coarse_fine: bool = False  # the CTF layout: N coarse labels, then N fine codes

    @classmethod
    def of(cls, tokenizer: Any) -> Representation:
        """The natural layout of ``tokenizer``: a grid for pixels and single-scale VQ, the
        scale-by-scale stack for multi-scale ones, coarse + fine for a CTF codebook."""
        n = int(tokenizer.token_count)
        if hasattr(tokenizer, "to_coarse"):
            return cls(
                tokenizer, (2 * n,), tokenizer.vocab_size + tokenizer.coarse_vocab_size, True
            )
        if hasattr(tokenizer, "scales"):
            return cls(tokenizer, (n,), tokenizer.vocab_size)
        side = math.isqrt(n)
        shape = (side, side) if side * side == n else (n,)
        return cls(tokenizer, shape, tokenizer.vocab_size)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.shape)

    def ordering(self, name: str) -> Ordering:
        """The registered ordering ``name``; multi-scale orderings get the tokenizer's scales."""
        factory = registry.orderings.get(name)
        if name in ("next-scale", "next-frequency"):
            if not hasattr(self.tokenizer, "scales"):
                raise ConfigError(
                    f"ordering {name!r} needs a multi-scale tokenizer (msrvq or nfig); "
                    f"{self.tokenizer.name!r} has no scales"
                )
            ordering: Ordering = factory(scales=self.tokenizer.scales)
            return ordering
        ordering = factory()
        return ordering

    def plan(self, name: str) -> Plan:
        return self.ordering(name).plan(self.shape)

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 1, S, S) -> tokens (B, N)."""
        codes = self.tokenizer.encode(images)  # (B, n)
        if not self.coarse_fine:
            return codes
        coarse = self.tokenizer.to_coarse(codes) + self.tokenizer.vocab_size  # (B, n)
        return torch.cat([coarse, codes], dim=1)  # (B, 2n)

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens (B, N) -> images (B, 1, S, S)."""
        if self.coarse_fine:
            tokens = tokens[:, self.num_tokens // 2 :]
        return self.tokenizer.decode(tokens)

    @property
    def allowed(self) -> Allowed | None:
        return self._ctf_allowed if self.coarse_fine else None

    def _ctf_allowed(self, step: Tensor, tokens: Tensor) -> Tensor:
        """CTF: coarse positions take coarse ids; fine position ``n + i`` takes the codes
        of the cluster at coarse position ``i`` (sampled in an earlier step)."""
        n, V = self.num_tokens // 2, self.tokenizer.vocab_size
        ids = torch.arange(self.vocab_size, device=tokens.device)  # (V + C,)
        is_coarse = (step < n)[:, None]  # (m, 1)
        coarse_ok = (ids >= V).expand(step.numel(), -1)  # (m, V + C)
        fine_to_coarse = self.tokenizer.fine_to_coarse.to(tokens.device)  # (V,)
        cluster = tokens[:, (step - n).clamp(min=0)] - V  # (B, m); garbage where coarse
        fine_ok = torch.zeros(
            (tokens.shape[0], step.numel(), self.vocab_size), dtype=torch.bool, device=tokens.device
        )  # (B, m, V + C)
        fine_ok[..., :V] = fine_to_coarse[None, None, :] == cluster[..., None]
        return torch.where(is_coarse[None], coarse_ok[None], fine_ok)


def masked_log_probs(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """log-softmax of ``logits`` (..., V) over the allowed ids only (all when None)."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.log_softmax(logits.float(), dim=-1)


def factorised_nll(train: Tensor, test: Tensor, vocab_size: int) -> float:
    """Mean NLL (nats per token) of ``test`` (B, N) under an independent categorical per
    position fitted to ``train`` (B', N) by counting, with Laplace (add-one) smoothing."""
    n = train.shape[1]
    counts = torch.ones(n, vocab_size)  # (N, V): add-one
    counts.scatter_add_(1, train.T.contiguous(), torch.ones(train.T.shape))
    log_p = (counts / counts.sum(1, keepdim=True)).log()  # (N, V)
    return float(-log_p.gather(1, test.T.contiguous()).mean())
