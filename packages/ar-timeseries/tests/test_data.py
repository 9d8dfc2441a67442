"""Data: the ETT-hour protocol's published borders, the scaler, windows, and bad CSVs."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ar_core.errors import InputError
from ar_timeseries import data


@pytest.fixture(scope="module")
def etth1() -> data.Series:
    return data.load_csv(data.bundled_csv(), "OT", "S")


def test_bundled_etth1_is_the_published_file(etth1: data.Series) -> None:
    assert len(etth1) == 17420 and etth1.columns == ["OT"]
    assert str(etth1.dates[0]) == "2016-07-01 00:00:00"
    m = data.load_csv(data.bundled_csv(), "OT", "M")
    assert m.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


@pytest.mark.parametrize("seq_len", [96, 336, 672])
def test_ett_hour_splits_equal_the_published_borders(etth1: data.Series, seq_len: int) -> None:
    s = data.split(etth1, seq_len, 96)
    assert s.protocol == "ett-hour"
    # Time-Series-Library Dataset_ETT_hour: border1s = [0, 8640 - L, 11520 - L],
    # border2s = [8640, 11520, 14400]
    assert (s.train.start, s.val.start, s.test.start) == (0, 8640 - seq_len, 11520 - seq_len)
    assert len(s.train.values) == 8640
    assert len(s.val.values) == len(s.test.values) == 2880 + seq_len
    # stride-1 windows: len = rows - L - H + 1 (2785 test windows at H = 96, any L)
    assert s.test.num_windows(seq_len, 96) == 2785
    assert s.test.num_windows(seq_len, 720) == 2161
    assert s.train.num_windows(seq_len, 96) == 8640 - seq_len - 96 + 1
    # the first test target is row 11520 whatever the look-back
    assert s.test.start + seq_len == 11520


def test_scaler_is_fitted_on_training_rows_only(etth1: data.Series) -> None:
    s = data.split(etth1, 96, 96)
    train = etth1.values[:8640, 0]
    assert s.mean[0] == pytest.approx(train.mean(), rel=1e-12)
    assert s.std[0] == pytest.approx(train.std(), rel=1e-12)
    changed = data.Series(etth1.values.copy(), etth1.dates, etth1.columns, "OT", "ETTh1")
    changed.values[9000:] += 100.0  # val and test rows: the scaler must not move
    s2 = data.split(changed, 96, 96)
    assert np.array_equal(s.mean, s2.mean) and np.array_equal(s.std, s2.std)
    assert np.allclose(s.train.values[:, 0], (train - train.mean()) / train.std())


def test_windows_are_stride_one_and_channel_independent() -> None:
    values = np.arange(20, dtype=float).reshape(10, 2)  # rows t: (2t, 2t + 1)
    x, y, starts = data.windows(values, 3, 2)
    assert x.shape == (6 * 2, 3) and y.shape == (12, 2)
    assert np.array_equal(x[0], [0, 2, 4]) and np.array_equal(x[1], [1, 3, 5])
    assert np.array_equal(y[2], [8, 10])  # window 1, channel 0: rows 4, 5
    assert np.array_equal(starts[:4], [0, 0, 1, 1])


def _csv(tmp_path: Path, n: int = 300, **edits: object) -> Path:
    dates = pd.date_range("2020-01-01", periods=n, freq="h").astype(str).tolist()
    t = np.arange(n)
    frame = pd.DataFrame({"date": dates, "load": np.sin(t / 5.0), "temp": np.cos(t / 7.0)})
    frame = frame.astype(object)
    for key, (row, value) in edits.items():  # type: ignore[misc]
        frame.loc[row, key] = value
    path = tmp_path / "series.csv"
    frame.to_csv(path, index=False)
    return path


def test_chronological_split_for_other_csvs(tmp_path: Path) -> None:
    s = data.split(data.load_csv(_csv(tmp_path, 1000), "temp", "M"), 48, 24)
    assert s.protocol == "chronological" and s.columns == ["load", "temp"]  # target last
    assert (s.train.start, len(s.train.values)) == (0, 700)
    assert (s.val.start, s.test.start) == (700 - 48, 800 - 48)
    assert len(s.val.values) == 100 + 48 and len(s.test.values) == 200 + 48


def test_missing_value_names_column_and_row(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"column 'load'.*row 8 \(line 9"):
        data.load_csv(_csv(tmp_path, load=(7, "")), "load")


def test_unparsable_date_names_the_row(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unparsable.*row 5 .*'yesterday'"):
        data.load_csv(_csv(tmp_path, date=(4, "yesterday")), "load")


def test_non_monotone_dates_name_the_row(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"not strictly increasing at row 11"):
        data.load_csv(_csv(tmp_path, date=(10, "2019-12-31 00:00:00")), "load")


def test_unknown_target_lists_the_columns(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"target column 'OT'.*\['load', 'temp'\]"):
        data.load_csv(_csv(tmp_path), "OT")


def test_series_too_short(tmp_path: Path) -> None:
    series = data.load_csv(_csv(tmp_path, 100), "load")
    with pytest.raises(InputError, match="fewer than seq_len"):
        data.split(series, 96, 24)
    with pytest.raises(InputError, match="val split has 20 rows"):
        data.split(series, 10, 24)  # 10 val rows + the 10-row look-back: no window of 34


def test_future_dates_continue_the_spacing(etth1: data.Series) -> None:
    ext = data.future_dates(etth1.dates, 3)
    assert len(ext) == len(etth1) + 3
    assert str(ext[-1]) == "2018-06-26 22:00:00"
