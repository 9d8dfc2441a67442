"""Directed information: exact on enumerated joints, estimated on Gaussian VARs.

Massey, "Causality, feedback and directed information" (1990) and Massey & Massey,
"Conservation of mutual and directed information" (ISIT 2005); Bai, "Forget BIT, it is
all about TOKEN" (2025) for the per-token form used with autoregressive models:

    I(X^n -> Y^n) = sum_t I(X^t; Y_t | Y^{t-1})
                  = E sum_t [log p(y_t | y_<t, x_<=t) - log p(y_t | y_<t)],

and the conservation law ``I(X^n -> Y^n) + I(0*Y^{n-1} -> X^n) = I(X^n; Y^n)``, where
``0*Y^{n-1}`` is Y delayed by one step (``I(0*Y^{n-1} -> X^n) = sum_t I(Y^{t-1}; X_t |
X^{t-1})``).

* :func:`directed_information_exact` – the three terms of the law from a joint table.
* :func:`directed_information_from_logprobs` – the per-token flow from two AR models'
  log-probabilities (one that sees x, one that does not): "paired AR models".
* :func:`var1_directed_information` – the analytic rates (nats per step) of a bivariate
  Gaussian VAR(1) with independent noises, via the Kolmogorov–Szegő formula.
* :func:`simulate_var1`, :func:`gaussian_directed_information` – the linear-Gaussian
  paired-AR estimate ``1/2 log(RSS_y|y-past / RSS_y|y-past,x-past-and-present)``.
* :func:`granger_test` – statsmodels' Granger F test, the cross-check (optional extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ar_core.diagnostics._checks import need, positive_int, stochastic_rows
from ar_core.errors import ConfigError, InputError

__all__ = [
    "DirectedInformation",
    "directed_information_exact",
    "directed_information_from_logprobs",
    "gaussian_directed_information",
    "granger_test",
    "simulate_var1",
    "var1_directed_information",
]


@dataclass
class DirectedInformation:
    """``forward`` = I(X^n -> Y^n), ``backward`` = I(0*Y^{n-1} -> X^n), ``mutual`` =
    I(X^n; Y^n), all in nats; Massey's law says forward + backward == mutual."""

    forward: float
    backward: float
    mutual: float


def _entropy(joint: np.ndarray, keep: tuple[int, ...]) -> float:
    drop = tuple(a for a in range(joint.ndim) if a not in keep)
    m = joint.sum(axis=drop) if drop else joint
    m = m[m > 0]
    return float(-(m * np.log(m)).sum())


def directed_information_exact(joint: object, n: int) -> DirectedInformation:
    """The three terms of Massey's law for a joint pmf ``joint`` of ``2 n`` axes:
    ``joint[x_1, ..., x_n, y_1, ..., y_n]`` (non-negative, summing to 1)."""
    positive_int(n, "n")
    p = np.asarray(joint, dtype=np.float64)
    if p.ndim != 2 * n:
        raise InputError(
            f"joint must have 2 n = {2 * n} axes (x_1..x_n, y_1..y_n), got {p.ndim} axes"
        )
    stochastic_rows(p.reshape(1, -1), "joint", atol=1e-9)
    X = lambda t: tuple(range(t))  # noqa: E731  x_1..x_t
    Y = lambda t: tuple(range(n, n + t))  # noqa: E731  y_1..y_t
    H = lambda *axes: _entropy(p, tuple(a for group in axes for a in group))  # noqa: E731
    forward = sum(
        H(X(t), Y(t - 1)) + H(Y(t)) - H(Y(t - 1)) - H(X(t), Y(t)) for t in range(1, n + 1)
    )
    backward = sum(
        H(X(t - 1), Y(t - 1)) + H(X(t)) - H(X(t - 1)) - H(X(t), Y(t - 1)) for t in range(1, n + 1)
    )
    mutual = H(X(n)) + H(Y(n)) - H(X(n), Y(n))
    return DirectedInformation(float(forward), float(backward), float(mutual))


def directed_information_from_logprobs(logp_with_x: Tensor, logp_without_x: Tensor) -> Tensor:
    """Per-token information flow ``log p(y_t | y_<t, x_<=t) - log p(y_t | y_<t)`` (N, T)
    from two models' log-probabilities of the observed y tokens (both (N, T)); its mean
    over rows, summed over t, estimates I(X^n -> Y^n)."""
    for name, t in (("logp_with_x", logp_with_x), ("logp_without_x", logp_without_x)):
        if not isinstance(t, Tensor) or t.ndim != 2 or not t.dtype.is_floating_point:
            raise InputError(f"{name} must be a float (N, T) tensor of log-probabilities")
        if bool((t > 1e-6).any()) or not bool(torch.isfinite(t).all()):
            raise InputError(f"{name} must hold finite log-probabilities (<= 0)")
    if logp_with_x.shape != logp_without_x.shape:
        raise InputError(
            f"shapes differ: {tuple(logp_with_x.shape)} vs {tuple(logp_without_x.shape)}"
        )
    return logp_with_x - logp_without_x


