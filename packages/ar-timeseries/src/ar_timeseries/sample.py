"""``ar sample`` for ``timeseries-ett``: forecast a CSV with a trained checkpoint.

The checkpoint's AutoTimes (its frozen LM and trained embedder/decoder/scale) and DLinear
(of ``pred_len``) score the CSV's test split (no retraining: for another CSV this is
transfer) next to repeat-last, and forecast ``pred_len`` steps after the CSV's last row
(``forecast.csv`` in the CSV's own units, dates continued at its median spacing).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ar_core.errors import CheckpointError
from ar_core.model import Transformer
from ar_core.recipes import Progress, RecipeResult, Table
from ar_timeseries import baselines, data, forecasting
from ar_timeseries.autotimes import AutoTimes
from ar_timeseries.lm import FrozenLM

if TYPE_CHECKING:  # pragma: no cover
    from ar_timeseries.recipes.ett import TimeseriesEttConfig


def load_autotimes(folder: Path, config: TimeseriesEttConfig) -> AutoTimes:
    from safetensors.torch import load_file

    weights = folder / "autotimes.safetensors"
    if not weights.is_file():
        raise CheckpointError(
            f"{folder} holds no autotimes.safetensors; train with models including autotimes"
        )
    lm = FrozenLM(Transformer.from_pretrained(folder / "lm"), name="stdlib byte LM")
    model = AutoTimes(lm, config.seq_len, config.token_len, config.autotimes_kind,
                      use_timestamps=config.timestamps)  # fmt: skip
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if unexpected or [k for k in missing if not k.startswith("lm.")]:
        raise CheckpointError(f"{weights} does not match the config: {missing} {unexpected}")
    return model.eval()


def load_dlinear(folder: Path, seq_len: int, pred_len: int) -> baselines.DLinear | None:
    from safetensors.torch import load_file

    path = folder / "dlinear.safetensors"
    if not path.is_file():
        return None
    model = baselines.DLinear(seq_len, pred_len)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def forecast_checkpoint(
    checkpoint_dir: Path, config: TimeseriesEttConfig, n: int, progress: Progress
) -> RecipeResult:
    from ar_timeseries.recipes.ett import load_series

    folder = checkpoint_dir / "model"
    series = load_series(config)
    H, L = config.pred_len, config.seq_len
    splits = data.split(series, L, H, config.protocol)
    progress(f"forecasting {series.name} ({len(series)} rows) with {folder}")
    model = load_autotimes(folder, config)
    model.set_timestamps(data.future_dates(series.dates, H + config.token_len))
    fns: dict[str, Any] = {
        "repeat-last": lambda x, h, p: baselines.repeat_last(x, h),
        "AutoTimes": forecasting.model_fn(model),
    }
    rows = []
    metrics: dict[str, float] = {}
    runs = [(name, fn, splits, L) for name, fn in fns.items()]
    dlinear = load_dlinear(folder, config.dlinear_seq_len, H)
    if dlinear is not None:
        Ld = config.dlinear_seq_len
        runs.append(
            (
                "DLinear",
                forecasting.model_fn(dlinear),
                data.split(series, Ld, H, config.protocol),
                Ld,
            )
        )
    for name, fn, sp, lookback in runs:
        m = forecasting.evaluate(fn, sp.test, lookback, [H], config.test_stride)[H]
        rows.append([name, round(m["mse"], 4), round(m["mae"], 4), int(m["windows"])])
        metrics[f"{name} mse"] = m["mse"]
    # the forecast after the last row, every channel, in the CSV's units
    scaled = splits.scale(series.values)  # (T, C)
    x = torch.as_tensor(scaled[-L:].T.copy(), dtype=torch.float32)  # (C, L)
    pos = torch.full((x.shape[0],), len(series) - L)
    with torch.no_grad():
        pred = model.forecast(x, H, pos).numpy().T  # (H, C)
    dates = data.future_dates(series.dates, H)[-H:]
    frame = pd.DataFrame(splits.unscale(pred), columns=series.columns)
    frame.insert(0, "date", dates)
    out_csv = checkpoint_dir / "forecast.csv"
    frame.to_csv(out_csv, index=False)
    plot = _plot(
        series,
        splits.unscale(scaled[-min(len(series), 3 * H) :]),
        frame,
        checkpoint_dir / "forecast_sample.png",
    )
    return RecipeResult(
        title=f"timeseries-ett forecast: {series.name}",
        summary=(
            f"AutoTimes forecast of the {H} steps after {series.dates[-1]} written to {out_csv}; "
            f"test-split MSE at horizon {H} (scaled): " + ", ".join(f"{r[0]} {r[1]}" for r in rows)
        ),
        tables=[
            Table(
                f"{series.name} test split, horizon {H}",
                ["model", "MSE", "MAE", "windows"],
                rows,
                note=f"{n} requested; windows every {config.test_stride} rows",
            )
        ],
        images=[("history and forecast after the last row (target)", plot)],
        metrics=metrics,
    )


def _plot(series: data.Series, history: np.ndarray, forecast: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    k = history.shape[0]
    ax.plot(series.dates[-k:], history[:, -1], color="black", lw=1.0, label="history")
    ax.plot(forecast["date"], forecast[series.target], lw=1.2, label="AutoTimes forecast")
    ax.set_ylabel(series.target)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
