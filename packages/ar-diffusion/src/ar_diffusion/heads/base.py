"""The contract of a continuous output head, its input checks, and its step-sampler view.

A head turns the hidden state an autoregressive backbone computed for a position into a
distribution over a continuous value at that position (a latent patch, a coordinate, a
frame token):

* ``loss(hidden (..., C), target (..., d)) -> (...)``: the per-example training loss;
* ``sample(hidden (..., C), *, generator=None, steps=None) -> (..., d)``: one draw per
  example (``steps``: the head's own network calls per draw; ``None`` = its default).

:class:`HeadSampler` wraps any head as an ``ar_core.protocols.StepSampler``: given a step
model's output it samples the step's values from ``out.hidden`` (B, m, C) -> (B, m, d), so
the heads plug into ``ar_core.steps`` like the categorical sampler does. The registered
names are ``diffusion-head``, ``flow-head``, ``gmm-head`` and ``mse-head`` (each factory
takes ``head=`` and ``steps=``).

Notation: C the hidden width, d the value dimension, ``...`` any leading (batch) shape.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError
from ar_core.model import ModelOutput

__all__ = [
    "ContinuousHead",
    "HeadSampler",
    "check_hidden",
    "check_steps",
    "check_target",
    "timestep_embedding",
]


@runtime_checkable
class ContinuousHead(Protocol):
    """A per-position distribution over ``dim``-dimensional values given ``cond_dim``-wide
    hidden states (see the module docstring)."""

    dim: int
    cond_dim: int
    default_steps: int

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor: ...

    def sample(
        self, hidden: Tensor, *, generator: torch.Generator | None = None, steps: int | None = None
    ) -> Tensor: ...


def check_hidden(head: ContinuousHead, hidden: Tensor) -> None:
    """The hidden states' last dimension must be the head's ``cond_dim``."""
    if hidden.dim() < 1 or hidden.shape[-1] != head.cond_dim:
        raise InputError(
            f"{type(head).__name__}: hidden must be (..., {head.cond_dim}) (cond_dim), got "
            f"{tuple(hidden.shape)}; build the head with cond_dim = the backbone's width"
        )
    if not hidden.is_floating_point():
        raise InputError(
            f"{type(head).__name__}: hidden must be a float tensor, got {hidden.dtype}"
        )


def check_target(head: ContinuousHead, hidden: Tensor, target: Tensor) -> None:
    """``target`` (..., d) must match the hidden states' leading shape and be finite."""
    check_hidden(head, hidden)
    if target.dim() < 1 or target.shape[-1] != head.dim:
        raise InputError(
            f"{type(head).__name__}: target must be (..., {head.dim}) (the head's dim), got "
            f"{tuple(target.shape)}"
        )
    if target.shape[:-1] != hidden.shape[:-1]:
        raise InputError(
            f"{type(head).__name__}: target {tuple(target.shape)} and hidden "
            f"{tuple(hidden.shape)} must share their leading shape (one target per hidden state)"
        )
    if not torch.isfinite(target).all():
        bad = int((~torch.isfinite(target)).sum())
        raise InputError(
            f"{type(head).__name__}: target holds {bad} NaN/inf values; drop or impute them "
            "before computing the loss"
        )


def check_steps(head: ContinuousHead, steps: int | None) -> int:
    """``steps`` or the head's default; it must be a positive integer."""
    n = head.default_steps if steps is None else steps
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(
            f"{type(head).__name__}: steps must be an integer >= 1 (network calls per draw), "
            f"got {steps!r}"
        )
    return n


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of ``t`` (...,) in [0, 1] scaled to [0, 1000]: (..., dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )  # (half,)
    args = (1000.0 * t.float())[..., None] * freqs  # (..., half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class HeadSampler:
    """A head as an ``ar_core`` ``StepSampler``: ``sample(out, generator)`` draws the
    step's values from ``out.hidden`` (B, m, C) with ``steps`` network calls of the head
    per draw; returns (B, m, d). ``out.logits`` is not used (a continuous step model may
    return an empty tensor there); with guidance rows the hidden states must already be
    merged to the batch's rows."""

    def __init__(self, name: str, head: nn.Module, steps: int | None = None) -> None:
        if not isinstance(head, ContinuousHead):
            raise ConfigError(
                f"step sampler {name!r}: head must follow ar_diffusion.heads.ContinuousHead "
                f"(dim, cond_dim, default_steps, loss, sample), got {type(head).__name__}"
            )
        self.name = name
        self.head = head
        self.steps = check_steps(head, steps)

    @torch.no_grad()
    def sample(self, out: ModelOutput, generator: torch.Generator | None) -> Tensor:
        hidden = out.hidden  # (B, m, C)
        if hidden.dim() != 3:
            raise InputError(
                f"step sampler {self.name!r}: out.hidden must be (B, m, C), got "
                f"{tuple(hidden.shape)}"
            )
        return self.head.sample(hidden, generator=generator, steps=self.steps)  # (B, m, d)
