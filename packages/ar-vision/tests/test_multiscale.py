"""Multi-scale residual VQ (VAR) and frequency-guided RVQ (NFIG) on 8x8 digits.

Both are fitted with the same budget and seed (150 steps, batch 32). Measured on the test
split (seed 0): full-decode MSE 0.0031 (msrvq) / 0.0127 (nfig); msrvq partial MSE
0.158 > 0.148 > 0.048 > 0.0031; nfig partial-vs-lowpass MSE 0.0025 / 0.020 / 0.021 against
msrvq's 0.019 / 0.091 / 0.031; nfig high-frequency energy (above half Nyquist)
0.012 < 0.029 < 0.138 < 0.94, the test images' own is 1.45.
"""

import itertools

import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_vision.data import load_digits
from ar_vision.tokenizers import (
    FrequencyRVQ,
    MultiScaleRVQ,
    MultiScaleTokenizer,
    VQTokenizer,
    highpass_energy,
    lowpass,
)

STEPS, BATCH = 150, 32


def _fit(cls):
    x, _ = load_digits(8, "train")
    tok = cls(hidden=16, seed=0)
    tok.fit(x, steps=STEPS, batch_size=BATCH, lr=3e-3, generator=torch.Generator().manual_seed(0))
    return tok


@pytest.fixture(scope="module")
def msrvq() -> MultiScaleRVQ:
    return _fit(MultiScaleRVQ)


@pytest.fixture(scope="module")
def nfig() -> FrequencyRVQ:
    return _fit(FrequencyRVQ)


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    return load_digits(8, "test")[0]


def test_token_layout(msrvq, test_images) -> None:
    assert isinstance(msrvq, MultiScaleTokenizer) and isinstance(msrvq, VQTokenizer)
    assert msrvq.scales == [1, 2, 4, 8] and msrvq.token_count == 1 + 4 + 16 + 64
    tokens = msrvq.encode(test_images[:4])
    assert tokens.shape == (4, 85)
    # decode_partial accepts the prefix of scales <= k or the full sequence
    for k, n in enumerate([1, 5, 21, 85]):
        assert torch.equal(msrvq.decode_partial(tokens[:, :n], k), msrvq.decode_partial(tokens, k))
    assert torch.equal(msrvq.decode_partial(tokens, 3), msrvq.decode(tokens))


def test_partial_decode_ignores_later_scales(msrvq, test_images) -> None:
    tokens = msrvq.encode(test_images[:4])
    other = tokens.clone()
    other[:, 5:] = (other[:, 5:] + 1) % msrvq.vocab_size
    assert torch.equal(msrvq.decode_partial(tokens, 1), msrvq.decode_partial(other, 1))
    assert not torch.equal(msrvq.decode_partial(tokens, 2), msrvq.decode_partial(other, 2))


def test_msrvq_error_decreases_with_scales(msrvq, test_images) -> None:
    tokens = msrvq.encode(test_images)
    errors = [
        float(((msrvq.decode_partial(tokens, k) - test_images) ** 2).mean()) for k in range(4)
    ]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.01  # measured 0.0031


def _rises(tok: FrequencyRVQ, images: torch.Tensor) -> tuple[bool, list[float]]:
    """NFIG's check: the high-frequency energy (above half Nyquist) of the partial decodes
    rises with the scale, from under 5% of the images' own to over half of it."""
    tokens = tok.encode(images)
    energy = [float(highpass_energy(tok.decode_partial(tokens, k), 0.5)) for k in range(4)]
    full = float(highpass_energy(images, 0.5))
    rising = all(a < b for a, b in itertools.pairwise(energy))
    return rising and energy[0] < 0.05 * full and energy[-1] > 0.5 * full, energy


def test_nfig_high_frequency_energy_rises_with_scales(nfig, test_images) -> None:
    """One seed (0) of the module's fit (150 steps): a regression check of this tokenizer.
    At this budget the order is not a property of the method: seeds 2 and 4 break it (seed
    2: 0.0396, 0.0236, 0.0763, 0.667); the property is tested over seeds at 400 steps in
    test_nfig_high_frequency_energy_rises_over_seeds."""
    ok, energy = _rises(nfig, test_images)
    assert ok, energy


NFIG_SEEDS, NFIG_STEPS = range(8), 400


@pytest.mark.slow  # 8 fits of 400 steps: ~80 s of CPU
def test_nfig_high_frequency_energy_rises_over_seeds(test_images) -> None:
    """The property over 8 seeds (tokenizer init and data order) at 400 steps, batch 32,
    hidden 16: every seed rises (measured 8/8; the images' own energy is 1.45, the last
    partial 1.25-1.36, the first 0.005-0.011; ~10 s of CPU a seed)."""
    x, _ = load_digits(8, "train")
    failures = {}
    for seed in NFIG_SEEDS:
        tok = FrequencyRVQ(hidden=16, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        tok.fit(x, steps=NFIG_STEPS, batch_size=BATCH, lr=3e-3, generator=gen)
        ok, energy = _rises(tok, test_images)
        if not ok:
            failures[seed] = energy
    assert not failures, failures


def test_nfig_partials_match_lowpass_better_than_msrvq(nfig, msrvq, test_images) -> None:
    assert nfig.cutoffs == [0.125, 0.25, 0.5, 1.0]
    for k, cutoff in enumerate(nfig.cutoffs[:-1]):
        target = lowpass(test_images, cutoff)
        errs = {}
        for name, tok in (("nfig", nfig), ("msrvq", msrvq)):
            out = tok.decode_partial(tok.encode(test_images), k)
            errs[name] = float(((out - target) ** 2).mean())
        assert errs["nfig"] < 0.8 * errs["msrvq"], (k, errs)  # measured ratios 0.13-0.67


def test_lowpass_is_a_projection() -> None:
    x = load_digits(8, "test")[0][:8]
    assert torch.equal(lowpass(x, 1.0), x)
    low = lowpass(x, 0.5)
    assert torch.allclose(lowpass(low, 0.5), low, atol=1e-6)
    dc = lowpass(x, 0.125)  # only the mean survives
    assert torch.allclose(dc, x.mean(dim=(-1, -2), keepdim=True).expand_as(x), atol=1e-6)
    assert float(highpass_energy(low, 0.5)) < 1e-10


def test_save_load_exact(nfig, test_images, tmp_path) -> None:
    nfig.save(tmp_path / "nfig")
    loaded = FrequencyRVQ.load(tmp_path / "nfig")
    tokens = nfig.encode(test_images)
    assert torch.equal(loaded.encode(test_images), tokens)
    for k in range(4):
        assert torch.equal(loaded.decode_partial(tokens, k), nfig.decode_partial(tokens, k))


def test_config_errors(msrvq) -> None:
    with pytest.raises(ConfigError, match="increasing"):
        MultiScaleRVQ(scales=[1, 4, 2])
    with pytest.raises(ConfigError, match="last cutoff"):
        FrequencyRVQ(cutoffs=[0.1, 0.2, 0.3, 0.9])
    with pytest.raises(ConfigError, match="band_weights"):
        FrequencyRVQ(band_weights=[1.0, 1.0])
    with pytest.raises(InputError, match="k must lie"):
        msrvq.decode_partial(torch.zeros(1, 85, dtype=torch.long), 4)
    with pytest.raises(InputError, match=r"\(B, 5\)"):
        msrvq.decode_partial(torch.zeros(1, 7, dtype=torch.long), 1)
