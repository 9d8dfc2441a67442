"""FAR: cached generation equals uncached, frame-causality, the loss and its options."""

import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_video.far import FarLoss, far_generate, far_velocity
from ar_video.model import FrameTransformer


@pytest.fixture(scope="module")
def model() -> FrameTransformer:
    torch.manual_seed(0)
    m = FrameTransformer(dim=32, n_layers=2, n_heads=2)
    for p in m.parameters():  # a random model with non-trivial heads (zero-init otherwise)
        torch.nn.init.normal_(p, std=0.1)
    return m.eval()


@pytest.mark.parametrize(("window", "long_context"), [(3, True), (3, False), (2, True), (6, True)])
def test_cached_generation_equals_uncached(
    model: FrameTransformer, window: int, long_context: bool
) -> None:
    context = torch.randn(2, 3, 8, 8, 8)
    out = {}
    for use_cache in (True, False):
        out[use_cache] = far_generate(
            model,
            context,
            5,
            steps=4,
            window=window,
            long_context=long_context,
            use_cache=use_cache,
            generator=torch.Generator().manual_seed(7),
        )
    assert out[True].shape == (2, 5, 8, 8, 8)
    assert torch.allclose(out[True], out[False], atol=1e-5, rtol=0)


def test_long_context_changes_the_rollout(model: FrameTransformer) -> None:
    context = torch.randn(1, 5, 8, 8, 8)
    kw = dict(steps=3, window=2, generator=None)
    a = far_generate(model, context, 2, long_context=True, **kw)  # type: ignore[arg-type]
    b = far_generate(model, context, 2, long_context=False, **kw)  # type: ignore[arg-type]
    assert not torch.allclose(a, b)  # the coarse frames are seen


def test_frame_t_ignores_later_frames(model: FrameTransformer) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 6, 8, 8, 8)
    t = torch.rand(2, 6)
    clean = torch.rand(2, 6) < 0.3
    long = torch.randn(2, 2, 8, 8, 8)
    v = far_velocity(model, x, t, clean, long)
    for frame in range(5):
        y, t2 = x.clone(), t.clone()
        y[:, frame + 1 :] += torch.randn_like(y[:, frame + 1 :])
        t2[:, frame + 1 :] = torch.rand(2, 5 - frame)
        w = far_velocity(model, y, t2, clean, long)
        assert torch.allclose(w[:, : frame + 1], v[:, : frame + 1], atol=1e-6)
        assert not torch.allclose(w[:, frame + 1 :], v[:, frame + 1 :], atol=1e-3)


def test_loss_skips_clean_frames_and_backpropagates(model: FrameTransformer) -> None:
    torch.manual_seed(0)
    z = torch.randn(4, 8, 8, 8, 8)
    for loss_fn in (FarLoss(window=4, max_long=3), FarLoss(window=4, times="fopp")):
        loss = loss_fn(model, z)
        assert torch.isfinite(loss)
        loss.backward()
    model.zero_grad()
    with pytest.raises(InputError, match="window 4 \\+ max_long 6"):
        FarLoss(window=4, max_long=6)(model, z)
    with pytest.raises(ConfigError, match="window >= 2"):
        FarLoss(window=1)


def test_bad_inputs(model: FrameTransformer) -> None:
    with pytest.raises(InputError, match=r"\(B, F, 8, 8, 8\) latents"):
        far_generate(model, torch.randn(1, 2, 4, 8, 8), 1)
    with pytest.raises(InputError, match="max_frames"):
        far_generate(model, torch.randn(1, 62, 8, 8, 8), 3, steps=1)


def test_rope_decay_is_a_test_time_option() -> None:
    torch.manual_seed(0)
    model = FrameTransformer(dim=32, n_layers=2, n_heads=2).eval()
    for name, p in model.named_parameters():  # sharp attention, so positions matter
        if "norm" not in name:
            torch.nn.init.normal_(p, std=0.5 if ".wqkv." in name else 0.1)
            if ".wqkv." in name:  # queries and keys sharp, values as the rest
                with torch.no_grad():
                    p[-p.shape[0] // 3 :].normal_(std=0.1)
    context = torch.randn(1, 6, 8, 8, 8)
    kw = dict(steps=2, window=3, generator=None)
    torch.manual_seed(0)
    plain = far_generate(model, context, 2, **kw)  # type: ignore[arg-type]
    model.rope_decay = 0.5  # distant frames look half as far
    try:
        torch.manual_seed(0)
        decayed = far_generate(model, context, 2, **kw)  # type: ignore[arg-type]
        torch.manual_seed(0)
        uncached = far_generate(model, context, 2, use_cache=False, **kw)  # type: ignore[arg-type]
    finally:
        model.rope_decay = 1.0
    assert not torch.allclose(plain, decayed, atol=1e-4)
    assert torch.allclose(decayed, uncached, atol=1e-5)


def test_bad_model_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="patch=3 does not divide latent_size=8"):
        FrameTransformer(patch=3)
