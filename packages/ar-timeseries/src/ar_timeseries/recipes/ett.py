"""Recipe ``timeseries-ett``: long-term forecasting of a CSV series by every model here.

data (``data=PATH`` or the bundled ETTh1; ``target``, ``features`` S/M; the ETT-hour
protocol for ETTh* files, else a chronological 70/10/20 split; scaler fitted on the
training rows) -> baselines (repeat-last, seasonal naive, DLinear trained here, ETS and
ARIMA on a subsample of test windows) -> a frozen byte-level LM trained on the Python
standard library (cached) -> AutoTimes (one model, rolled out to every horizon) and
Time-LLM (one model per horizon, or one at the longest horizon cut to shorter ones:
``timellm_per_horizon``) -> MSE and MAE per model and horizon on the scaled test
windows, trainable parameters, training seconds -> a forecast-vs-truth PNG and tables.

``ar sample DIR`` forecasts with the trained AutoTimes and DLinear: the test split of
the training CSV, or another CSV when the recipe's ``sample`` gets ``data=PATH``
(``recipe.sample(dir, n, progress, data=PATH)``; ``forecast.csv`` holds the forecast
after the last row, in the CSV's units).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pydantic
import torch

from ar_core.errors import ConfigError
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_timeseries import baselines, data, forecasting
from ar_timeseries.autotimes import AutoTimes
from ar_timeseries.lm import FrozenLM, random_lm, text_lm, trainable_parameters
from ar_timeseries.timellm import TimeLLM

ModelName = Literal[
    "repeat-last", "seasonal-naive", "dlinear", "ets", "arima", "autotimes", "timellm"
]
ALL_MODELS: list[ModelName] = [
    "repeat-last", "seasonal-naive", "dlinear", "ets", "arima", "autotimes", "timellm"
]  # fmt: skip


class TimeseriesEttConfig(pydantic.BaseModel):
    """Settings of ``timeseries-ett``; the defaults are the benchmark's ETTh1 run."""

    model_config = pydantic.ConfigDict(extra="forbid")

    data: str | None = None  # a CSV path; None = the bundled ETTh1.csv (Zhou et al. 2021)
    target: str = "OT"
    features: Literal["S", "M"] = "S"  # S: the target; M: every column, channel-independent
    date_column: str | None = None  # None: a column named date/time/..., else the first
    protocol: Literal["auto", "ett-hour", "chronological"] = (
        "auto"  # auto: ett-hour for ETTh* files, else chronological
    )
    description: str = ""  # Time-LLM's dataset description; "" = from the file name
    seq_len: int = pydantic.Field(672, ge=2)  # look-back of AutoTimes / DLinear (AutoTimes': 672)
    pred_len: int = pydantic.Field(96, ge=1)  # horizon of the plot and of `ar sample`
    horizons: list[int] = [96, 192, 336, 720]  # the protocol's four horizons
    token_len: int = pydantic.Field(96, ge=1)  # AutoTimes' segment length
    period: int = pydantic.Field(24, ge=1)  # seasonal naive and ETS season (hours in a day)
    models: list[ModelName] = list(ALL_MODELS)
    autotimes_steps: int = pydantic.Field(600, ge=1)
    autotimes_lr: float = pydantic.Field(2e-3, gt=0)
    autotimes_kind: Literal["linear", "mlp"] = "mlp"
    timestamps: bool = True  # AutoTimes' timestamp prompts
    dlinear_seq_len: int = pydantic.Field(336, ge=2)  # DLinear's own published look-back
    dlinear_fit: Literal["lstsq", "adam"] = "lstsq"  # lstsq: its exact MSE optimum (ridge on val)
    dlinear_steps: int = pydantic.Field(1000, ge=1)  # adam only
    dlinear_lr: float = pydantic.Field(5e-3, gt=0)
    timellm_seq_len: int = pydantic.Field(96, ge=16)  # Time-LLM's look-back (prompt + patches)
    timellm_steps: int = pydantic.Field(300, ge=1)
    timellm_lr: float = pydantic.Field(2e-3, gt=0)
    timellm_batch_size: int = pydantic.Field(16, ge=1)
    timellm_per_horizon: bool = True  # False: one model at max(horizons), cut to shorter ones
    batch_size: int = pydantic.Field(32, ge=1)
    val_every: int = pydantic.Field(100, ge=0)  # keep the best of these checks on val; 0 = off
    train_stride: int = pydantic.Field(1, ge=1)  # training window starts: multiples of this
    test_stride: int = pydantic.Field(1, ge=1)  # 1 = every test window (the protocol)
    stat_windows: int = pydantic.Field(40, ge=1)  # ETS / ARIMA: test windows evenly spaced
    stat_fit_rows: int = pydantic.Field(2000, ge=50)  # ETS / ARIMA fitted on the last train rows
    lm: Literal["text", "random"] = "text"  # the frozen backbone; random = the ablation
    lm_dim: int = pydantic.Field(128, ge=16)
    lm_layers: int = pydantic.Field(2, ge=1)
    lm_heads: int = pydantic.Field(4, ge=1)
    lm_steps: int = pydantic.Field(400, ge=1)  # byte-LM updates on the stdlib (cached)
    lm_seq_len: int = pydantic.Field(128, ge=8)
    lm_batch_size: int = pydantic.Field(16, ge=1)
    seed: int = 0
    progress_bar: bool = True
    threads: int = pydantic.Field(default=1, ge=0)

    @pydantic.model_validator(mode="after")
    def _check(self) -> TimeseriesEttConfig:
        if not self.horizons or any(h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive integers, got {self.horizons}")
        if "autotimes" in self.models and self.seq_len % self.token_len:
            raise ValueError(
                f"seq_len={self.seq_len} must be a multiple of token_len={self.token_len} for "
                f"AutoTimes (e.g. seq_len={self.token_len * max(1, self.seq_len // self.token_len)})"
            )
        if self.lm_dim % self.lm_heads or (self.lm_dim // self.lm_heads) % 2:
            raise ValueError(
                f"lm_dim={self.lm_dim} / lm_heads={self.lm_heads} must be a whole, even head width"
            )
        if not self.models:
            raise ValueError("models is empty; name at least one")
        return self


@dataclass
class ModelRun:
    name: str
    metrics: dict[int, dict[str, float]]
    params: int = 0
    seconds: float = 0.0
    note: str = ""
    cpu_seconds: float = 0.0  # process CPU time of training and evaluation together


@dataclass
class Experiment:
    series: data.Series
    splits: data.Splits
    runs: list[ModelRun] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    lm: FrozenLM | None = None
    lm_info: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def load_series(config: TimeseriesEttConfig, path: str | None = None) -> data.Series:
    csv = path if path is not None else config.data
    file = Path(csv) if csv else data.bundled_csv()
    return data.load_csv(file, config.target, config.features, config.date_column)


def build_lm(
    config: TimeseriesEttConfig, kind: str | None = None
) -> tuple[FrozenLM, dict[str, float]]:
    kind = kind or config.lm
    shape: dict[str, Any] = dict(
        dim=config.lm_dim, n_layers=config.lm_layers, n_heads=config.lm_heads
    )
    if kind == "random":
        return random_lm(**shape, seed=config.seed), {}
    return text_lm(
        **shape, steps=config.lm_steps, seq_len=config.lm_seq_len,
        batch_size=config.lm_batch_size, seed=config.seed, progress=config.progress_bar,
    )  # fmt: skip


def description(config: TimeseriesEttConfig, series: data.Series) -> str:
    if config.description:
        return config.description
    return (
        f"{series.name} {series.target} hourly"
        if series.name.lower().startswith("ett")
        else series.name
    )


def train_autotimes(
    config: TimeseriesEttConfig,
    lm: FrozenLM,
    splits: data.Splits,
    progress: Progress,
    timestamps: bool | None = None,
) -> tuple[AutoTimes, float, list[tuple[float, float]]]:
    """AutoTimes on the training split (next-segment MSE): (model, seconds, curve)."""
    use_ts = config.timestamps if timestamps is None else timestamps
    torch.manual_seed(config.seed)
    model = AutoTimes(
        lm, config.seq_len, config.token_len, config.autotimes_kind, use_timestamps=use_ts
    )
    model.set_timestamps(
        data.future_dates(splits.series.dates, max(config.horizons) + config.token_len)
    )
    progress(f"training AutoTimes ({lm.name}, {config.autotimes_steps} updates)")
    batches = forecasting.WindowBatches(
        splits.train, config.seq_len, config.token_len, config.train_stride
    )
    seconds, curve = forecasting.train_forecaster(
        model, batches, config.autotimes_steps, config.batch_size, config.autotimes_lr,
        config.seed, progress=config.progress_bar, val=splits.val, val_every=config.val_every,
    )  # fmt: skip
    return model, seconds, curve


def train_dlinear(
    config: TimeseriesEttConfig, splits: data.Splits, horizon: int, progress: Progress
) -> tuple[baselines.DLinear, float, list[tuple[float, float]]]:
    """DLinear for one horizon: (model, seconds, loss curve (empty for lstsq))."""
    torch.manual_seed(config.seed)
    L = config.dlinear_seq_len
    model = baselines.DLinear(L, horizon)
    if config.dlinear_fit == "lstsq":
        progress(f"fitting DLinear for horizon {horizon} (least squares)")
        start = time.perf_counter()
        x, y, _ = data.windows(splits.train.values, L, horizon, config.train_stride)
        xv, yv, _ = data.windows(splits.val.values, L, horizon)
        tx, ty, tv, tyv = (torch.as_tensor(a) for a in (x, y, xv, yv))
        model.fit_least_squares(tx, ty, tv, tyv)
        return model.eval(), time.perf_counter() - start, []
    progress(f"training DLinear for horizon {horizon} ({config.dlinear_steps} updates)")
    batches = forecasting.WindowBatches(splits.train, L, horizon, config.train_stride)
    seconds, curve = forecasting.train_forecaster(
        model, batches, config.dlinear_steps, config.batch_size, config.dlinear_lr,
        config.seed, progress=config.progress_bar, val=splits.val, val_every=config.val_every,
    )  # fmt: skip
    return model, seconds, curve


def _eval(
    config: TimeseriesEttConfig,
    fn: forecasting.ForecastFn,
    split: data.Split,
    seq_len: int,
    horizons: list[int] | None = None,
    max_windows: int | None = None,
) -> dict[int, dict[str, float]]:
    return forecasting.evaluate(
        fn, split, seq_len, horizons or config.horizons, config.test_stride, max_windows
    )


def run_experiment(config: TimeseriesEttConfig, progress: Progress) -> Experiment:
    """Every model of ``config.models`` trained and scored on the test split."""
    series = load_series(config)
    splits = data.split(series, config.seq_len, max(config.horizons), config.protocol)
    ex = Experiment(series, splits)
    L, test = config.seq_len, splits.test
    progress(
        f"{series.name}: {len(series)} rows, {len(series.columns)} channel(s), protocol "
        f"{splits.protocol}; train {len(splits.train.values)} / val {len(splits.val.values)} / "
        f"test {len(test.values)} rows (look-back {L} included)"
    )
    period = config.period
    for name in config.models:
        cpu_start = time.process_time()
        n_runs = len(ex.runs)
        if name == "repeat-last":
            ex.runs.append(
                ModelRun(name, _eval(config, lambda x, h, p: baselines.repeat_last(x, h), test, L))
            )
        elif name == "seasonal-naive":
            fn = lambda x, h, p: baselines.seasonal_naive(x, h, period)  # noqa: E731
            ex.runs.append(ModelRun(f"seasonal naive ({period})", _eval(config, fn, test, L)))
        elif name == "dlinear":
            metrics: dict[int, dict[str, float]] = {}
            seconds, params = 0.0, 0
            Ld = config.dlinear_seq_len
            dsplits = data.split(series, Ld, max(config.horizons), config.protocol)
            for h in config.horizons:
                model, s, curve = train_dlinear(config, dsplits, h, progress)
                seconds += s
                params = max(params, trainable_parameters(model))
                metrics.update(_eval(config, forecasting.model_fn(model), dsplits.test, Ld, [h]))
                ex.models[f"dlinear-{h}"] = model
                if curve and h == config.horizons[0]:
                    ex.curves["DLinear train loss"] = curve
            fit = "least squares, ridge chosen on val" if config.dlinear_fit == "lstsq" else "AdamW"
            ex.runs.append(
                ModelRun(
                    "DLinear",
                    metrics,
                    params,
                    seconds,
                    f"one model per horizon; {fit}; look-back {Ld}",
                )
            )
        elif name in ("ets", "arima"):
            ex.runs.append(_stat_run(config, name, splits, progress))
        elif name == "autotimes":
            if ex.lm is None:
                progress("preparing the frozen LM (byte-level, stdlib; cached after the first run)")
                ex.lm, ex.lm_info = build_lm(config)
            at_model, seconds, curve = train_autotimes(config, ex.lm, splits, progress)
            ex.models["autotimes"] = at_model
            ex.curves["AutoTimes train loss"] = curve
            fn = forecasting.model_fn(at_model)
            ex.runs.append(ModelRun(
                f"AutoTimes ({ex.lm.name})",
                forecasting.evaluate_nested(fn, test, L, config.horizons, config.test_stride),
                trainable_parameters(at_model), seconds, "one model rolled out to every horizon",
            ))  # fmt: skip
        elif name == "timellm":
            if ex.lm is None:
                ex.lm, ex.lm_info = build_lm(config)
            ex.runs.append(_timellm_run(config, ex, progress))
        if len(ex.runs) > n_runs:
            ex.runs[-1].cpu_seconds = time.process_time() - cpu_start
    return ex


def _timellm_run(config: TimeseriesEttConfig, ex: Experiment, progress: Progress) -> ModelRun:
    assert ex.lm is not None
    Lt = config.timellm_seq_len
    splits = data.split(ex.series, Lt, max(config.horizons), config.protocol)
    trained = config.horizons if config.timellm_per_horizon else [max(config.horizons)]
    metrics: dict[int, dict[str, float]] = {}
    seconds, params = 0.0, 0
    for h in trained:
        torch.manual_seed(config.seed)
        model = TimeLLM(ex.lm, Lt, h, description(config, ex.series))
        progress(f"training Time-LLM for horizon {h} ({config.timellm_steps} updates)")
        batches = forecasting.WindowBatches(splits.train, Lt, h, config.train_stride)
        s, curve = forecasting.train_forecaster(
            model, batches, config.timellm_steps, config.timellm_batch_size, config.timellm_lr,
            config.seed, progress=config.progress_bar, val=splits.val, val_every=config.val_every,
        )  # fmt: skip
        seconds += s
        params = max(params, trainable_parameters(model))
        fn = forecasting.model_fn(model)
        if config.timellm_per_horizon:
            metrics.update(_eval(config, fn, splits.test, Lt, [h]))
        else:  # one model cut to every horizon: one pass at the longest
            metrics.update(
                forecasting.evaluate_nested(
                    fn, splits.test, Lt, config.horizons, config.test_stride
                )
            )
        ex.models[f"timellm-{h}"] = model
        if h == trained[0]:
            ex.curves["Time-LLM train loss"] = curve
    note = (
        "one model per horizon"
        if config.timellm_per_horizon
        else f"one model (H={trained[0]}), cut"
    )
    return ModelRun(f"Time-LLM ({ex.lm.name})", metrics, params, seconds, f"{note}; look-back {Lt}")


def _stat_run(
    config: TimeseriesEttConfig, name: str, splits: data.Splits, progress: Progress
) -> ModelRun:
    L = config.seq_len
    start = time.perf_counter()
    rows = splits.train.values[-config.stat_fit_rows :, -1]  # the target's last train rows
    stat: baselines.EtsBaseline | baselines.ArimaBaseline
    if name == "ets":
        progress(f"ETS (Holt-Winters, season {config.period}) fitted on {len(rows)} training rows")
        stat = baselines.EtsBaseline(rows, config.period)
        label = "ETS (statsmodels)"
    else:
        progress(f"ARIMA(2,1,1) fitted on {len(rows)} training rows")
        stat = baselines.ArimaBaseline(rows)
        label = "ARIMA(2,1,1) (statsmodels)"

    def fn(x: torch.Tensor, h: int, p: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(stat.forecast(x.numpy(), h))

    note = f"fitted once on the last {len(rows)} train rows, run over each window"
    metrics = forecasting.evaluate(
        fn,
        splits.test,
        L,
        config.horizons,
        1,
        max_windows=config.stat_windows * len(splits.columns),
    )
    return ModelRun(
        label,
        metrics,
        0,
        time.perf_counter() - start,
        f"{note}; {config.stat_windows} test windows",
    )


# -- report -------------------------------------------------------------------------------


def results_tables(runs: list[ModelRun], horizons: list[int], note: str = "") -> list[Table]:
    """Two tables: MSE (with trainable parameters, training seconds, test windows) and MAE
    per model and horizon; each model's own note goes into the second table's note."""
    mse_cols = ["model", *[f"MSE {h}" for h in horizons], "trainable params", "train s", "windows"]
    mse_rows = [
        [
            r.name,
            *[round(r.metrics[h]["mse"], 4) if h in r.metrics else "-" for h in horizons],
            r.params,
            round(r.seconds, 1),
            int(r.metrics[horizons[0]]["windows"]) if horizons[0] in r.metrics else "-",
        ]
        for r in runs
    ]
    mae_rows = [
        [r.name, *[round(r.metrics[h]["mae"], 4) if h in r.metrics else "-" for h in horizons]]
        for r in runs
    ]
    notes = "; ".join(f"{r.name}: {r.note}" for r in runs if r.note)
    return [
        Table("test MSE by horizon", mse_cols, mse_rows, note=note),
        Table(
            "test MAE by horizon", ["model", *[f"MAE {h}" for h in horizons]], mae_rows, note=notes
        ),
    ]


def plot_forecasts(ex: Experiment, config: TimeseriesEttConfig, path: Path) -> Path:
    """Look-back tail, truth and each trained model's forecast on one test window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, L = config.pred_len, config.seq_len
    test = ex.splits.test
    channel = len(ex.splits.columns) - 1  # the target (last in M)
    values = test.values[:, channel]
    origin = L + (test.num_windows(L, H) // 2)  # a window in the middle of the test split
    fig, ax = plt.subplots(figsize=(9, 3.5))
    t = np.arange(-min(L, 2 * H), H)
    ax.plot(t, values[origin + t[0] : origin + H], color="black", lw=1.2, label="truth")
    x = torch.as_tensor(values[origin - L : origin], dtype=torch.float32)[None]
    pos = torch.tensor([test.start + origin - L])
    lines: dict[str, Callable[[], torch.Tensor]] = {
        "repeat-last": lambda: baselines.repeat_last(x, H),
        f"seasonal naive ({config.period})": lambda: baselines.seasonal_naive(x, H, config.period),
    }
    if f"dlinear-{H}" in ex.models:
        Ld = config.dlinear_seq_len
        xd = torch.as_tensor(values[origin - Ld : origin], dtype=torch.float32)[None]
        lines["DLinear"] = lambda: ex.models[f"dlinear-{H}"].forecast(xd, H, pos)
    if "autotimes" in ex.models:
        lines["AutoTimes"] = lambda: ex.models["autotimes"].forecast(x, H, pos)
    for key in (f"timellm-{H}", f"timellm-{max(config.horizons)}"):
        if key in ex.models and ex.models[key].pred_len >= H:
            m, Lt = ex.models[key], config.timellm_seq_len
            xt = torch.as_tensor(values[origin - Lt : origin], dtype=torch.float32)[None]
            lines["Time-LLM"] = _bind(m, xt, H)
            break
    for label, make in lines.items():
        if config.period > L and "seasonal" in label:
            continue
        with torch.no_grad():
            ax.plot(np.arange(H), make()[0].numpy(), lw=1.0, label=label)
    ax.axvline(0, color="grey", ls=":")
    ax.set_xlabel(f"hours from the forecast origin (test row {origin})")
    ax.set_ylabel(f"{ex.series.target} (scaled)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bind(model: Any, x: torch.Tensor, horizon: int) -> Callable[[], torch.Tensor]:
    return lambda: model.forecast(x, horizon)  # type: ignore[no-any-return]


def save_models(ex: Experiment, config: TimeseriesEttConfig, folder: Path) -> None:
    """AutoTimes' trainable weights, the LM and the DLinear of ``pred_len`` under ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if "autotimes" in ex.models and ex.lm is not None:
        model = ex.models["autotimes"]
        trainable = {
            k: v.detach().contiguous()
            for k, v in model.state_dict().items()
            if not k.startswith("lm.")
        }
        save_file(trainable, str(folder / "autotimes.safetensors"))
        cast(Any, ex.lm.lm).save_pretrained(folder / "lm")
    if f"dlinear-{config.pred_len}" in ex.models:
        state = ex.models[f"dlinear-{config.pred_len}"].state_dict()
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(folder / "dlinear.safetensors")
        )


class TimeseriesEttRecipe(RecipeBase):
    name = "timeseries-ett"
    description = "long-term forecasting (ETTh1 or any CSV): AutoTimes, Time-LLM and baselines"
    config_class = TimeseriesEttConfig
    in_demo = True

    def demo_config(self) -> TimeseriesEttConfig:
        # a small LM (64 wide, 80 updates, cached), short trainings, every 24th test window,
        # ETS/ARIMA on 4 windows; measured ~25 s of CPU on one thread with an empty cache
        return TimeseriesEttConfig(
            autotimes_steps=150, timellm_steps=30, timellm_batch_size=8,
            timellm_per_horizon=False, train_stride=4, test_stride=24, stat_windows=4,
            stat_fit_rows=300, lm_dim=64, lm_steps=80, lm_seq_len=64, lm_batch_size=8,
            progress_bar=False,
        )  # fmt: skip

    def _run(self, config: TimeseriesEttConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        if config.pred_len > max(config.horizons):
            raise ConfigError(
                f"pred_len={config.pred_len} exceeds the longest horizon {max(config.horizons)}; "
                f"add it to horizons"
            )
        if config.pred_len not in config.horizons:
            config = config.model_copy(
                update={"horizons": sorted({*config.horizons, config.pred_len})}
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        ex = run_experiment(config, progress)
        plot = plot_forecasts(ex, config, out_dir / "forecast.png")
        save_models(ex, config, out_dir / "model")
        metrics = {
            f"{r.name} mse {h}": round(m["mse"], 5) for r in ex.runs for h, m in r.metrics.items()
        }
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        stride = (
            "every test window"
            if config.test_stride == 1
            else f"every {config.test_stride}th test window"
        )
        note = (
            f"{ex.series.name} {config.features} target {config.target}, protocol "
            f"{ex.splits.protocol}, look-back {config.seq_len}; MSE/MAE on the scaled values "
            f"(scaler fitted on the training rows), {stride}; seed {config.seed}"
        )
        h0 = config.pred_len
        best = {r.name: r.metrics[h0]["mse"] for r in ex.runs if h0 in r.metrics}
        summary = ", ".join(f"{k} {v:.4f}" for k, v in best.items())
        if ex.lm_info:
            metrics["lm_held_out_bits_per_byte"] = round(ex.lm_info["held_out_bits_per_byte"], 4)
        return RecipeResult(
            title=f"timeseries-ett: {ex.series.name} ({config.features}, {config.target})",
            summary=f"test MSE at horizon {h0}: {summary}",
            tables=results_tables(ex.runs, config.horizons, note),
            images=[(f"forecasts vs truth, horizon {h0}", plot)],
            curves=ex.curves,
            metrics=metrics,
        )

    def sample(
        self, checkpoint_dir: Path, n: int, progress: Progress, **overrides: Any
    ) -> RecipeResult:
        from ar_timeseries.sample import forecast_checkpoint

        config: TimeseriesEttConfig = self.read_config(Path(checkpoint_dir), **overrides)
        return forecast_checkpoint(Path(checkpoint_dir), config, n, progress)


recipe = TimeseriesEttRecipe()
