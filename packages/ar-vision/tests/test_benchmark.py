"""``ar bench vision -- --quick`` runs end to end (slow: it trains two models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ar_core import registry


def test_registered_lazily() -> None:
    bench = registry.benchmarks.get("vision")
    assert registry.benchmarks.provider("vision") == "vision"
    assert bench.module == "ar_vision.benchmarks.vision"


@pytest.mark.slow
def test_quick_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "vision.json"
    report = registry.benchmarks.get("vision")(
        ["--quick", "--runs", "raster-vq,coarse-to-fine", "--out", str(out)]
    )
    assert out.is_file()
    assert report["runs"]["raster-vq"]["network_calls_per_image"] == 16
    assert report["runs"]["coarse-to-fine"]["network_calls_per_image"] == 17  # 16 coarse + 1
    spec_runs = report["speculative"]
    assert spec_runs["sample"]["forward_passes"] == 16  # prefill + 15 decode steps
    for strategy in ("sjd", "lantern"):  # every pass accepts at least one token
        assert spec_runs[strategy]["forward_passes"] <= 16
        assert spec_runs[strategy]["mean_accepted_length"] >= 1.0
