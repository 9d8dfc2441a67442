"""AR-Diffusion's FoPP and AD schedulers against enumeration."""

import itertools

import pytest
import torch

from ar_core.errors import ConfigError
from ar_video.model import FrameTransformer
from ar_video.schedulers import ad_generate, ad_schedule, check_schedule, fopp_sample, path_counts


def _nondecreasing(frames: int, steps: int) -> list[tuple[int, ...]]:
    return [
        s
        for s in itertools.product(range(steps + 1), repeat=frames)
        if all(a <= b for a, b in itertools.pairwise(s))
    ]


@pytest.mark.parametrize(("frames", "steps"), [(1, 1), (2, 3), (3, 4), (4, 2), (5, 3)])
def test_dp_counts_equal_brute_force(frames: int, steps: int) -> None:
    table = path_counts(frames, steps)
    for k in range(1, frames + 1):
        for v in range(steps + 1):
            assert table[k][v] == len(_nondecreasing(k, v)), (k, v)


def _fopp_exact(frames: int, steps: int) -> dict[tuple[int, ...], float]:
    """FoPP's probability of every clip, from its definition: f and t_f uniform, then
    uniform over the non-decreasing clips with that value at f (enumerated)."""
    clips = _nondecreasing(frames, steps)
    prob = dict.fromkeys(clips, 0.0)
    for f in range(frames):
        for v in range(steps + 1):
            matching = [c for c in clips if c[f] == v]
            for c in matching:
                prob[c] += 1.0 / (frames * (steps + 1) * len(matching))
    return prob


def test_fopp_is_non_decreasing_and_matches_its_definition() -> None:
    frames, steps, n = 3, 3, 40000
    gen = torch.Generator().manual_seed(0)
    s = fopp_sample(n, frames, steps, gen)
    assert bool((s[:, 1:] >= s[:, :-1]).all())
    assert int(s.min()) >= 0 and int(s.max()) <= steps
    exact = _fopp_exact(frames, steps)
    counts = {c: 0 for c in exact}
    for row in s.tolist():
        counts[tuple(row)] += 1
    # chi-square goodness of fit at level 0.001 (seed 0): 19 degrees of freedom -> 43.82
    chi2 = sum((counts[c] - n * p) ** 2 / (n * p) for c, p in exact.items())
    assert len(exact) == 20 and chi2 < 43.82, chi2


def test_fopp_marginals_closer_to_uniform_than_sorted_iid() -> None:
    frames, steps = 4, 5
    exact = _fopp_exact(frames, steps)
    uniform = 1.0 / (steps + 1)
    # sorted i.i.d. uniform steps, exactly: every tuple equally likely, then sorted
    sorted_iid: dict[tuple[int, ...], float] = {}
    for c in itertools.product(range(steps + 1), repeat=frames):
        key = tuple(sorted(c))
        sorted_iid[key] = sorted_iid.get(key, 0.0) + uniform**frames

    def mean_tv(dist: dict[tuple[int, ...], float]) -> float:
        tv = 0.0
        for f in range(frames):
            marginal = [sum(p for c, p in dist.items() if c[f] == v) for v in range(steps + 1)]
            tv += 0.5 * sum(abs(m - uniform) for m in marginal)
        return tv / frames

    assert mean_tv(exact) < mean_tv(sorted_iid)
    # and the sampler's empirical marginals (seed 1, 20000 draws) agree with that ranking
    s = fopp_sample(20000, frames, steps, torch.Generator().manual_seed(1))
    emp = {}
    for row in s.tolist():
        emp[tuple(row)] = emp.get(tuple(row), 0.0) + 1 / 20000
    assert abs(mean_tv(emp) - mean_tv(exact)) < 0.02
    assert mean_tv(emp) < mean_tv(sorted_iid)


@pytest.mark.parametrize(
    ("steps", "frames", "offset"), [(5, 4, 0), (5, 4, 5), (6, 3, 2), (4, 1, 3), (10, 5, 1)]
)
def test_ad_runs_exactly_s_plus_f_minus_1_times_offset(
    steps: int, frames: int, offset: int
) -> None:
    levels = ad_schedule(frames, steps, offset)
    assert levels.shape[0] - 1 == steps + (frames - 1) * offset
    check_schedule(levels, steps)
    assert bool((levels[0] == steps).all()) and bool((levels[-1] == 0).all())
    changes = (levels[1:] != levels[:-1]).any(dim=1)
    assert bool(changes.all())  # every iteration moves some frame
    # every frame takes exactly `steps` single steps, frame i starting at iteration i * offset
    for i in range(frames):
        moves = (levels[1:, i] != levels[:-1, i]).nonzero()[:, 0]
        assert moves.tolist() == list(range(i * offset, i * offset + steps))


def test_ad_generate_calls_and_schedule_errors() -> None:
    torch.manual_seed(0)
    model = FrameTransformer(dim=32, n_layers=1, n_heads=2).eval()
    ctx = torch.randn(1, 2, 8, 8, 8)
    for steps, frames, offset in [(3, 3, 1), (2, 4, 2), (4, 2, 0)]:
        x, calls = ad_generate(model, ctx, frames, steps=steps, offset=offset)
        assert x.shape == (1, frames, 8, 8, 8)
        assert calls == steps + (frames - 1) * offset
    bad = ad_schedule(3, 3, 1).clone()
    bad[2, 2] = 0  # frame 2 cleaner than frame 1 in row 2
    with pytest.raises(ConfigError, match="not monotone across frames: row 2"):
        ad_generate(model, ctx, 3, steps=3, schedule=bad)
    noisier = ad_schedule(2, 3, 0).clone()
    noisier[2] = 3
    with pytest.raises(ConfigError, match="adds noise"):
        check_schedule(noisier, 3)
    with pytest.raises(ConfigError, match="offset must lie in 0..steps=3"):
        ad_schedule(3, 3, 4)


def test_ad_generate_cached_equals_uncached() -> None:
    """The KV-cached AD rollout (context and finished frames encoded once) gives the same
    frames as one full forward per iteration, for several (S, F, s) and a schedule with
    pauses; and the cache is really used: other context frames give other frames."""
    torch.manual_seed(0)
    model = FrameTransformer(dim=32, n_layers=2, n_heads=2).eval()
    ctx = torch.randn(2, 3, 8, 8, 8)
    paused = torch.tensor(
        [[3, 3, 3], [2, 3, 3], [2, 2, 3], [1, 2, 3], [0, 1, 2], [0, 0, 1], [0, 0, 0]]
    )
    cases = [dict(steps=3, offset=1), dict(steps=4, offset=0), dict(steps=3, offset=3)]
    cases.append(dict(steps=3, schedule=paused))
    for case in cases:
        frames = 3
        outs = {}
        for use_cache in (True, False):
            gen = torch.Generator().manual_seed(1)
            outs[use_cache], calls = ad_generate(
                model, ctx, frames, use_cache=use_cache, generator=gen, **case
            )
            if "offset" in case:
                assert calls == case["steps"] + (frames - 1) * case["offset"]
        assert (outs[True] - outs[False]).abs().max() <= 1e-5, case
    other = ctx.clone()
    other[:, 0] += 1.0
    a, _ = ad_generate(model, ctx, 3, steps=3, generator=torch.Generator().manual_seed(1))
    b, _ = ad_generate(model, other, 3, steps=3, generator=torch.Generator().manual_seed(1))
    assert (a - b).abs().max() > 1e-3
