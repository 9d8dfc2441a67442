"""Baselines against straightforward references."""

import numpy as np
import pytest
import torch

from ar_core.errors import InputError
from ar_timeseries import baselines, data, forecasting


def test_repeat_last_and_seasonal_naive_exact() -> None:
    x = torch.arange(30.0).view(1, 30)
    assert torch.equal(baselines.repeat_last(x, 5), torch.full((1, 5), 29.0))
    sn = baselines.seasonal_naive(x, 30, period=24)
    assert torch.equal(sn[0, :24], x[0, 6:]) and torch.equal(sn[0, 24:], x[0, 6:12])
    with pytest.raises(InputError, match="at least 24"):
        baselines.seasonal_naive(x[:, :10], 5)


def test_moving_average_matches_a_loop() -> None:
    x = torch.randn(2, 40, dtype=torch.float64)
    ma = baselines.MovingAverage(25)(x)
    padded = torch.cat([x[:, :1].repeat(1, 12), x, x[:, -1:].repeat(1, 12)], dim=1)
    ref = torch.stack([padded[:, i : i + 25].mean(dim=1) for i in range(40)], dim=1)
    assert torch.allclose(ma, ref)


def test_dlinear_least_squares_recovers_a_linear_map() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(48, 12, generator=g) / 7
    x = torch.randn(500, 48, generator=g)
    xv = torch.randn(100, 48, generator=g)
    model = baselines.DLinear(48, 12)
    info = model.fit_least_squares(x, x @ A + 0.5, xv, xv @ A + 0.5, ridges=(1e-6,))
    assert info["val_mse"] < 1e-8
    assert torch.allclose(model(xv), xv @ A + 0.5, atol=1e-4)


def test_dlinear_gradient_training_beats_its_start() -> None:
    series = data.Series(
        np.sin(np.arange(2000) * 2 * np.pi / 24)[:, None] + 0.01 * np.arange(2000)[:, None] / 2000,
        data.future_dates(data.pd.DatetimeIndex(["2020-01-01"]), 1999),
        ["y"], "y", "sine",
    )  # fmt: skip
    s = data.split(series, 48, 24)
    model = baselines.DLinear(48, 24)
    before = forecasting.evaluate(forecasting.model_fn(model), s.test, 48, [24])[24]["mse"]
    batches = forecasting.WindowBatches(s.train, 48, 24)
    forecasting.train_forecaster(model, batches, 150, 32, 1e-2)
    after = forecasting.evaluate(forecasting.model_fn(model), s.test, 48, [24])[24]["mse"]
    assert after < 0.1 * before


def test_ets_and_arima_forecast_a_seasonal_series() -> None:
    t = np.arange(600)
    y = np.sin(2 * np.pi * t / 24) + 0.001 * t
    ets = baselines.EtsBaseline(y[:400], period=24)
    windows = np.stack([y[400:496], y[450:546]])
    truth = np.stack([y[496:520], y[546:570]])
    f = ets.forecast(windows, 24)
    assert f.shape == (2, 24) and np.mean((f - truth) ** 2) < 1e-2
    a = baselines.ArimaBaseline(y[:400]).forecast(windows, 24)
    assert a.shape == (2, 24) and np.isfinite(a).all()
    # ARIMA(2,1,1) cannot hold a 24-h cycle for a day: worse than ETS, better than nothing
    assert np.mean((a - truth) ** 2) < np.mean(truth**2) * 2


def test_validation_selection_never_ends_worse_than_the_last_step() -> None:
    series = data.Series(
        np.sin(np.arange(1500) * 2 * np.pi / 24)[:, None]
        + 0.3 * np.random.default_rng(0).standard_normal((1500, 1)),
        data.future_dates(data.pd.DatetimeIndex(["2020-01-01"]), 1499),
        ["y"], "y", "noisy",
    )  # fmt: skip
    s = data.split(series, 48, 24)
    scores = []
    for val_every in (0, 15):
        torch.manual_seed(0)
        model = baselines.DLinear(48, 24)
        batches = forecasting.WindowBatches(s.train, 48, 24)
        forecasting.train_forecaster(model, batches, 60, 8, 5e-2, val=s.val, val_every=val_every)
        fn = forecasting.model_fn(model)
        scores.append(forecasting.evaluate(fn, s.val, 48, [24], max_windows=256)[24]["mse"])
    assert scores[1] <= scores[0]


def test_dlinear_forecast_ignores_values_after_the_origin() -> None:
    g = torch.Generator().manual_seed(0)
    model = baselines.DLinear(48, 24)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=g)
    values = np.random.default_rng(0).standard_normal(200)
    base = forecasting.forecast_at(model, values, 120, 48, 24)
    changed = values.copy()
    changed[120:] = 1e3
    assert np.array_equal(forecasting.forecast_at(model, changed, 120, 48, 24), base)
    changed[119] += 1.0
    assert not np.array_equal(forecasting.forecast_at(model, changed, 120, 48, 24), base)


def test_multichannel_evaluation_is_the_mean_over_channels() -> None:
    """features=M: every (window, channel) pair is one row, so the M score is the mean of
    the per-channel scores (equal window counts), computed in one batched pass."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((300, 3)).cumsum(axis=0)
    dates = data.future_dates(data.pd.DatetimeIndex(["2020-01-01"]), 299)
    both = data.split(data.Series(values, dates, ["a", "b", "c"], "c", "x"), 48, 24)
    fn = lambda x, h, p: baselines.seasonal_naive(x, h, 24)  # noqa: E731
    joint = forecasting.evaluate(fn, both.test, 48, [24])[24]
    per = []
    for c in range(3):
        one = data.Split("test", both.test.values[:, c : c + 1], both.test.dates, both.test.start)
        per.append(forecasting.evaluate(fn, one, 48, [24])[24])
    assert joint["windows"] == 3 * per[0]["windows"]
    assert joint["mse"] == pytest.approx(np.mean([p["mse"] for p in per]), rel=1e-12)
    assert joint["mae"] == pytest.approx(np.mean([p["mae"] for p in per]), rel=1e-12)
