"""FAR's next frame beats copy-last-frame on held-out clips (slow: a full training run).

The recipe's default config (seed 0: 512 training clips, 1500 updates) trains FAR, rolls
out 48 held-out clips of test digits after 4 context frames, and runs a one-sided exact
sign test on the paired per-clip MSE at horizon 1 against copy-last-frame; the test passes
when p < 0.05 and FAR's mean MSE is lower. ``ar bench video`` runs the same config.
"""

from pathlib import Path

import pytest

from ar_video.recipes.moving_digits import VideoMovingDigitsConfig, recipe


@pytest.mark.slow
@pytest.mark.xfail(
    reason="measured (ar bench video, seed 0, 1500 updates): FAR 0.0237 vs copy-last 0.0238 "
    "MSE at h=1, lower on 25 of 48 clips, p = 0.44: a tie, not yet a win (strict: a pass "
    "fails the run, so the marker comes off the day FAR wins)",
    strict=True,
)
def test_far_beats_copy_last_at_horizon_1(tmp_path: Path) -> None:
    config = VideoMovingDigitsConfig(models=["far"], progress_bar=False, seed=0)
    result = recipe.run(config, tmp_path, lambda _: None)
    m = result.metrics
    assert m["far_mse_h1"] < m["copy-last_mse_h1"]
    assert m["far_vs_copy_last_h1_p"] < 0.05  # level 0.05, seed 0
