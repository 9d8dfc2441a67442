"""``ar bench diffusion`` is registered lazily; ``--quick`` runs end to end (slow: it
trains four models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ar_core import registry


def test_registered_lazily() -> None:
    bench = registry.benchmarks.get("diffusion")
    assert registry.benchmarks.provider("diffusion") == "diffusion"
    assert bench.module == "ar_diffusion.benchmarks.diffusion"


@pytest.mark.slow
def test_quick_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "diffusion.json"
    report = registry.benchmarks.get("diffusion")(["--quick", "--out", str(out)])
    assert out.is_file()
    assert set(report["runs"]) == {"ar", "mdlm", "bd3-4", "bd3-16"}
    for run in report["runs"].values():
        assert 0 < run["bits_per_byte"] < 16
    assert report["cached_equals_uncached"]
    kv = report["kv_cache"]
    # 32 new tokens = 2 blocks of 16, 16 steps each, + prefill + one clean-KV write
    assert kv["bd3-16 use_cache=True"]["network_calls"] == 2 * 16 + 2
    assert kv["bd3-16 use_cache=False"]["network_calls"] == 2 * 16
    fc = report["freecache"]
    assert fc["freecache refresh=1"]["agreement_with_reference"] == 1.0
    assert fc["freecache"]["network_calls"] == fc["uncached (reference)"]["network_calls"] == 32
    for row in report["ar_guided"].values():
        assert row["equals_ar_greedy"]
