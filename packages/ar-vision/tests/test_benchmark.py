"""``benchmarks/vision.py --quick`` runs end to end (slow: it trains two models)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "vision.py"


@pytest.mark.slow
def test_quick_benchmark(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("vision_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "vision.json"
    report = module.main(["--quick", "--runs", "raster-vq,coarse-to-fine", "--out", str(out)])
    assert out.is_file()
    assert report["runs"]["raster-vq"]["network_calls_per_image"] == 16
    assert report["runs"]["coarse-to-fine"]["network_calls_per_image"] == 17  # 16 coarse + 1
    spec_runs = report["speculative"]
    assert spec_runs["sample"]["forward_passes"] == 16  # prefill + 15 decode steps
    for strategy in ("sjd", "lantern"):  # every pass accepts at least one token
        assert spec_runs[strategy]["forward_passes"] <= 16
        assert spec_runs[strategy]["mean_accepted_length"] >= 1.0
