"""Directed information: Massey's conservation law on enumerated joints (against a direct
summation), the Gaussian VAR rate (against Yule-Walker on exact autocovariances), the
estimator's convergence one way and ~0 the other, and statsmodels' Granger cross-check."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ar_core.diagnostics import (
    directed_information_exact,
    directed_information_from_logprobs,
    gaussian_directed_information,
    granger_test,
    simulate_var1,
    var1_directed_information,
)

A = [[0.5, 0.0], [0.6, 0.4]]  # x drives y, y never drives x
NOISE = [1.0, 1.0]


def _direct_sum(p: np.ndarray, n: int) -> float:
    """I(X^n -> Y^n) = sum over outcomes p log p(y_t | x^t, y^{t-1}) / p(y_t | y^{t-1})."""
    total = 0.0
    for idx in itertools.product(*(range(s) for s in p.shape)):
        if p[idx] == 0:
            continue
        x, y = idx[:n], idx[n:]

        def marg(keep_x: int, keep_y: int, x: tuple[int, ...], y: tuple[int, ...]) -> float:
            drop = tuple(range(keep_x, n)) + tuple(range(n + keep_y, 2 * n))
            return float(p.sum(axis=drop)[x[:keep_x] + y[:keep_y]])

        for t in range(1, n + 1):
            cond_xy = marg(t, t, x, y) / marg(t, t - 1, x, y)
            cond_y = marg(0, t, x, y) / marg(0, t - 1, x, y)
            total += p[idx] * np.log(cond_xy / cond_y)
    return total


@pytest.mark.parametrize("n,size,seed", [(1, 2, 0), (2, 2, 1), (2, 3, 2), (3, 2, 3)])
def test_massey_conservation_law_exact(n: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.random((size,) * (2 * n)) ** 3  # skewed, some near-zero cells
    p[(0,) * (2 * n)] = 0.0  # and an exact zero
    p /= p.sum()
    d = directed_information_exact(p, n)
    assert d.forward + d.backward == pytest.approx(d.mutual, abs=1e-12)
    assert d.forward == pytest.approx(_direct_sum(p, n), abs=1e-12)
    assert d.forward > 0 and d.backward >= 0
    # swapping roles: I(Y -> X) + I(0*X -> Y) is the same mutual information
    swapped = np.transpose(p, tuple(range(n, 2 * n)) + tuple(range(n)))
    assert directed_information_exact(swapped, n).mutual == pytest.approx(d.mutual, abs=1e-12)


def test_known_joints() -> None:
    # y_t = x_t with x i.i.d. uniform bits: I(X -> Y) = n log 2, nothing flows back
    n = 2
    p = np.zeros((2,) * 4)
    for x in itertools.product(range(2), repeat=n):
        p[x + x] = 0.25
    d = directed_information_exact(p, n)
    assert d.forward == pytest.approx(n * np.log(2)) and d.backward == pytest.approx(0, abs=1e-12)
    # y_t = x_{t-1}: the delayed copy shows up in I(X -> Y), and y_1 is its own fair bit
    p = np.zeros((2,) * 4)
    for x1, x2, y1 in itertools.product(range(2), repeat=3):
        p[x1, x2, y1, x1] = 1 / 8
    d = directed_information_exact(p, n)
    assert d.forward == pytest.approx(np.log(2)) and d.backward == pytest.approx(0, abs=1e-12)
    # independent X and Y: all three terms vanish
    q = np.outer(np.full(4, 0.25), [0.1, 0.2, 0.3, 0.4]).reshape((2,) * 4)
    d = directed_information_exact(q, n)
    assert max(abs(d.forward), abs(d.backward), abs(d.mutual)) < 1e-12


def test_per_token_flow_from_paired_models() -> None:
    with_x = torch.log(torch.tensor([[0.9, 0.8], [0.7, 0.6]]))
    without = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    flow = directed_information_from_logprobs(with_x, without)
    assert torch.allclose(flow, with_x - without)


def _yule_walker_innovation(A: np.ndarray, s: np.ndarray, i: int, p: int = 300) -> float:
    """Innovation variance of component i on its own p-lag past from exact autocovariances."""
    G = np.diag(s).astype(float)
    for _ in range(2000):  # Gamma_0 = A Gamma_0 A^T + Sigma
        G = A @ G @ A.T + np.diag(s)
    gam = [G[i, i]]
    Ak = np.eye(2)
    for _ in range(p):
        Ak = A @ Ak
        gam.append((Ak @ G)[i, i])
    g = np.array(gam)
    R = np.array([[g[abs(a - b)] for b in range(p)] for a in range(p)])
    return float(g[0] - g[1:] @ np.linalg.solve(R, g[1:]))


def test_var1_rate_matches_yule_walker() -> None:
    a, s = np.array(A), np.array([1.0, 0.5])
    fwd, back = var1_directed_information(a, s)
    assert fwd == pytest.approx(0.5 * np.log(_yule_walker_innovation(a, s, 1) / s[1]), abs=1e-6)
    assert back == pytest.approx(0.0, abs=1e-9)
    # feedback both ways: both rates from the same formula
    b = np.array([[0.3, 0.4], [0.5, 0.2]])
    fwd, back = var1_directed_information(b, s)
    assert fwd == pytest.approx(0.5 * np.log(_yule_walker_innovation(b, s, 1) / s[1]), abs=1e-6)
    assert back == pytest.approx(0.5 * np.log(_yule_walker_innovation(b, s, 0) / s[0]), abs=1e-6)


def test_estimate_converges_one_way_and_is_zero_the_other() -> None:
    analytic, _ = var1_directed_information(A, NOISE)
    errors, reverse = [], []
    for n in (1_000, 10_000, 100_000):  # seed 1
        z = simulate_var1(A, NOISE, n, seed=1)
        errors.append(abs(gaussian_directed_information(z[:, 0], z[:, 1]) - analytic))
        reverse.append(abs(gaussian_directed_information(z[:, 1], z[:, 0])))
    assert analytic > 0.15
    assert errors[-1] < 0.005 and errors[-1] < errors[0], errors
    assert reverse[-1] < 0.001 and reverse[-1] < reverse[0], reverse


def test_granger_cross_check() -> None:
    pytest.importorskip("statsmodels")
    z = simulate_var1(A, NOISE, 2_000, seed=3)
    assert granger_test(z[:, 0], z[:, 1], lags=2) < 1e-6  # x Granger-causes y
    assert granger_test(z[:, 1], z[:, 0], lags=2) > 0.01  # y does not cause x (seed 3)
