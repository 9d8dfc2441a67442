"""Series from CSV files and the long-term forecasting protocol of Time-Series-Library.

``load_csv(path, target, features)`` reads a CSV with a date column (pandas), checks it
(missing values, unparsable or non-increasing dates, unknown target: one-line
:class:`~ar_core.errors.InputError` naming the column and the row) and returns a
:class:`Series`. ``split(series, seq_len, pred_len, protocol)`` cuts it into train /
validation / test rows and fits the standard scaler on the training rows only:

* ``ett-hour`` (Informer / Time-Series-Library ``Dataset_ETT_hour``): train rows
  ``[0, 8640)`` (12 months of hours), validation ``[8640 - L, 11520)``, test
  ``[11520 - L, 14400)`` (4 months each), L the look-back, so the first window of a split
  may read the previous split's last L rows as its input and every target lies inside
  its split; the rows after 14400 are unused.
* ``chronological`` (``Dataset_Custom``): 70 % / 10 % / 20 % of the rows in time order,
  with the same L-row overlap.

Windows are stride-1 (``windows``): window i reads rows ``[i, i + L)`` of the split and
predicts ``[i + L, i + L + H)``; metrics are computed on the scaled values, as published.
``features="S"`` keeps the target column; ``"M"`` keeps every numeric column (the models
treat them channel-independently: each channel a univariate series).

Notation: T rows, C channels, L look-back (``seq_len``), H horizon (``pred_len``), N
windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ar_core.errors import ConfigError, InputError

Features = Literal["S", "M"]
Protocol = Literal["auto", "ett-hour", "chronological"]

ETT_HOURS_PER_MONTH = 30 * 24
ETT_BORDERS = (
    12 * ETT_HOURS_PER_MONTH,  # 8640: end of train
    16 * ETT_HOURS_PER_MONTH,  # 11520: end of validation
    20 * ETT_HOURS_PER_MONTH,  # 14400: end of test
)


def bundled_csv(name: str = "ETTh1.csv") -> Path:
    """Path of a CSV shipped with the package (``ETTh1.csv``: Zhou et al. 2021, CC BY-ND 4.0)."""
    path = Path(str(resources.files("ar_timeseries") / "data" / name))
    if not path.is_file():
        raise InputError(f"the package has no bundled file {name!r}; reinstall ar-timeseries")
    return path


@dataclass
class Series:
    """A checked multichannel series: ``values`` (T, C) float64, ``dates`` (T,)."""

    values: np.ndarray
    dates: pd.DatetimeIndex
    columns: list[str]
    target: str
    name: str

    def __len__(self) -> int:
        return int(self.values.shape[0])


def _date_column(frame: pd.DataFrame, date_column: str | None) -> str:
    if date_column is not None:
        if date_column not in frame.columns:
            raise InputError(
                f"date column {date_column!r} is not in the CSV; its columns are "
                f"{list(frame.columns)}: pass date_column=<one of them>"
            )
        return date_column
    for name in frame.columns:
        if str(name).lower() in ("date", "datetime", "time", "timestamp", "ds"):
            return str(name)
    return str(frame.columns[0])  # Time-Series-Library's convention: the first column


def load_csv(
    path: str | Path,
    target: str = "OT",
    features: Features = "S",
    date_column: str | None = None,
) -> Series:
    """Read and check a CSV (see the module docstring); rows are numbered as in the file
    (row 1 = the first data line, i.e. line 2 of the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a file; pass data=PATH to a CSV with a date column")
    if features not in ("S", "M"):
        raise ConfigError(
            f"features must be 'S' (the target) or 'M' (every column), got {features!r}"
        )
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable CSV ({type(exc).__name__}: {exc})") from None
    if frame.shape[1] < 2:
        raise InputError(
            f"{path} has {frame.shape[1]} column(s); it needs a date column and values"
        )
    dcol = _date_column(frame, date_column)
    if target not in frame.columns or target == dcol:
        options = [c for c in frame.columns if c != dcol]
        raise InputError(
            f"target column {target!r} is not in {path.name}; its value columns are {options}"
        )
    raw_dates = frame[dcol]
    dates = pd.to_datetime(raw_dates, errors="coerce")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise InputError(
            f"{path.name}: date column {dcol!r} has {bad.size} unparsable value(s), first at row "
            f"{row + 1} (line {row + 2}): {raw_dates.iloc[row]!r}; fix or drop those rows"
        )
    steps = np.diff(dates.to_numpy().astype("datetime64[ns]").astype(np.int64))
    back = np.flatnonzero(steps <= 0)
    if back.size:
        row = int(back[0]) + 1
        raise InputError(
            f"{path.name}: date column {dcol!r} is not strictly increasing at row {row + 1} "
            f"(line {row + 2}): {raw_dates.iloc[row]!r} follows {raw_dates.iloc[row - 1]!r}; sort "
            f"the rows by date and drop duplicates"
        )
    columns = [target] if features == "S" else [c for c in frame.columns if c != dcol]
    if features == "M":  # the target last, as Time-Series-Library orders them
        columns = [c for c in columns if c != target] + [target]
    values = frame[columns]
    for col in columns:
        numeric = pd.to_numeric(values[col], errors="coerce")
        missing = np.flatnonzero(numeric.isna().to_numpy())
        if missing.size:
            row = int(missing[0])
            raise InputError(
                f"{path.name}: column {col!r} has {missing.size} missing or non-numeric value(s), "
                f"first at row {row + 1} (line {row + 2}): {values[col].iloc[row]!r}; fill or "
                f"drop them (e.g. pandas interpolate) before forecasting"
            )
    array = values.apply(pd.to_numeric).to_numpy(dtype=np.float64)
    if not np.isfinite(array).all():
        row, col = (int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise InputError(f"{path.name}: column {columns[col]!r} is not finite at row {row + 1}")
    return Series(array, pd.DatetimeIndex(dates), columns, target, path.stem)


@dataclass
class Split:
    """One split: ``values`` (rows, C) scaled, ``dates``, ``start`` (its first row in the
    series) and ``first_target`` (index into ``values`` of its first predicted row)."""

    name: str
    values: np.ndarray
    dates: pd.DatetimeIndex
    start: int

    def num_windows(self, seq_len: int, pred_len: int) -> int:
        return max(0, self.values.shape[0] - seq_len - pred_len + 1)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    mean: np.ndarray  # (C,) of the training rows
    std: np.ndarray  # (C,)
    protocol: str
    columns: list[str]
    series: Series

    def scale(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def unscale(self, values: np.ndarray, channel: int | None = None) -> np.ndarray:
        if channel is None:
            return values * self.std + self.mean
        return values * self.std[channel] + self.mean[channel]


def borders(
    n_rows: int, seq_len: int, protocol: Literal["ett-hour", "chronological"]
) -> tuple[list[int], list[int]]:
    """(starts, ends) of train / val / test rows, as Time-Series-Library computes them."""
    if protocol == "ett-hour":
        if n_rows < ETT_BORDERS[2]:
            raise InputError(
                f"the ett-hour protocol needs {ETT_BORDERS[2]} rows (20 months of hours), the "
                f"series has {n_rows}; use protocol=chronological"
            )
        a, b, c = ETT_BORDERS
        return [0, a - seq_len, b - seq_len], [a, b, c]
    n_train = int(n_rows * 0.7)
    n_test = int(n_rows * 0.2)
    n_val = n_rows - n_train - n_test
    return (
        [0, n_train - seq_len, n_rows - n_test - seq_len],
        [n_train, n_train + n_val, n_rows],
    )


def resolve_protocol(series: Series, protocol: Protocol) -> Literal["ett-hour", "chronological"]:
    """``auto``: ett-hour for an hourly ETTh* file of at least 14400 rows, else chronological."""
    if protocol != "auto":
        return protocol
    hourly = len(series) > 1 and (series.dates[1] - series.dates[0]) == pd.Timedelta(hours=1)
    ett = series.name.lower().startswith("etth") and hourly and len(series) >= ETT_BORDERS[2]
    return "ett-hour" if ett else "chronological"


def split(series: Series, seq_len: int, pred_len: int, protocol: Protocol = "auto") -> Splits:
    """Train / val / test splits with the scaler fitted on the training rows only."""
    if seq_len < 1 or pred_len < 1:
        raise ConfigError(f"seq_len and pred_len must be positive, got {seq_len} and {pred_len}")
    kind = resolve_protocol(series, protocol)
    n = len(series)
    need = seq_len + pred_len
    if n < need:
        raise InputError(
            f"{series.name}: the series has {n} rows, fewer than seq_len + pred_len = {need}; "
            f"lower seq_len/pred_len or pass a longer series"
        )
    starts, ends = borders(n, seq_len, kind)
    if starts[1] < 0:
        raise InputError(
            f"{series.name}: the training split has {ends[0]} rows, fewer than seq_len={seq_len}; "
            f"lower seq_len or pass a longer series"
        )
    train_rows = series.values[: ends[0]]
    mean = train_rows.mean(axis=0)
    std = train_rows.std(axis=0)  # sklearn's StandardScaler: population std
    std = np.where(std > 0, std, 1.0)
    out = []
    for name, s, e in zip(("train", "val", "test"), starts, ends, strict=True):
        part = Split(name, (series.values[s:e] - mean) / std, series.dates[s:e], s)
        if part.num_windows(seq_len, pred_len) < 1:
            raise InputError(
                f"{series.name}: the {name} split has {e - s} rows, fewer than seq_len + pred_len "
                f"= {need}, so no window fits; lower seq_len/pred_len or pass a longer series "
                f"({n} rows)"
            )
        out.append(part)
    return Splits(out[0], out[1], out[2], mean, std, kind, series.columns, series)


def windows(
    values: np.ndarray, seq_len: int, pred_len: int, stride: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stride-``stride`` windows of a (rows, C) split as channel-independent rows:
    inputs (N * C, L), targets (N * C, H) and each row's window start (N * C,)."""
    n = values.shape[0] - seq_len - pred_len + 1
    if n < 1:
        raise InputError(
            f"{values.shape[0]} rows hold no window of seq_len + pred_len = {seq_len + pred_len}"
        )
    starts = np.arange(0, n, stride)
    idx_x = starts[:, None] + np.arange(seq_len)  # (N, L)
    idx_y = starts[:, None] + seq_len + np.arange(pred_len)  # (N, H)
    c = values.shape[1]
    x = values[idx_x].transpose(0, 2, 1).reshape(-1, seq_len)  # (N * C, L)
    y = values[idx_y].transpose(0, 2, 1).reshape(-1, pred_len)
    return x.astype(np.float32), y.astype(np.float32), np.repeat(starts, c)


def future_dates(dates: pd.DatetimeIndex, n: int) -> pd.DatetimeIndex:
    """``dates`` extended by ``n`` steps of its median spacing (timestamps of forecasts)."""
    if len(dates) < 2:
        step = pd.Timedelta(hours=1)
    else:
        ns = np.diff(dates.to_numpy().astype("datetime64[ns]").astype(np.int64))
        step = pd.Timedelta(int(np.median(ns)), unit="ns")
    extra = [dates[-1] + step * k for k in range(1, n + 1)]
    return dates.append(pd.DatetimeIndex(extra))
