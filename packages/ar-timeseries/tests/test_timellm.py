"""Time-LLM: RevIN inverts exactly, patches, lags, frozen LM, causality."""

import numpy as np
import pytest
import torch
from _ts_models import sine_splits, tiny_lm

from ar_timeseries import forecasting
from ar_timeseries.timellm import RevIN, TimeLLM, top_lags


def test_revin_inverts_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 96, generator=g, dtype=torch.float64) * 5 + 3
    revin = RevIN().double()
    with torch.no_grad():
        revin.weight.fill_(1.7)
        revin.bias.fill_(-0.4)
    xn, mean, std = revin.norm(x)
    assert torch.allclose(xn.mean(dim=1), torch.full((8,), -0.4, dtype=torch.float64))
    assert torch.allclose(revin.denorm(xn, mean, std), x, rtol=0, atol=1e-12)


def test_top_lags_find_the_period() -> None:
    t = torch.arange(192, dtype=torch.float32)
    x = torch.sin(2 * torch.pi * t / 24)[None]
    assert 24 in top_lags(x, 5)[0].tolist()


@pytest.fixture(scope="module")
def trained():  # type: ignore[no-untyped-def]
    splits = sine_splits(seq_len=48, horizon=24)
    torch.manual_seed(0)
    model = TimeLLM(tiny_lm(), 48, 24, "sine", d_model=16, d_ff=16, n_heads=2, num_prototypes=20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forecasting.train_forecaster(
        model, forecasting.WindowBatches(splits.train, 48, 24), 30, 8, 3e-3
    )
    return model, before, splits


def test_patches_and_prompt(trained) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = trained
    assert model.n_patches == (48 - 16) // 8 + 2
    (prompt,) = model.prompts(torch.sin(torch.arange(48.0) * 2 * torch.pi / 24)[None])
    assert prompt.startswith("sine; forecast next 24 steps from 48; min -1.00 max 1.00")
    assert "top lags 24" in prompt


def test_frozen_lm_is_bit_identical_and_only_adapters_change(trained) -> None:  # type: ignore[no-untyped-def]
    model, before, _ = trained
    after = model.state_dict()
    lm_keys = [k for k in before if k.startswith("lm.")]
    assert lm_keys and all(torch.equal(before[k], after[k]) for k in lm_keys)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"revin", "patch_embedding", "mapping", "reprogramming", "head"}


def test_forecast_ignores_values_after_the_origin(trained) -> None:  # type: ignore[no-untyped-def]
    model, _, splits = trained
    values = splits.test.values[:, 0].copy()
    base = forecasting.forecast_at(model, values, 80, 48, 24)
    values[80:] = 100.0
    assert np.array_equal(forecasting.forecast_at(model, values, 80, 48, 24), base)
    values[79] += 1.0
    assert not np.array_equal(forecasting.forecast_at(model, values, 80, 48, 24), base)
