"""The core-diagnostics recipe runs end to end at tiny settings and its tables hold what
the diagnostics promise (exact laws exactly; the rest with the stated tolerances)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ar_core import ConfigError, registry
from ar_core.recipes import build_config, write_recipe_file
from ar_core.recipes.diagnostics import DiagnosticsConfig

torch.set_num_threads(1)


def test_recipe_is_registered_and_runs(tmp_path: Path) -> None:
    recipe = registry.recipes.get("core-diagnostics")
    assert recipe.config_class is DiagnosticsConfig and not recipe.in_demo
    config = DiagnosticsConfig(
        train_sequences=60,
        test_sequences=40,
        length=16,
        dim=16,
        n_layers=1,
        n_heads=2,
        steps=20,
        lstm_steps=10,
        hmm_states=0,
        var_samples=[500, 2000],
        var_lags=2,
        granger=False,
        progress_bar=False,
    )
    write_recipe_file(tmp_path, "core-diagnostics", config)
    messages: list[str] = []
    result = recipe.run(config, tmp_path, messages.append)
    titles = [t.title for t in result.tables]
    assert len(titles) == 6 and messages
    by = {t.title.split(" ")[0]: t for t in result.tables}
    # Massey's law is exact whatever the settings
    massey = by["Massey's"].rows[0]
    assert massey[2] == pytest.approx(massey[3], abs=1e-6)
    # the exact model's head entropy is the analytic value up to sampling noise
    head = by["head"].rows[0]
    assert abs(head[3]) < 0.05
    # the Fisher check converges even for an untrained head
    gaps = [float(r[3]) for r in by["pull-back"].rows]
    assert gaps[-1] < gaps[0] and gaps[-1] < 1e-3
    # the oracle's Brier score is the best row
    pred = by["next-element"].rows
    assert pred[0][0] == "oracle" and all(pred[0][1] <= r[1] for r in pred)
    assert [c for c, _ in result.images] and all(p.is_file() for _, p in result.images)
    assert all(p.read_text().startswith("<svg") for _, p in result.images)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert "brier/oracle" in result.metrics and result.curves["Transformer loss"]
    # samples from the saved Transformer, scored by the grammar it was trained on
    sampled = recipe.sample(tmp_path, 4, messages.append)
    assert len(sampled.samples) == 4
    assert all(len(s.split()) == config.length for s in sampled.samples)
    assert 0 < sampled.metrics["grammar_log_loss"] < 10


def test_recipe_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="markov_orders"):
        build_config(DiagnosticsConfig, None, {"markov_orders": [0, 2]})
    with pytest.raises(ConfigError, match="fisher_eps"):
        build_config(DiagnosticsConfig, None, {"fisher_eps": [-1.0]})
    with pytest.raises(ConfigError, match="vocab_size"):
        build_config(DiagnosticsConfig, None, {"vocab_size": 1})
