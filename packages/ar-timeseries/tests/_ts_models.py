"""Shared tiny fixtures for the model tests."""

import numpy as np
import pandas as pd

from ar_timeseries import data
from ar_timeseries.lm import FrozenLM, random_lm


def tiny_lm() -> FrozenLM:
    return random_lm(dim=32, n_layers=1, n_heads=2, seed=0)


def sine_splits(n: int = 1500, seq_len: int = 48, horizon: int = 48) -> data.Splits:
    t = np.arange(n)
    rng = np.random.default_rng(0)
    y = (
        np.sin(2 * np.pi * t / 24)
        + 0.3 * np.sin(2 * np.pi * t / 168)
        + 0.05 * rng.standard_normal(n)
    )
    dates = pd.date_range("2020-01-01", periods=n, freq="h")
    return data.split(data.Series(y[:, None], dates, ["y"], "y", "sine"), seq_len, horizon)
