"""Continuous output heads for autoregressive models: given the hidden state at a position,
a distribution over that position's continuous value.

* :class:`DiffusionHead` – MAR's per-token diffusion (AdaLN MLP, cosine schedule, DDPM /
  DDIM);
* :class:`FlowHead` – per-token flow matching (Euler / Heun);
* :class:`GMMHead` – a K-component diagonal Gaussian mixture;
* :class:`MSEHead` – the regression baseline (samples its mean).

All follow :class:`ContinuousHead` (``loss(hidden, target)``, ``sample(hidden, generator=,
steps=)``) and become ``ar_core`` step samplers through :class:`HeadSampler` (registered as
``diffusion-head``, ``flow-head``, ``gmm-head``, ``mse-head``).
"""

from .base import ContinuousHead, HeadSampler
from .diffusion import DiffusionHead, cosine_alpha_bar
from .flow import FlowHead
from .gmm import GMMHead
from .mse import MSEHead

__all__ = [
    "ContinuousHead",
    "DiffusionHead",
    "FlowHead",
    "GMMHead",
    "HeadSampler",
    "MSEHead",
    "cosine_alpha_bar",
]
