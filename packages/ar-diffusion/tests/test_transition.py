"""Transition Matching: DTM against Euler flow matching at 2 backbone calls (fast: one
model, three sampling seeds; slow: three training seeds); FHTM's causal structure (a
token's hidden state does not change when later tokens change; the KV-cached sampler
draws from exactly the hidden states of the training forward); ARTM's token order; toy
data and distances; bad input."""

from __future__ import annotations

import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_diffusion.toy2d import DATASETS, mmd2, sample_2d, sliced_wasserstein
from ar_diffusion.transition import ARTM, DTM, FHTM, EulerFlowMatching


def train(model: torch.nn.Module, data: str, updates: int, seed: int, lr: float = 5e-3) -> None:
    """Adam, one-cycle learning rate, batches of 256 from ``data``; model seed ``seed``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=updates)
    for _ in range(updates):
        loss = model.loss(sample_2d(data, 256, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def sw_at(model: torch.nn.Module, data: str, steps: int, seed: int, n: int = 2000) -> float:
    ref = sample_2d(data, n, torch.Generator().manual_seed(99))
    out = model.sample(n, steps, generator=torch.Generator().manual_seed(seed))
    return sliced_wasserstein(out.x, ref, generator=torch.Generator().manual_seed(0))


def fit_pair(
    seed: int, updates: int, width: int, head_width: int = 32
) -> tuple[DTM, EulerFlowMatching]:
    torch.manual_seed(seed)
    dtm = DTM(width=width, depth=2, head_width=head_width)
    fm = EulerFlowMatching(width=width, depth=2)
    train(dtm, "8gaussians", updates, seed)
    train(fm, "8gaussians", updates, seed)
    return dtm, fm


def test_dtm_beats_euler_flow_matching_at_two_steps() -> None:
    """Seed 0, 400 updates of width-64 models: at T = 2 backbone calls DTM's sliced
    Wasserstein to 8 Gaussians is at most half of Euler FM's, for three sampling seeds."""
    dtm, fm = fit_pair(0, 400, 64)
    for seed in (1, 2, 3):
        d, f = sw_at(dtm, "8gaussians", 2, seed), sw_at(fm, "8gaussians", 2, seed)
        assert d <= 0.5 * f, (seed, d, f)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dtm_beats_euler_flow_matching_at_two_steps_on_three_training_seeds(seed: int) -> None:
    """Three training seeds, 800 updates of width-128 models, T = 2."""
    dtm, fm = fit_pair(seed, 800, 128)
    d, f = sw_at(dtm, "8gaussians", 2, seed), sw_at(fm, "8gaussians", 2, seed)
    assert d <= 0.5 * f, (seed, d, f)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dtm_at_most_half_euler_flow_matching_at_two_and_four_steps(seed: int) -> None:
    """The issue's claim at T = 2 and T = 4 on three training seeds (0, 1, 2). Both
    models are trained equally (6000 updates, batches of 256, the same backbone: width
    128, 2 residual blocks); DTM's flow head has width 64 and samples with its default 8
    Euler steps. Sliced W1 of 8000 samples to 8000 data points (two data sets differ by
    0.014 at this size). Measured by the same computation (seeds 0, 1, 2): DTM / Euler FM
    = 0.08, 0.10, 0.09 at T = 2 and 0.25, 0.35, 0.28 at T = 4 (about 100 s of CPU per
    seed). At 800 updates with a width-32 head DTM was 0.84-1.00x Euler FM at T = 4 (2000
    samples; its error plateaued near 0.13 whatever the head's steps, 4-32); at 3000
    updates 0.62-0.66x, with a width-64 head 0.53x: DTM needs the training, the head's
    step count does not matter."""
    dtm, fm = fit_pair(seed, 6000, 128, head_width=64)
    for T in (2, 4):
        d, f = sw_at(dtm, "8gaussians", T, seed, 8000), sw_at(fm, "8gaussians", T, seed, 8000)
        assert d <= 0.5 * f, (seed, T, d, f)


