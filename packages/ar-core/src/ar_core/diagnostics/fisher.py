"""The pull-back Fisher metric of a softmax head and its finite-difference check.

A Markov categorical framework for language modelling (2025): a point ``x`` (a hidden
state, or any parameters) mapped to logits ``z(x)`` and then to ``p = softmax(z)`` pulls
the Fisher information metric of the simplex back to ``G(x) = J^T (diag p - p p^T) J``
with ``J = dz/dx``; for a linear head ``z = W h + b`` that is ``W^T (diag p - p p^T) W``.
It is the second-order term of the KL divergence: ``KL(p_x || p_{x + eps v}) =
eps^2 / 2 v^T G v + O(eps^3)``, so ``KL / eps^2 -> v^T G v / 2`` as eps -> 0.

* :func:`fisher_metric` – G at a point of any differentiable ``logits_fn``.
* :func:`softmax_head_fisher` – the closed form for a linear head.
* :func:`kl_along` – KL(p_x || p_{x + eps v}) for the check.
* :func:`fisher_check` – rows (eps, KL / eps^2, v^T G v / 2, relative gap).
* :func:`output_head` – a ``CausalLM``'s final linear layer as a ``logits_fn`` of its
  ``hidden`` output (``output`` or ``lm_head``), so the metric is taken on a real model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ar_core.diagnostics._checks import check_causal_lm, positive_float
from ar_core.errors import ConfigError, InputError

__all__ = ["fisher_check", "fisher_metric", "kl_along", "output_head", "softmax_head_fisher"]

LogitsFn = Callable[[Tensor], Tensor]


def _point(x: object, name: str = "point") -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 1 or x.numel() == 0:
        raise InputError(
            f"{name} must be a 1-D float tensor, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    if not x.dtype.is_floating_point or not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} must hold finite floats, got dtype {x.dtype}")
    return x.detach().double()


def _logits(fn: object, x: Tensor) -> Tensor:
    if not callable(fn):
        raise ConfigError(f"logits_fn must be callable (x (d,) -> logits (V,)), got {fn!r}")
    z = fn(x)
    if not isinstance(z, Tensor) or z.ndim != 1 or z.numel() < 2:
        raise InputError(
            f"logits_fn must return a 1-D tensor of >= 2 logits, got "
            f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__}"
        )
    return z.double()


def fisher_metric(logits_fn: LogitsFn, point: Tensor) -> Tensor:
    """(d, d) float64 ``J^T (diag p - p p^T) J`` at ``point`` (d,), ``J`` by autograd."""
    x = _point(point)
    z = _logits(logits_fn, x)
    J = torch.autograd.functional.jacobian(lambda y: _logits(logits_fn, y), x)  # (V, d)
    p = torch.softmax(z.detach(), dim=-1)  # (V,)
    F = torch.diag(p) - torch.outer(p, p)  # (V, V)
    return J.T @ F @ J


def softmax_head_fisher(weight: Tensor, hidden: Tensor) -> Tensor:
    """(C, C) float64 ``W^T (diag p - p p^T) W`` with ``p = softmax(W h)`` for ``weight``
    (V, C) and ``hidden`` (C,) (a bias shifts p, not the formula: pass it via p's h)."""
    h = _point(hidden, "hidden")
    if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[1] != h.numel():
        raise InputError(
            f"weight must be (V, C) with C = hidden's {h.numel()}, got "
            f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}"
        )
    W = weight.detach().double()
    p = torch.softmax(W @ h, dim=-1)
    return W.T @ (torch.diag(p) - torch.outer(p, p)) @ W


def kl_along(logits_fn: LogitsFn, point: Tensor, direction: Tensor, eps: float) -> float:
    """KL(p_x || p_{x + eps v}) in nats (float64)."""
    x, v = _point(point), _point(direction, "direction")
    if v.shape != x.shape:
        raise InputError(f"direction has shape {tuple(v.shape)}, point {tuple(x.shape)}: match")
    positive_float(eps, "eps")
    with torch.no_grad():
        lp = torch.log_softmax(_logits(logits_fn, x), -1)
        lq = torch.log_softmax(_logits(logits_fn, x + eps * v), -1)
    return float((lp.exp() * (lp - lq)).sum())


def fisher_check(
    logits_fn: LogitsFn, point: Tensor, direction: Tensor, eps: Sequence[float]
) -> list[tuple[float, float, float, float]]:
    """Rows ``(eps, KL / eps^2, v^T G v / 2, |KL / eps^2 - v^T G v / 2| / (v^T G v / 2))``."""
    if not eps:
        raise ConfigError("eps must list at least one step size, e.g. [1e-1, 1e-2, 1e-3]")
    x, v = _point(point), _point(direction, "direction")
    G = fisher_metric(logits_fn, x)
    if v.shape[0] != G.shape[0]:
        raise InputError(f"direction has {v.shape[0]} entries, point {G.shape[0]}: match")
    half = float(v @ G @ v) / 2
    rows = []
    for e in eps:
        ratio = kl_along(logits_fn, x, v, e) / float(e) ** 2
        rows.append((float(e), ratio, half, abs(ratio - half) / max(abs(half), 1e-300)))
    return rows


def output_head(model: object) -> LogitsFn:
    """``h (C,) -> logits (V,)`` through the model's final linear layer (``output`` or
    ``lm_head``, an ``nn.Linear``), in float64; the metric then lives on ``hidden``."""
    check_causal_lm(model)
    head = getattr(model, "output", None) or getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear 'output' or 'lm_head': pass your own "
            f"logits_fn (hidden -> logits) to fisher_metric"
        )
    W = head.weight.detach().double()
    b = None if head.bias is None else head.bias.detach().double()

    def logits_fn(h: Tensor) -> Tensor:
        return W @ h if b is None else W @ h + b

    return logits_fn
