"""Input checks shared by the diagnostics: each raises a one-line ``InputError`` or
``ConfigError`` naming the argument, what it got and the fix."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError

EXTRA = "pip install ar-core[diagnostics]"


def need(module: str, what: str) -> Any:
    """Import an optional dependency of ``ar-core[diagnostics]`` or say how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{what} needs the optional package {module.split('.')[0]!r}: {EXTRA}"
        ) from None


def positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def token_tensor(tokens: object, name: str, vocab_size: int, *, min_length: int = 1) -> Tensor:
    """(N, T) integer tokens in [0, vocab_size) with T >= min_length."""
    if not isinstance(tokens, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.ndim != 2:
        raise InputError(f"{name} must be (N, T), got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise InputError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.shape[0] < 1 or tokens.shape[1] < min_length:
        raise InputError(
            f"{name} needs at least 1 row of {min_length} tokens, got shape {tuple(tokens.shape)}"
        )
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise InputError(
            f"{name} holds ids in [{lo}, {hi}], outside the vocabulary [0, {vocab_size}): pass "
            f"ids below vocab_size"
        )
    return tokens.long()


def stochastic_rows(p: object, name: str, *, atol: float = 1e-6) -> np.ndarray:
    """A float array whose last axis sums to one, entries in [0, 1]."""
    arr = np.asarray(p.detach().cpu() if isinstance(p, Tensor) else p, dtype=np.float64)
    if arr.ndim < 1 or arr.size == 0:
        raise InputError(
            f"{name} must be a non-empty array of probabilities, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise InputError(f"{name} must hold finite probabilities >= 0 (min {np.nanmin(arr):.3g})")
    sums = arr.sum(axis=-1)
    worst = float(np.abs(sums - 1).max())
    if worst > atol:
        raise InputError(
            f"{name}: rows must sum to 1 over the last axis (worst row off by {worst:.3g}); "
            f"normalise them"
        )
    return arr


def check_causal_lm(model: object, what: str = "model") -> None:
    from ar_core.protocols import CausalLM, check_protocol

    check_protocol(model, CausalLM, what)
