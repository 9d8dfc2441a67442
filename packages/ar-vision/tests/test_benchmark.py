"""``ar bench vision -- --quick`` runs end to end (slow: it trains models)."""

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
        [
            "--quick",
            "--sections",
            "orderings",
            "--runs",
            "raster-vq,coarse-to-fine",
            "--out",
            str(out),
        ]
    )
    assert out.is_file()
    assert report["runs"]["raster-vq"]["network_calls_per_image"] == 16
    assert report["runs"]["coarse-to-fine"]["network_calls_per_image"] == 17  # 16 coarse + 1
    spec_runs = report["speculative"]
    assert spec_runs["sample"]["forward_passes"] == 16  # prefill + 15 decode steps
    for strategy in ("sjd", "lantern"):  # every pass accepts at least one token
        assert spec_runs[strategy]["forward_passes"] <= 16
        assert spec_runs[strategy]["mean_accepted_length"] >= 1.0


@pytest.mark.slow
def test_quick_benchmark_phi_ctf_windows(tmp_path: Path) -> None:
    out = tmp_path / "vision.json"
    args = ["--quick", "--sections", "phi,ctf,windows", "--windows", "8,64", "--repeats", "2"]
    report = registry.benchmarks.get("vision")([*args, "--out", str(out)])
    assert out.is_file() and "runs" not in report  # the orderings section did not run
    assert list(report["phi"]) == ["phi off", "phi on"]
    for row in report["phi"].values():
        assert row["network_calls_per_image"] == 4
        assert [k for k in row if k.startswith("mse_after_scale_")] == [
            f"mse_after_scale_{s}" for s in (1, 2, 4, 8)
        ]
    assert list(report["ctf_fine_stage"]) == ["causal", "bidirectional"]
    for row in report["ctf_fine_stage"].values():
        assert row["network_calls_per_image"] == 17  # 16 coarse steps + 1 fine step
        # coarse and fine-given-coarse NLLs add up to the full one
        product = row["coarse_perplexity"] * row["fine_given_coarse_perplexity"]
        assert abs(product - row["full_perplexity"]) < 0.01 * row["full_perplexity"]
    windows = report["windows"]
    assert list(windows) == ["sample", "sjd-8", "sjd-64", "lantern-8", "lantern-64"]
    assert windows["sample"]["forward_passes"] == 64  # 64 pixel tokens, one a pass
    for name, row in windows.items():
        assert row["forward_passes"] <= 64 and row["mean_accepted_length"] >= 1.0, name
        assert row["repeats"] == 2 and row["cpu_seconds"] > 0, name
    single = report["windows_one_image"]  # one image per call: passes per image
    assert list(single) == list(windows)
    assert single["sample"]["forward_passes"] == 64
    for name, row in single.items():
        assert row["forward_passes"] <= 64 and row["mean_accepted_length"] >= 1.0, name


@pytest.mark.slow
def test_quick_speculative_section_alone(tmp_path: Path) -> None:
    out = tmp_path / "vision.json"
    report = registry.benchmarks.get("vision")(
        ["--quick", "--sections", "speculative", "--window", "4", "--out", str(out)]
    )
    assert "runs" not in report and list(report["speculative"]) == ["sample", "sjd", "lantern"]
    assert report["speculative"]["sjd"]["window"] == 4
    assert report["speculative"]["sample"]["forward_passes"] == 16
