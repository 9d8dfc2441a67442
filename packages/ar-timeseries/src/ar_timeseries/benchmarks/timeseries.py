"""``ar bench timeseries``: the ETTh1 long-term forecasting table, and what the LM adds.

``ar bench timeseries -- [--quick] [--features S[,M]] [--out FILE]``

1. The ETTh1 table (the Time-Series-Library protocol: 12/4/4-month split, scaler on the
   training rows, stride-1 test windows, MSE / MAE on the scaled values; horizons 96, 192,
   336, 720) for repeat-last, seasonal naive (24 h), DLinear, ETS and ARIMA (a stated
   subsample of test windows), AutoTimes (one model rolled out to every horizon) and
   Time-LLM, each with its trainable parameters and training seconds, next to the
   published DLinear, PatchTST and AutoTimes numbers (their look-backs stated).
2. The ablation: AutoTimes and Time-LLM (horizon 96) on a randomly initialised LM of the
   same shape instead of the stdlib-trained one.
3. In-context vs zero-shot: the AutoTimes trained on OT forecasts OT and every other ETTh1
   channel (never trained on) from a 384-step look-back alone, from the same look-back
   with the 288 steps that ended one week (168 h) earlier in front as a demonstration
   (same 7-token context length the model was trained on), and from 672 contiguous steps.
4. The margins at (S, OT, 96) of AutoTimes and DLinear over repeat-last and seasonal naive.

``--quick`` runs the recipe's demo settings (small LM, short training, every 24th test
window): a smoke run, not the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ar_timeseries import data, forecasting
from ar_timeseries.recipes.ett import (
    ALL_MODELS,
    ModelRun,
    TimeseriesEttConfig,
    build_lm,
    recipe,
    run_experiment,
    train_autotimes,
)

HORIZONS = [96, 192, 336, 720]

# Published ETTh1 numbers (MSE, MAE) per horizon 96, 192, 336, 720 and where each was read.
# "checked": read here from the source named (a table image in the authors' repository);
# "unchecked": the paper table itself was not at hand, see "source".
_LTSF = "github.com/cure-lab/LTSF-Linear"
_PTST = "github.com/yuqinie98/PatchTST"
PUBLISHED: list[dict[str, Any]] = [
    {"model": "DLinear (Zeng et al. 2023)", "features": "S", "look-back": 336,
     "mse": [0.056, 0.071, 0.098, 0.189], "mae": [0.180, 0.204, 0.244, 0.359],
     "checked": True,
     "source": f"DLinear paper Table 1 (univariate ETT), {_LTSF} README pics/Uni-results.png; "
               "look-back 336: scripts/EXP-LongForecasting/Linear/univariate/etth1.sh "
               "(another image in the repo, pics/DLinear/DLinear_Univariate_Results.png, has "
               "0.119 / 0.274 at 720)"},
    {"model": "PatchTST/42 (Nie et al. 2023)", "features": "S", "look-back": 336,
     "mse": [0.055, 0.071, 0.081, 0.087], "mae": [0.179, 0.205, 0.225, 0.232],
     "checked": False,
     "source": "PatchTST paper, univariate table (not read here: the repository shows only "
               "its multivariate table; look-back 336 = 42 patches of 16, stride 8: "
               f"{_PTST} scripts/PatchTST/univariate/etth1.sh)"},
    {"model": "PatchTST/64 (Nie et al. 2023)", "features": "S", "look-back": 512,
     "mse": [0.059, 0.074, 0.076, 0.087], "mae": [0.189, 0.215, 0.220, 0.236],
     "checked": False,
     "source": "PatchTST paper, univariate table (not read here; look-back 512 = 64 patches)"},
    {"model": "DLinear (Zeng et al. 2023)", "features": "M", "look-back": 336,
     "mse": [0.375, 0.405, 0.439, 0.472], "mae": [0.399, 0.416, 0.443, 0.490],
     "checked": True,
     "source": f"PatchTST paper Table 3, {_PTST} README pic/table3.png; the same in the "
               f"DLinear paper Table 2, {_LTSF} README pics/Mul-results.png"},
    {"model": "PatchTST/42 (Nie et al. 2023)", "features": "M", "look-back": 336,
     "mse": [0.375, 0.414, 0.431, 0.449], "mae": [0.399, 0.421, 0.436, 0.466],
     "checked": True, "source": f"PatchTST paper Table 3, {_PTST} README pic/table3.png"},
    {"model": "PatchTST/64 (Nie et al. 2023)", "features": "M", "look-back": 512,
     "mse": [0.370, 0.413, 0.422, 0.447], "mae": [0.400, 0.429, 0.440, 0.468],
     "checked": True, "source": f"PatchTST paper Table 3, {_PTST} README pic/table3.png"},
    {"model": "Repeat (repeat-last; Zeng et al. 2023)", "features": "M", "look-back": 1,
     "mse": [1.295, 1.325, 1.323, 1.339], "mae": [0.713, 0.733, 0.744, 0.756],
     "checked": True,
     "source": f"DLinear paper Table 2, column Repeat, {_LTSF} README pics/Mul-results.png"},
    {"model": "AutoTimes, LLaMA-7B (Liu et al. 2024)", "features": "M", "look-back": 672,
     "mse": [0.360, 0.388, 0.401, 0.406], "mae": [0.400, 0.419, 0.429, 0.440],
     "checked": False,
     "source": "AutoTimes paper, full one-for-all table (not read here); their averages "
               "0.389 / 0.422 are the averages in github.com/thuml/AutoTimes README "
               "figures/one-for-all_results.png (one model, look-back 672: "
               "scripts/time_series_forecasting/long_term/AutoTimes_ETTh1.sh)"},
]  # fmt: skip


def full_config(features: str) -> TimeseriesEttConfig:
    return TimeseriesEttConfig(features=features, progress_bar=False)  # type: ignore[arg-type]


def quick_config(features: str) -> TimeseriesEttConfig:
    return recipe.demo_config().model_copy(update={"features": features})


def _row(run: ModelRun, lookback: int | str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": run.name, "look-back": lookback}
    for h in HORIZONS:
        if h in run.metrics:
            row[f"MSE {h}"] = round(run.metrics[h]["mse"], 4)
    for h in HORIZONS:
        if h in run.metrics:
            row[f"MAE {h}"] = round(run.metrics[h]["mae"], 4)
    row["test windows (96)"] = (
        int(run.metrics[HORIZONS[0]]["windows"]) if HORIZONS[0] in run.metrics else None
    )
    row["trainable params"] = run.params
    row["train s"] = round(run.seconds, 1)
    row["CPU s (train + test)"] = round(run.cpu_seconds, 1)
    row["note"] = run.note
    return row


def _lookback(config: TimeseriesEttConfig, name: str) -> int:
    if name.startswith("DLinear"):
        return config.dlinear_seq_len
    if name.startswith("Time-LLM"):
        return config.timellm_seq_len
    return config.seq_len


def in_context(config: TimeseriesEttConfig, model: Any, progress: Any) -> list[dict[str, Any]]:
    """Zero-shot (384), in-context (288 one week earlier + 384) and contiguous (672)."""
    series = data.load_csv(data.bundled_csv(), config.target, "M")
    splits = data.split(series, config.seq_len, 96)
    test = splits.test
    short, ctx_len, week = 384, 288, 168
    rows = []
    for c, column in enumerate(splits.columns):
        values = torch.as_tensor(test.values[:, c], dtype=torch.float32)
        # origins with a full 672-step look-back and the demonstration inside the split
        origins = np.arange(config.seq_len, len(values) - 96 + 1, config.test_stride * 4)
        origins = origins[origins - short - week - ctx_len >= 0]
        idx = torch.as_tensor(origins)
        x_short = torch.stack([values[o - short : o] for o in origins.tolist()])
        x_long = torch.stack([values[o - config.seq_len : o] for o in origins.tolist()])
        ctx = torch.stack(
            [values[o - short - week - ctx_len : o - short - week] for o in origins.tolist()]
        )
        truth = torch.stack([values[o : o + 96] for o in origins.tolist()])
        pos_short = idx - short + test.start
        pos_ctx = idx - short - week - ctx_len + test.start
        pos_long = idx - config.seq_len + test.start
        with torch.no_grad():
            preds = {
                "zero-shot (look-back 384)": model.forecast(x_short, 96, pos_short),
                "in-context (288 from a week earlier + 384)": model.forecast(
                    x_short, 96, pos_short, ctx, pos_ctx
                ),
                "contiguous look-back 672": model.forecast(x_long, 96, pos_long),
            }
        row: dict[str, Any] = {"channel": column, "trained on": column == config.target}
        for name, p in preds.items():
            row[f"MSE {name}"] = round(float(((p - truth) ** 2).mean()), 4)
        row["windows"] = len(origins)
        rows.append(row)
        progress(f"in-context on {column}: {row}")
    return rows


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="ar bench timeseries", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo settings (a smoke run)")
    parser.add_argument("--features", default="S", help="S, M or S,M")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    parser.add_argument(
        "--models", default=None, help=f"a comma-separated subset of {','.join(ALL_MODELS)}"
    )
    parser.add_argument(
        "--horizons", default=",".join(map(str, HORIZONS)), help="a subset of 96,192,336,720"
    )
    parser.add_argument(
        "--merge", nargs="+", default=None, metavar="JSON",
        help="combine the JSON of runs over disjoint models / horizons into one result",
    )  # fmt: skip
    parser.add_argument(
        "--timellm-one-model", action="store_true",
        help="Time-LLM: one model trained at the longest horizon, cut to the shorter ones "
        "(1/4 of the training), instead of one model per horizon",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.merge:
        merged = merge([json.loads(Path(f).read_text()) for f in args.merge])
        _print(merged, args.out)
        return merged
    models: list[str] | None = None
    if args.models:
        models = [m.strip() for m in args.models.split(",")]
        unknown = sorted(set(models) - set(ALL_MODELS))
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; pick from {ALL_MODELS}")
    horizons = [int(h) for h in args.horizons.split(",")]
    if not horizons or any(h not in HORIZONS for h in horizons):
        raise SystemExit(f"--horizons must be a subset of {HORIZONS}, got {args.horizons}")
    torch.set_num_threads(1)
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    result: dict[str, Any] = {}
    margins: list[dict[str, Any]] = []
    for features in args.features.split(","):
        config = quick_config(features) if args.quick else full_config(features)
        chosen = [m for m in config.models if models is None or m in models]
        if features == "M":  # 7 channels: the statistical models stay on the target only
            chosen = [m for m in chosen if m not in ("ets", "arima")]
        config = config.model_copy(update={"models": chosen, "horizons": horizons})
        if args.timellm_one_model:
            config = config.model_copy(update={"timellm_per_horizon": False})
        if not chosen:
            continue
        ex = run_experiment(config, progress)
        result[f"ETTh1 {features} (target OT)"] = [
            _row(r, _lookback(config, r.name)) for r in ex.runs
        ]
        by = {r.name.split(" (")[0]: r.metrics[96]["mse"] for r in ex.runs if 96 in r.metrics}
        for mname in ("AutoTimes", "DLinear"):
            for base in ("repeat-last", "seasonal naive"):
                if mname in by and base in by:
                    margins.append({
                        "features": features, "model": mname, "baseline": base,
                        "MSE model": round(by[mname], 4), "MSE baseline": round(by[base], 4),
                        "relative reduction": round(1 - by[mname] / by[base], 4),
                    })  # fmt: skip
        if features == "S" and {"autotimes", "timellm"} <= set(chosen) and 96 in horizons:
            # the ablation: the same recipe on a randomly initialised LM
            progress("ablation: AutoTimes and Time-LLM (96) on a random-init LM")
            lm, _ = build_lm(config, "random")
            model, seconds, _ = train_autotimes(config, lm, ex.splits, progress)
            ab = forecasting.evaluate(
                forecasting.model_fn(model),
                ex.splits.test,
                config.seq_len,
                HORIZONS,
                config.test_stride,
            )
            text_run = next(r for r in ex.runs if r.name.startswith("AutoTimes"))
            ablation = [
                {"model": "AutoTimes", "LM": "stdlib byte LM", **{f"MSE {h}": round(text_run.metrics[h]["mse"], 4) for h in HORIZONS}, "train s": round(text_run.seconds, 1)},
                {"model": "AutoTimes", "LM": "random init", **{f"MSE {h}": round(ab[h]["mse"], 4) for h in HORIZONS}, "train s": round(seconds, 1)},
            ]  # fmt: skip
            tl = next((r for r in ex.runs if r.name.startswith("Time-LLM")), None)
            if tl is not None:
                from ar_timeseries.timellm import TimeLLM

                splits_t = data.split(
                    ex.series, config.timellm_seq_len, max(HORIZONS), config.protocol
                )
                torch.manual_seed(config.seed)
                h0 = 96 if config.timellm_per_horizon else max(config.horizons)
                tmodel = TimeLLM(lm, config.timellm_seq_len, h0, "ETTh1 OT hourly")
                batches = forecasting.WindowBatches(
                    splits_t.train, config.timellm_seq_len, h0, config.train_stride
                )
                s, _ = forecasting.train_forecaster(
                    tmodel,
                    batches,
                    config.timellm_steps,
                    config.timellm_batch_size,
                    config.timellm_lr,
                    config.seed,
                    val=splits_t.val,
                    val_every=config.val_every,
                )
                m = forecasting.evaluate(
                    forecasting.model_fn(tmodel),
                    splits_t.test,
                    config.timellm_seq_len,
                    [96],
                    config.test_stride,
                )
                ablation.append(
                    {
                        "model": "Time-LLM",
                        "LM": "stdlib byte LM",
                        "MSE 96": round(tl.metrics[96]["mse"], 4),
                        "train s": round(tl.seconds, 1),
                    }
                )
                ablation.append(
                    {
                        "model": "Time-LLM",
                        "LM": "random init",
                        "MSE 96": round(m[96]["mse"], 4),
                        "train s": round(s, 1),
                    }
                )
            result["LM vs random-init LM (ETTh1 S, OT)"] = ablation
            if "autotimes" in ex.models:
                progress("in-context vs zero-shot")
                result["in-context vs zero-shot (AutoTimes trained on OT, horizon 96)"] = (
                    in_context(config, ex.models["autotimes"], progress)
                )
            result["frozen LM"] = [{"LM": "stdlib byte LM", **{k: round(v, 4) for k, v in ex.lm_info.items()}, "dim": config.lm_dim, "layers": config.lm_layers, "pretraining updates": config.lm_steps}]  # fmt: skip
        result["settings " + features] = json.dumps(
            {k: v for k, v in config.model_dump().items() if k not in ("progress_bar",)}
        )
    result["margins at horizon 96"] = margins
    result["published ETTh1 (MSE / MAE per horizon 96, 192, 336, 720)"] = [
        {"model": p["model"], "features": p["features"], "look-back": p["look-back"],
         **{f"MSE {h}": v for h, v in zip(HORIZONS, p["mse"], strict=True)},
         **{f"MAE {h}": v for h, v in zip(HORIZONS, p["mae"], strict=True)},
         "checked": p["checked"], "source": p["source"]}
        for p in PUBLISHED
    ]  # fmt: skip
    result["quick"] = args.quick
    result["seconds"] = round(time.perf_counter() - started, 1)
    _print(result, args.out)
    return result


def _print(result: dict[str, Any], out: str | None) -> None:
    for key, value in result.items():
        if isinstance(value, list):
            print(f"\n== {key}")
            for row in value:
                print("  ", row)
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs over disjoint models or horizons (run side by side): a model's
    rows are joined (its metrics per horizon; training and CPU seconds summed, the
    parameter count the largest), the margins concatenated, the settings listed, and
    ``seconds`` the longest run's wall time."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key.startswith("ETTh1 "):
                rows: dict[str, dict[str, Any]] = {r["model"]: r for r in out.get(key, [])}
                for row in value:
                    old = rows.get(row["model"])
                    if old is None:
                        rows[row["model"]] = dict(row)
                        continue
                    for k, v in row.items():
                        if k in ("train s", "CPU s (train + test)"):
                            old[k] = round(old.get(k, 0.0) + v, 1)
                        elif k == "trainable params":
                            old[k] = max(old.get(k, 0), v)
                        elif old.get(k) is None:
                            old[k] = v
                out[key] = [_ordered(r) for r in rows.values()]
            elif key == "margins at horizon 96":
                out[key] = out.get(key, []) + value
            elif key.startswith("settings "):
                out[key] = [*out.get(key, []), value]
            elif key == "seconds":
                out[key] = max(out.get(key, 0.0), value)
            elif key not in out:
                out[key] = value
    for key in [k for k in out if k.startswith("settings ")]:
        out[key] = out[key][0] if len(set(out[key])) == 1 else " | ".join(out[key])
    return out


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    keys = ["model", "look-back"]
    keys += [f"{m} {h}" for m in ("MSE", "MAE") for h in HORIZONS if f"{m} {h}" in row]
    keys += [k for k in row if k not in keys]
    return {k: row[k] for k in keys}
