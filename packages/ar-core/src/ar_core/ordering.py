"""Orderings and Plans: which positions of an object are generated at which step.

A :class:`Plan` is a validated partition of the positions ``0..N-1`` of an object of
``shape`` (flattened row-major) into a sequence of non-empty steps. An :class:`Ordering`
turns a shape into a Plan. Step models read the Plan to build their masks
(``ar_core.masks.block_causal(plan.step_ids())``), positions and generation order.

Built-in orderings (registered through ar-core's own plugin): ``raster`` (one position a
step, row-major), ``random`` (one position a step, a random permutation; XLNet /
any-order AR), ``block`` (consecutive chunks of ``block_size`` positions; block diffusion).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from ar_core.errors import ConfigError


class PlanError(ConfigError):
    """A Plan that is not a partition of the positions."""


class Plan:
    """A validated partition of ``prod(shape)`` positions into ordered steps."""

    def __init__(self, steps: Sequence[Sequence[int] | torch.Tensor], shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s <= 0 for s in self.shape):
            raise PlanError(f"Plan shape must be non-empty positive sizes, got {self.shape}")
        n = math.prod(self.shape)
        tensors: list[torch.Tensor] = []
        for k, step in enumerate(steps):
            t = torch.as_tensor(step)
            if t.numel() == 0:
                raise PlanError(f"step {k} is empty; every step needs at least one position")
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise PlanError(f"step {k} holds {t.dtype} values; positions must be integers")
            t = t.to(torch.long).reshape(-1)
            tensors.append(t)
        if not tensors:
            raise PlanError("a Plan needs at least one step")
        flat = torch.cat(tensors)
        bad = flat[(flat < 0) | (flat >= n)]
        if bad.numel():
            raise PlanError(
                f"position {int(bad[0])} is outside shape {self.shape} (positions 0..{n - 1})"
            )
        counts = torch.bincount(flat, minlength=n)
        dup = torch.nonzero(counts > 1).flatten()
        if dup.numel():
            p = int(dup[0])
            where = [k for k, t in enumerate(tensors) if bool((t == p).any())]
            raise PlanError(
                f"position {p} appears {int(counts[p])} times (steps {where}); "
                f"a Plan must place each position exactly once"
            )
        missing = torch.nonzero(counts == 0).flatten()
        if missing.numel():
            shown = ", ".join(str(int(m)) for m in missing[:5])
            more = f" and {missing.numel() - 5} more" if missing.numel() > 5 else ""
            raise PlanError(f"positions {shown}{more} are in no step; a Plan must cover all {n}")
        self.steps: tuple[torch.Tensor, ...] = tuple(tensors)

    @property
    def num_positions(self) -> int:
        return math.prod(self.shape)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def step_sizes(self) -> list[int]:
        return [int(s.numel()) for s in self.steps]

    def order(self) -> torch.Tensor:
        """All positions in generation order, shape (N,)."""
        return torch.cat(self.steps)

    def step_ids(self) -> torch.Tensor:
        """Step index of each position (in position order), shape (N,)."""
        ids = torch.empty(self.num_positions, dtype=torch.long)
        for k, step in enumerate(self.steps):
            ids[step] = k
        return ids

    def __repr__(self) -> str:
        return f"Plan(shape={self.shape}, steps={self.num_steps}, sizes={self.step_sizes[:8]}...)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return (
            self.shape == other.shape
            and len(self.steps) == len(other.steps)
            and all(torch.equal(a, b) for a, b in zip(self.steps, other.steps))
        )


@runtime_checkable
class Ordering(Protocol):
    """Turns the shape of an object into a Plan."""

    name: str

    def plan(self, shape: Sequence[int], *, generator: torch.Generator | None = None) -> Plan: ...


class Raster:
    """One position a step, row-major (the classic left-to-right order)."""

    name = "raster"

    def plan(self, shape: Sequence[int], *, generator: torch.Generator | None = None) -> Plan:
        n = math.prod(shape)
        return Plan([[i] for i in range(n)], shape)


class RandomOrder:
    """One position a step in a uniformly random order (any-order AR, XLNet, AS-ARM).

    The permutation comes from ``generator``; pass a seeded one for reproducible plans.
    """

    name = "random"

    def plan(self, shape: Sequence[int], *, generator: torch.Generator | None = None) -> Plan:
        n = math.prod(shape)
        perm = torch.randperm(n, generator=generator)
        return Plan(list(perm.view(-1, 1)), shape)


class Block:
    """Consecutive chunks of ``block_size`` positions in raster order (block diffusion, ACDiT)."""

    name = "block"

    def __init__(self, block_size: int = 4) -> None:
        if int(block_size) < 1:
            raise ConfigError(f"block_size must be >= 1, got {block_size}")
        self.block_size = int(block_size)

    def plan(self, shape: Sequence[int], *, generator: torch.Generator | None = None) -> Plan:
        n = math.prod(shape)
        return Plan(list(torch.arange(n).split(self.block_size)), shape)
