"""Training and evaluating forecasters on :class:`~ar_timeseries.data.Splits`.

``WindowBatches`` samples random (window, channel) rows of a split for ar-core's
Trainer; ``train_forecaster`` trains any module with ``loss(x, y, pos)``;
``evaluate`` computes MSE / MAE on the scaled values over a split's stride-``stride``
windows (stride 1 = the published protocol) for each horizon (the windows of horizon H are
those whose H targets lie inside the split, as in Time-Series-Library where each horizon is
its own run). ``forecast_at`` forecasts one origin of a raw series (used by the causality
tests and ``ar sample``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ar_core.trainer import TrainConfig, Trainer
from ar_timeseries.data import Split, windows

ForecastFn = Callable[[Tensor, int, Tensor], Tensor]  # (x (B, L), horizon, pos (B,)) -> (B, H)


class WindowBatches:
    """``data(generator, batch_size) -> (x (B, L), y (B, H), pos (B,))`` from a split:
    random window starts (multiples of ``stride``) and channels, all randomness from
    ``generator``."""

    def __init__(self, split: Split, seq_len: int, target_len: int, stride: int = 1) -> None:
        self.values = torch.as_tensor(split.values, dtype=torch.float32)  # (rows, C)
        self.start = split.start
        self.seq_len, self.target_len = seq_len, target_len
        self.n = split.num_windows(seq_len, target_len)
        self.stride = max(1, stride)

    def __call__(
        self, generator: torch.Generator, batch_size: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = -(-self.n // self.stride)
        s = torch.randint(0, n, (batch_size,), generator=generator) * self.stride
        c = torch.randint(0, self.values.shape[1], (batch_size,), generator=generator)
        ix = s[:, None] + torch.arange(self.seq_len + self.target_len)
        rows = self.values[ix, c[:, None]]  # (B, L + H)
        return rows[:, : self.seq_len], rows[:, self.seq_len :], s + self.start


def _loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    x, y, pos = batch
    return model.loss(x, y, pos)  # type: ignore[operator, no-any-return]


def train_forecaster(
    model: nn.Module,
    data: WindowBatches,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: bool = False,
    val: Split | None = None,
    val_every: int = 0,
    val_windows: int = 256,
) -> tuple[float, list[tuple[float, float]]]:
    """Train the trainable parameters with AdamW (no decay, cosine schedule): (seconds,
    loss curve). With ``val`` and ``val_every``, the validation MSE at the training
    horizon (``val_windows`` windows evenly spaced) is measured every ``val_every``
    updates and the trainable weights of the best check are kept (early stopping by
    model selection, as the published protocol selects on the validation split)."""
    config = TrainConfig.build(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.0,
        warmup_steps=max(1, steps // 20),
        seed=seed,
        out_dir=out_dir,
        progress=progress,
        log_every=max(1, steps // 50),
    )
    start = time.perf_counter()
    trainer = Trainer(model, _loss, data, config)
    losses: list[float] = []
    if val is None or val_every <= 0:
        losses = trainer.train()
    else:
        fn = model_fn(model)
        best: tuple[float, dict[str, Tensor]] | None = None
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        for until in [*range(val_every, steps, val_every), steps]:
            losses += trainer.train(until=until)
            mse = evaluate(fn, val, data.seq_len, [data.target_len], max_windows=val_windows)
            score = mse[data.target_len]["mse"]
            if best is None or score < best[0]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}
                best = (score, state)
        assert best is not None
        model.load_state_dict(best[1], strict=False)
    model.eval()
    seconds = time.perf_counter() - start
    every = max(1, len(losses) // 50)
    curve = [(float(i + 1), float(np.mean(losses[max(0, i - every + 1) : i + 1])))
             for i in range(every - 1, len(losses), every)]  # fmt: skip
    return seconds, curve


@torch.no_grad()
def predict(
    fn: ForecastFn,
    split: Split,
    seq_len: int,
    horizon: int,
    stride: int = 1,
    batch_size: int = 512,
    max_windows: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forecasts, targets, window starts) over the split's windows for ``horizon``."""
    x, y, starts = windows(split.values, seq_len, horizon, stride)
    if max_windows is not None and x.shape[0] > max_windows:
        keep = np.linspace(0, x.shape[0] - 1, max_windows).round().astype(int)
        x, y, starts = x[keep], y[keep], starts[keep]
    pos = torch.as_tensor(starts + split.start)
    xt = torch.as_tensor(x)
    out = [
        fn(xt[i : i + batch_size], horizon, pos[i : i + batch_size]).float().numpy()
        for i in range(0, xt.shape[0], batch_size)
    ]
    return np.concatenate(out), y, starts


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    err = pred.astype(np.float64) - true
    return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}


def evaluate(
    fn: ForecastFn,
    split: Split,
    seq_len: int,
    horizons: Sequence[int],
    stride: int = 1,
    max_windows: int | None = None,
) -> dict[int, dict[str, float]]:
    """MSE / MAE per horizon on the scaled values."""
    out: dict[int, dict[str, float]] = {}
    for h in horizons:
        pred, true, _ = predict(fn, split, seq_len, h, stride, max_windows=max_windows)
        out[h] = {**scores(pred, true), "windows": float(true.shape[0])}
    return out


@torch.no_grad()
def evaluate_nested(
    fn: ForecastFn,
    split: Split,
    seq_len: int,
    horizons: Sequence[int],
    stride: int = 1,
    batch_size: int = 512,
) -> dict[int, dict[str, float]]:
    """:func:`evaluate` for a forecaster whose forecast of h steps is the first h of its
    longer forecasts (AutoTimes' rollout; a direct model cut to shorter horizons): one
    pass at the longest horizon over the windows of the shortest, then each horizon's own
    windows (the first ones, whose targets lie inside the split) and targets scored as
    :func:`evaluate` does. Same windows, same targets, same scores up to float rounding,
    at the cost of one horizon instead of one per horizon."""
    hs = sorted(horizons)
    x, _, starts = windows(split.values, seq_len, hs[0], stride)
    pos = torch.as_tensor(starts + split.start)
    xt = torch.as_tensor(x)
    pred = np.concatenate([
        fn(xt[i : i + batch_size], hs[-1], pos[i : i + batch_size]).float().numpy()
        for i in range(0, xt.shape[0], batch_size)
    ])  # fmt: skip
    out: dict[int, dict[str, float]] = {}
    for h in hs:
        _, y, s = windows(split.values, seq_len, h, stride)
        assert np.array_equal(s, starts[: len(s)])  # window-major: the first rows
        out[h] = {**scores(pred[: len(s), :h], y), "windows": float(y.shape[0])}
    return out


def model_fn(model: Any) -> ForecastFn:
    """A module's ``forecast(x, horizon, pos)`` as a ForecastFn (eval mode)."""
    model.eval()

    def fn(x: Tensor, horizon: int, pos: Tensor) -> Tensor:
        return model.forecast(x, horizon, pos)  # type: ignore[no-any-return]

    return fn


@torch.no_grad()
def forecast_at(
    model: Any, values: np.ndarray, origin: int, seq_len: int, horizon: int
) -> np.ndarray:
    """Forecast ``horizon`` values after row ``origin`` of a 1-D scaled series from its
    ``seq_len`` values before it (``pos`` = the window's first row)."""
    x = torch.as_tensor(values[origin - seq_len : origin], dtype=torch.float32)[None]
    pos = torch.tensor([origin - seq_len])
    return model.forecast(x, horizon, pos)[0].numpy()  # type: ignore[no-any-return]
