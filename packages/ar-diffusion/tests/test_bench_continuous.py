"""``ar bench diffusion-continuous`` is registered lazily; the heads' cost rows count
calls honestly; ``--quick`` runs end to end (slow: it trains the 2-D generators and the
digits recipe's five)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ar_core import registry


def test_registered_lazily() -> None:
    bench = registry.benchmarks.get("diffusion-continuous")
    assert registry.benchmarks.provider("diffusion-continuous") == "diffusion"
    assert bench.module == "ar_diffusion.benchmarks.continuous"


def test_head_cost_rows() -> None:
    from ar_diffusion.benchmarks.continuous import head_costs

    rows = head_costs(dim=4, tokens=8, repeats=1)
    calls = {(r["head"], r["sampler"]): r["head calls / token"] for r in rows}
    assert calls == {
        ("diffusion", "ddpm"): 50,
        ("diffusion", "ddim"): 10,
        ("flow", "euler"): 32,
        ("flow", "heun"): 15,
        ("gmm (K=8)", "mixture"): 1,
        ("mse", "mean"): 1,
    }
    assert all(r["us / token"] > 0 for r in rows)


@pytest.mark.slow
def test_quick_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "dc.json"
    report = registry.benchmarks.get("diffusion-continuous")(["--quick", "--out", str(out)])
    assert out.is_file()
    rows = report["transition matching on 8gaussians"]
    assert {r["method"] for r in rows} == {"DTM", "ARTM", "FHTM", "Euler FM"}
    assert all(r["W1 / Euler FM's"] == 1.0 for r in rows if r["method"] == "Euler FM")
    digits = report["diffusion-digits: quality against network calls"]
    assert digits[0]["method"] == "test images" and len(digits) == 1 + 3 + 1 + 1
    assert all(0 <= r["class accuracy"] <= 1 for r in digits)
