"""AutoTimes: frozen LM, what trains, causality, rollout, timestamps, in-context."""

import numpy as np
import pytest
import torch
from _ts_models import sine_splits, tiny_lm

from ar_core.errors import ConfigError, InputError
from ar_timeseries import data, forecasting
from ar_timeseries.autotimes import AutoTimes


@pytest.fixture(scope="module")
def trained() -> tuple[AutoTimes, dict[str, torch.Tensor], dict[str, torch.Tensor], data.Splits]:
    splits = sine_splits()
    torch.manual_seed(0)
    model = AutoTimes(tiny_lm(), 48, 12, "mlp", hidden=32)
    model.set_timestamps(data.future_dates(splits.series.dates, 200))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = forecasting.WindowBatches(splits.train, 48, 12, stride=6)
    forecasting.train_forecaster(model, batches, 60, 16, 3e-3)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    return model, before, after, splits


def test_frozen_lm_is_bit_identical_and_only_the_adapters_change(trained) -> None:  # type: ignore[no-untyped-def]
    model, before, after, _ = trained
    lm_keys = [k for k in before if k.startswith("lm.")]
    assert lm_keys and all(torch.equal(before[k], after[k]) for k in lm_keys)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert {k.split(".")[0] for k in trainable} == {"embedder", "decoder", "scale"}


def test_training_beats_repeat_last(trained) -> None:  # type: ignore[no-untyped-def]
    model, _, _, splits = trained
    ours = forecasting.evaluate(forecasting.model_fn(model), splits.test, 48, [24], stride=4)
    last = forecasting.evaluate(lambda x, h, p: x[:, -1:].expand(-1, h), splits.test, 48, [24], 4)
    assert ours[24]["mse"] < 0.5 * last[24]["mse"]


def test_forecast_ignores_values_after_the_origin(trained) -> None:  # type: ignore[no-untyped-def]
    model, _, _, splits = trained
    values = splits.test.values[:, 0].copy()
    origin = 100
    base = forecasting.forecast_at(model, splits.test.values[:, 0], origin, 48, 96)
    rng = np.random.default_rng(1)
    values[origin:] += rng.standard_normal(len(values) - origin) * 10
    # pos in forecast_at counts from the split's row 0; the table covers it
    assert np.array_equal(forecasting.forecast_at(model, values, origin, 48, 96), base)
    values[origin - 1] += 1.0  # the last observed value does matter
    assert not np.array_equal(forecasting.forecast_at(model, values, origin, 48, 96), base)


def test_one_model_rolls_out_every_horizon(trained) -> None:  # type: ignore[no-untyped-def]
    model, _, _, splits = trained
    x = torch.as_tensor(splits.test.values[:48, 0], dtype=torch.float32)[None].repeat(2, 1)
    pos = torch.tensor([splits.test.start, splits.test.start])
    long = model.forecast(x, 100, pos)
    assert long.shape == (2, 100)
    for h in (12, 30, 96):
        assert torch.allclose(model.forecast(x, h, pos), long[:, :h])
    # a rollout step is the model's own next segment on the slid window
    first = model.next_segments(x, pos)[:, -1]
    second = model.next_segments(torch.cat([x[:, 12:], first], 1), pos + 12)[:, -1]
    assert torch.allclose(long[:, 12:24], second)


def test_timestamps_are_unit_vectors_and_checked(trained) -> None:  # type: ignore[no-untyped-def]
    model, _, _, _ = trained
    filled = model.ts_table[model.ts_filled]
    assert filled.shape[0] > 0
    assert torch.allclose(filled.norm(dim=-1), torch.ones(filled.shape[0]), atol=1e-5)
    with pytest.raises(InputError, match="no timestamp"):
        model.forecast(torch.zeros(1, 48), 12, torch.tensor([model.ts_table.shape[0]]))
    with pytest.raises(InputError, match="pass pos"):
        model.forecast(torch.zeros(1, 48), 12)


def test_in_context_prompt_changes_the_forecast_only_through_the_context(trained) -> None:  # type: ignore[no-untyped-def]
    model, _, _, splits = trained
    v = torch.as_tensor(splits.test.values[:, 0], dtype=torch.float32)
    x, ctx = v[96:144][None], v[48:96][None]
    pos, cpos = torch.tensor([splits.test.start + 96]), torch.tensor([splits.test.start + 48])
    plain = model.forecast(x, 24, pos)
    with_ctx = model.forecast(x, 24, pos, ctx, cpos)
    assert with_ctx.shape == plain.shape and not torch.equal(with_ctx, plain)
    assert torch.equal(model.forecast(x, 24, pos, ctx, cpos), with_ctx)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="multiple of token_len"):
        AutoTimes(tiny_lm(), 50, 12)


def test_one_model_at_token_len_96_rolls_out_the_four_protocol_horizons() -> None:
    """The protocol's horizons 96, 192, 336 and 720 from one model with token_len 96: 1, 2,
    4 and 8 rollout steps (720 = 7.5 segments: the last one cut), each horizon the prefix
    of the longest rollout, and step k the model's own next segment on the slid window."""
    torch.manual_seed(0)
    model = AutoTimes(tiny_lm(), 192, 96, "linear")
    model.set_timestamps(data.future_dates(data.pd.DatetimeIndex(["2020-01-01"]), 2000))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 192, generator=g)
    pos = torch.tensor([0, 5, 17])
    out = {h: model.forecast(x, h, pos) for h in (96, 192, 336, 720)}
    assert {h: tuple(o.shape) for h, o in out.items()} == {h: (3, h) for h in out}
    for h in (96, 192, 336):
        assert torch.allclose(out[h], out[720][:, :h])
    window, p = x, pos
    for k in range(8):  # the rollout by hand
        seg = model.next_segments(window, p)[:, -1]
        n = min(96, 720 - 96 * k)
        assert torch.allclose(out[720][:, 96 * k : 96 * k + n], seg[:, :n], atol=1e-6)
        window, p = torch.cat([window[:, 96:], seg], dim=1), p + 96


def test_nested_evaluation_equals_one_evaluation_per_horizon(trained) -> None:  # type: ignore[no-untyped-def]
    model, _, _, splits = trained
    fn = forecasting.model_fn(model)
    per = forecasting.evaluate(fn, splits.test, 48, [12, 30, 48], stride=3)
    one = forecasting.evaluate_nested(fn, splits.test, 48, [48, 12, 30], stride=3)
    assert sorted(one) == [12, 30, 48]
    for h in per:
        assert one[h]["windows"] == per[h]["windows"]
        assert one[h]["mse"] == pytest.approx(per[h]["mse"], rel=1e-6)
        assert one[h]["mae"] == pytest.approx(per[h]["mae"], rel=1e-6)
