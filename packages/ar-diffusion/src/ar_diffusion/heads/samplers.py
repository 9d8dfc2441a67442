"""The registered step samplers of the heads (``ar_core.registry.step_samplers``): each
factory takes the trained ``head`` and the head's ``steps`` per draw and checks that the
head is of the kind its name promises."""

from __future__ import annotations

from torch import nn

from ar_core.errors import ConfigError

from .base import HeadSampler
from .diffusion import DiffusionHead
from .flow import FlowHead
from .gmm import GMMHead
from .mse import MSEHead

__all__ = ["diffusion_head", "flow_head", "gmm_head", "mse_head"]


def _make(
    name: str, kind: type[nn.Module], head: nn.Module | None, steps: int | None
) -> HeadSampler:
    if not isinstance(head, kind):
        raise ConfigError(
            f"step sampler {name!r} needs head=<a trained {kind.__name__}>, got "
            f"{type(head).__name__}"
        )
    return HeadSampler(name, head, steps)


def diffusion_head(head: nn.Module | None = None, steps: int | None = None) -> HeadSampler:
    """Step sampler ``diffusion-head``: values drawn by a DiffusionHead in ``steps`` calls."""
    return _make("diffusion-head", DiffusionHead, head, steps)


def flow_head(head: nn.Module | None = None, steps: int | None = None) -> HeadSampler:
    """Step sampler ``flow-head``: values drawn by a FlowHead in ``steps`` ODE steps."""
    return _make("flow-head", FlowHead, head, steps)


def gmm_head(head: nn.Module | None = None, steps: int | None = None) -> HeadSampler:
    """Step sampler ``gmm-head``: values drawn from a GMMHead's mixture."""
    return _make("gmm-head", GMMHead, head, steps)


def mse_head(head: nn.Module | None = None, steps: int | None = None) -> HeadSampler:
    """Step sampler ``mse-head``: the MSEHead's predicted mean (deterministic)."""
    return _make("mse-head", MSEHead, head, steps)