# -- Gaussian VAR(1) ----------------------------------------------------------------------


def _var1(A: object, noise_var: object) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(A, dtype=np.float64)
    s = np.asarray(noise_var, dtype=np.float64)
    if a.shape != (2, 2) or s.shape != (2,):
        raise InputError(
            f"A must be 2x2 and noise_var 2 variances (x, y), got {a.shape} and {s.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise InputError("A must be finite and noise_var finite and > 0")
    rho = float(np.abs(np.linalg.eigvals(a)).max())
    if rho >= 1:
        raise InputError(
            f"A has spectral radius {rho:.3g} >= 1: the VAR is not stationary; shrink A"
        )
    return a, s


def var1_directed_information(
    A: object, noise_var: object, grid: int = 4096
) -> tuple[float, float]:
    """Analytic rates (X -> Y, Y -> X) in nats per step of ``z_t = A z_{t-1} + e_t``,
    ``z = (x, y)``, ``e ~ N(0, diag(noise_var))``: ``1/2 log(sigma^2_{y|y-past} /
    noise_var[y])``, the innovation variance of y on its own past from the Kolmogorov–
    Szegő formula ``exp(mean_w log S_yy(w))`` (a trapezoid over ``grid`` frequencies)."""
    a, s = _var1(A, noise_var)
    positive_int(grid, "grid", minimum=64)
    w = 2 * np.pi * np.arange(grid) / grid
    rates = []
    for i in (1, 0):  # y (X -> Y), then x (Y -> X)
        Hw = np.linalg.inv(np.eye(2)[None] - a[None] * np.exp(-1j * w)[:, None, None])  # (G, 2, 2)
        S = (Hw * s[None, None, :]) @ np.conj(np.transpose(Hw, (0, 2, 1)))  # (G, 2, 2)
        innov = float(np.exp(np.mean(np.log(S[:, i, i].real))))
        rates.append(0.5 * np.log(innov / s[i]))
    return float(rates[0]), float(rates[1])


def simulate_var1(
    A: object, noise_var: object, n: int, *, seed: int = 0, burn: int = 500
) -> np.ndarray:
    """(n, 2) samples (x, y) of the VAR(1), after ``burn`` discarded steps."""
    a, s = _var1(A, noise_var)
    positive_int(n, "n")
    positive_int(burn, "burn", minimum=0)
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n + burn, 2)) * np.sqrt(s)
    z = np.zeros((n + burn, 2))
    for t in range(1, n + burn):
        z[t] = a @ z[t - 1] + e[t]
    return z[burn:]


def _series(v: object, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise InputError(f"{name} must be a 1-D series of finite numbers, got shape {arr.shape}")
    return arr


def _lagged(v: np.ndarray, lags: range, n: int, p: int) -> np.ndarray:
    return np.stack([v[p - k : p - k + n] for k in lags], axis=1)


def gaussian_directed_information(x: object, y: object, *, lags: int = 8) -> float:
    """Linear-Gaussian estimate (nats per step) of the directed information rate X -> Y:
    ``1/2 log(RSS of y_t on 1, y_{t-1..t-lags} / RSS of y_t on those and x_{t..t-lags})``."""
    xs, ys = _series(x, "x"), _series(y, "y")
    positive_int(lags, "lags")
    if xs.shape != ys.shape:
        raise InputError(f"x and y must have equal length, got {xs.size} and {ys.size}")
    n = xs.size - lags
    if n < 4 * (2 * lags + 2):
        raise InputError(
            f"{xs.size} samples are too few for lags={lags}: pass >= {4 * (2 * lags + 2) + lags}"
        )
    target = ys[lags:]
    own = np.column_stack([np.ones(n), _lagged(ys, range(1, lags + 1), n, lags)])
    both = np.column_stack([own, _lagged(xs, range(0, lags + 1), n, lags)])
    rss = []
    for design in (own, both):
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        rss.append(float(((target - design @ coef) ** 2).sum()))
    return 0.5 * float(np.log(rss[0] / rss[1]))


def granger_test(x: object, y: object, *, lags: int = 2) -> float:
    """p-value of statsmodels' Granger F test (ssr_ftest) that x's past helps predict y
    (``pip install ar-core[diagnostics]``)."""
    xs, ys = _series(x, "x"), _series(y, "y")
    positive_int(lags, "lags")
    if xs.shape != ys.shape:
        raise InputError(f"x and y must have equal length, got {xs.size} and {ys.size}")
    if xs.size < 10 * (lags + 1):
        raise InputError(f"{xs.size} samples are too few for lags={lags}")
    if np.std(xs) == 0 or np.std(ys) == 0:
        raise ConfigError("granger_test: a constant series has nothing to test")
    stattools = need("statsmodels.tsa.stattools", "granger_test")
    res = stattools.grangercausalitytests(np.column_stack([ys, xs]), maxlag=[lags])
    return float(res[lags][0]["ssr_ftest"][1])
