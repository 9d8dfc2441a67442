"""The baselines a forecaster compares with: repeat-last, seasonal naive, DLinear, ETS, ARIMA.

All take look-back windows ``x`` (B, L) on the scaled values and return (B, H) forecasts.

* ``repeat_last``: the last observed value, H times (persistence).
* ``seasonal_naive``: the value one season earlier (``period`` 24 for hourly data), the
  last season repeated; needs L >= period.
* :class:`DLinear` (Zeng et al., AAAI 2023): a moving-average (kernel 25, replicate
  padding) split of the window into trend and remainder, one linear map L -> H each,
  summed; trained here with MSE, by AdamW or exactly (``fit_least_squares``).
* :class:`EtsBaseline` / :class:`ArimaBaseline` (statsmodels): univariate, both fitted
  once on the last training rows and applied with those parameters to each window: ETS
  is Holt-Winters (additive damped trend, additive season of ``period``) run over the
  window; ARIMA(2,1,1) filters the window (``ARIMAResults.apply``, no refit).
  Both are slow in Python, so callers evaluate them on a stated subsample of windows.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn

from ar_core.errors import InputError


def repeat_last(x: Tensor, horizon: int) -> Tensor:
    return x[:, -1:].expand(x.shape[0], horizon).clone()


def seasonal_naive(x: Tensor, horizon: int, period: int = 24) -> Tensor:
    if x.shape[1] < period:
        raise InputError(
            f"seasonal naive with period {period} needs a look-back of at least {period}, got "
            f"{x.shape[1]}; raise seq_len or lower the period"
        )
    season = x[:, -period:]  # (B, P)
    reps = -(-horizon // period)
    return season.repeat(1, reps)[:, :horizon].clone()


class MovingAverage(nn.Module):
    """Centred moving average with the ends padded by repetition (length preserved)."""

    def __init__(self, kernel: int = 25) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:  # (B, L) -> (B, L)
        front = x[:, :1].expand(-1, (self.kernel - 1) // 2)
        back = x[:, -1:].expand(-1, self.kernel // 2)
        padded = torch.cat([front, x, back], dim=1)[:, None]  # (B, 1, L + k - 1)
        return nn.functional.avg_pool1d(padded, self.kernel, stride=1)[:, 0]


class DLinear(nn.Module):
    """Trend + remainder, one linear map each (shared over channels: channel-independent)."""

    def __init__(self, seq_len: int, pred_len: int, kernel: int = 25) -> None:
        super().__init__()
        self.seq_len, self.pred_len = seq_len, pred_len
        self.decompose = MovingAverage(kernel)
        self.trend = nn.Linear(seq_len, pred_len)
        self.seasonal = nn.Linear(seq_len, pred_len)
        for layer in (self.trend, self.seasonal):  # the paper's start: the window average
            nn.init.constant_(layer.weight, 1.0 / seq_len)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, L) -> (B, H)
        trend = self.decompose(x)
        return self.trend(trend) + self.seasonal(x - trend)

    def loss(self, x: Tensor, y: Tensor, pos: Tensor | None = None) -> Tensor:
        return nn.functional.mse_loss(self(x), y[:, : self.pred_len])

    @torch.no_grad()
    def fit_least_squares(
        self,
        x: Tensor,
        y: Tensor,
        x_val: Tensor,
        y_val: Tensor,
        ridges: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0),
    ) -> dict[str, float]:
        """Train by solving the MSE exactly: DLinear is linear in its input
        (``W_t MA(x) + W_s (x - MA(x))`` spans every map ``A x`` with ``W_t = W_s = A``),
        so its training optimum is a ridge regression; the ridge is chosen on the
        validation windows. Returns the chosen ridge and the validation MSE."""
        xd, yd = x.double(), y.double()
        ones = torch.ones(xd.shape[0], 1, dtype=torch.float64)
        design = torch.cat([xd, ones], dim=1)  # (N, L + 1)
        gram, rhs = design.T @ design, design.T @ yd
        eye = torch.eye(gram.shape[0], dtype=torch.float64)
        eye[-1, -1] = 0.0  # the bias is not penalised
        best: tuple[float, float, Tensor] | None = None
        for ridge in ridges:
            coef = torch.linalg.solve(gram + ridge * eye, rhs)  # (L + 1, H)
            pred = x_val.double() @ coef[:-1] + coef[-1]
            mse = float(((pred - y_val.double()) ** 2).mean())
            if best is None or mse < best[1]:
                best = (ridge, mse, coef)
        assert best is not None
        ridge, mse, coef = best
        for layer in (self.trend, self.seasonal):
            layer.weight.copy_(coef[:-1].T.float())
        self.trend.bias.copy_(coef[-1].float())
        self.seasonal.bias.zero_()
        return {"ridge": ridge, "val_mse": mse}

    def forecast(self, x: Tensor, horizon: int, pos: Tensor | None = None) -> Tensor:
        if horizon > self.pred_len:
            raise InputError(
                f"this DLinear predicts {self.pred_len} steps; horizon {horizon} needs a model "
                f"trained with pred_len >= {horizon}"
            )
        return self(x)[:, :horizon]


class EtsBaseline:
    """Holt-Winters (additive damped trend, additive season of ``period``) with its
    smoothing parameters fitted once on training values, then run over each window with
    those parameters (heuristic initial states; no per-window optimisation)."""

    def __init__(self, train_values: np.ndarray, period: int = 24) -> None:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        self.period = period
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ExponentialSmoothing(
                np.asarray(train_values, dtype=np.float64), trend="add", damped_trend=True,
                seasonal="add", seasonal_periods=period, initialization_method="estimated",
            ).fit(optimized=True)  # fmt: skip
        p = fit.params
        self.params = {
            "smoothing_level": float(p["smoothing_level"]),
            "smoothing_trend": float(p["smoothing_trend"]),
            "smoothing_seasonal": float(p["smoothing_seasonal"]),
            "damping_trend": float(p["damping_trend"]),
        }

    def forecast(self, x: np.ndarray, horizon: int) -> np.ndarray:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        out = np.empty((x.shape[0], horizon))
        seasonal = x.shape[1] >= 2 * self.period
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, row in enumerate(np.asarray(x, dtype=np.float64)):
                model = ExponentialSmoothing(
                    row, trend="add", damped_trend=True,
                    seasonal="add" if seasonal else None,
                    seasonal_periods=self.period if seasonal else None,
                    initialization_method="heuristic" if seasonal else "estimated",
                )  # fmt: skip
                params = dict(self.params)
                if not seasonal:
                    params.pop("smoothing_seasonal")
                out[i] = model.fit(optimized=False, **params).forecast(horizon)
        return out


class ArimaBaseline:
    """ARIMA(order) fitted once on training values, applied to each window unchanged."""

    def __init__(self, train_values: np.ndarray, order: tuple[int, int, int] = (2, 1, 1)) -> None:
        from statsmodels.tsa.arima.model import ARIMA

        self.order = order
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.result = ARIMA(np.asarray(train_values, dtype=np.float64), order=order).fit()

    def forecast(self, x: np.ndarray, horizon: int) -> np.ndarray:
        out = np.empty((x.shape[0], horizon))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, row in enumerate(np.asarray(x, dtype=np.float64)):
                out[i] = self.result.apply(row).forecast(horizon)
        return out