def test_fhtm_is_causal_and_cached_sampling_is_the_training_forward() -> None:
    torch.manual_seed(0)
    model = FHTM(width=32, layers=2, heads=2, head_width=16, train_steps=(4,)).eval()
    out = model.sample(3, 4, generator=torch.Generator().manual_seed(0), return_hidden=True)
    assert out.tokens is not None and out.hidden is not None
    assert out.backbone_calls == 8 and out.head_calls == 8 * 8
    full = model.forward_hidden(out.tokens, 4)  # (3, 10, W)
    # token k + 1 was drawn from the hidden state at k: the cached calls equal the forward
    torch.testing.assert_close(out.hidden, full[:, 1:-1], rtol=1e-5, atol=1e-5)
    for k in (1, 4, 7):  # changing tokens > k leaves the hidden states <= k unchanged
        moved = out.tokens.clone()
        moved[:, k + 1 :] += torch.randn_like(moved[:, k + 1 :])
        again = model.forward_hidden(moved, 4)
        torch.testing.assert_close(again[:, : k + 1], full[:, : k + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(again[:, k + 1 :], full[:, k + 1 :])


def test_fhtm_through_ar_cores_step_loop_draws_the_same_values() -> None:
    """FHTM.sample_steps (ar_core.run_steps with float step values, the flow head as a
    step sampler) equals FHTM.sample's own loop draw for draw, with the same calls."""
    torch.manual_seed(0)
    model = FHTM(width=32, layers=2, heads=2, head_width=16, train_steps=(2, 4)).eval()
    for T in (2, 4):
        a = model.sample(5, T, generator=torch.Generator().manual_seed(T), head_steps=3)
        b = model.sample_steps(5, T, generator=torch.Generator().manual_seed(T), head_steps=3)
        torch.testing.assert_close(b.x, a.x, rtol=0, atol=0)
        assert (
            (b.backbone_calls, b.head_calls) == (a.backbone_calls, a.head_calls) == (2 * T, 6 * T)
        )
    with pytest.raises(ConfigError, match="largest trained T=4"):
        model.sample_steps(2, 8)


def test_artm_token_i_reads_only_earlier_tokens() -> None:
    torch.manual_seed(0)
    model = ARTM(width=32, depth=1, head_width=16)
    x, nxt = torch.randn(5, 2), torch.randn(5, 2)
    s, s2 = torch.full((5,), 0.25), torch.full((5,), 0.5)
    h = model.hidden(x, nxt, s, s2)
    moved = nxt.clone()
    moved[:, 1] += 1.0  # token 1 of X_{t+1}: invisible to both tokens' draws
    torch.testing.assert_close(model.hidden(x, moved, s, s2), h, rtol=0, atol=0)
    moved[:, 0] += 1.0  # token 0: visible to token 1 only
    h2 = model.hidden(x, moved, s, s2)
    torch.testing.assert_close(h2[:, 0], h[:, 0], rtol=0, atol=0)
    assert not torch.allclose(h2[:, 1], h[:, 1])
    out = model.sample(4, 3, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (4, 2) and out.backbone_calls == 6


def test_toy_data_and_distances() -> None:
    for name in DATASETS:
        a = sample_2d(name, 800, torch.Generator().manual_seed(1))
        b = sample_2d(name, 800, torch.Generator().manual_seed(2))
        assert a.shape == (800, 2) and a.abs().max() < 3.5
        same = sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0))
        off = sliced_wasserstein(a, b + 0.5, generator=torch.Generator().manual_seed(0))
        assert same < 0.12 < 0.3 < off
        assert abs(mmd2(a, b)) < 5e-3 < mmd2(a, b + 0.5)
    # in 1-D every direction is +-1: the sliced W1 of a shift is the shift
    a = torch.randn(500, 1, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(a, a + 0.3) == pytest.approx(0.3, rel=1e-6)
    checker = sample_2d("checkerboard", 4000, torch.Generator().manual_seed(3))
    cell = torch.floor(checker + 2).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()


def test_bad_input() -> None:
    dtm, fhtm = DTM(width=16, depth=1, head_width=8), FHTM(width=16, heads=2, train_steps=(2,))
    with pytest.raises(InputError, match=r"data must be \(N, 2\)"):
        dtm.loss(torch.randn(4, 3))
    with pytest.raises(InputError, match="NaN"):
        dtm.loss(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ConfigError, match="steps"):
        dtm.sample(4, 0)
    with pytest.raises(ConfigError, match="largest trained T=2"):
        fhtm.sample(2, 4)
    with pytest.raises(ConfigError, match="train_steps"):
        ARTM(train_steps=(0,))
    with pytest.raises(ConfigError, match="unknown 2-D dataset"):
        sample_2d("spirals", 3)
    with pytest.raises(InputError, match="equal sample counts"):
        sliced_wasserstein(torch.randn(3, 2), torch.randn(4, 2))
