"""``ar bench timeseries``: merging runs over disjoint models / horizons, the published rows."""

from ar_timeseries.benchmarks import timeseries as bench


def _row(model: str, horizons: list[int], seconds: float, params: int) -> dict[str, object]:
    row: dict[str, object] = {"model": model, "look-back": 96}
    row.update({f"MSE {h}": h / 1000 for h in horizons})
    row.update({f"MAE {h}": h / 100 for h in horizons})
    row.update({
        "test windows (96)": 19495 if 96 in horizons else None,
        "trainable params": params, "train s": seconds, "CPU s (train + test)": 2 * seconds,
        "note": "n",
    })  # fmt: skip
    return row


def test_merge_joins_a_models_horizons_and_sums_the_seconds() -> None:
    a = {
        "ETTh1 M (target OT)": [_row("DLinear", [96, 192, 336, 720], 9.0, 100)],
        "margins at horizon 96": [{"model": "DLinear"}],
        "settings M": "a", "seconds": 50.0,
    }  # fmt: skip
    b = {"ETTh1 M (target OT)": [_row("Time-LLM", [96, 192], 10.0, 7)], "settings M": "b",
         "seconds": 70.0}  # fmt: skip
    c = {"ETTh1 M (target OT)": [_row("Time-LLM", [336, 720], 20.0, 9)], "settings M": "c",
         "seconds": 60.0}  # fmt: skip
    out = bench.merge([a, b, c])
    dl, tl = out["ETTh1 M (target OT)"]
    assert dl == _row("DLinear", [96, 192, 336, 720], 9.0, 100)
    assert list(tl)[:10] == ["model", "look-back"] + [
        f"{m} {h}" for m in ("MSE", "MAE") for h in (96, 192, 336, 720)
    ]
    assert tl["MSE 720"] == 0.72 and tl["MAE 96"] == 0.96
    assert tl["test windows (96)"] == 19495
    assert (tl["train s"], tl["CPU s (train + test)"], tl["trainable params"]) == (30.0, 60.0, 9)
    assert out["margins at horizon 96"] == [{"model": "DLinear"}]
    assert out["settings M"] == "a | b | c" and out["seconds"] == 70.0


def test_published_rows_are_complete_and_say_whether_they_were_checked() -> None:
    for p in bench.PUBLISHED:
        assert len(p["mse"]) == len(p["mae"]) == 4 and isinstance(p["checked"], bool)
        assert p["features"] in ("S", "M") and p["look-back"] >= 1 and p["source"]
    autotimes = next(p for p in bench.PUBLISHED if p["model"].startswith("AutoTimes"))
    # the README of thuml/AutoTimes gives the averages over the four horizons
    assert round(sum(autotimes["mse"]) / 4, 3) == 0.389
    assert round(sum(autotimes["mae"]) / 4, 3) == 0.422
