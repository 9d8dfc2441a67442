"""ViD-GPT: cached (prompt KV) generation equals uncached; causal; the loss."""

import pytest
import torch

from ar_core.errors import ConfigError
from ar_video.model import FrameTransformer
from ar_video.vidgpt import VidGptLoss, vidgpt_generate, vidgpt_velocity


@pytest.fixture(scope="module")
def model() -> FrameTransformer:
    torch.manual_seed(0)
    m = FrameTransformer(dim=32, n_layers=2, n_heads=2)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return m.eval()


@pytest.mark.parametrize(("window", "chunk"), [(4, 1), (4, 2), (3, 2)])
def test_cached_equals_uncached(model: FrameTransformer, window: int, chunk: int) -> None:
    context = torch.randn(2, 3, 8, 8, 8)
    out = [
        vidgpt_generate(
            model,
            context,
            5,
            steps=4,
            window=window,
            chunk=chunk,
            use_cache=use_cache,
            generator=torch.Generator().manual_seed(3),
        )
        for use_cache in (True, False)
    ]
    assert out[0].shape == (2, 5, 8, 8, 8)
    assert torch.allclose(out[0], out[1], atol=1e-5, rtol=0)


def test_frame_t_ignores_later_frames(model: FrameTransformer) -> None:
    x = torch.randn(1, 5, 8, 8, 8)
    t = torch.rand(1, 5)
    clean = torch.tensor([[True, True, False, False, False]])
    v = vidgpt_velocity(model, x, t, clean)
    y = x.clone()
    y[:, 3:] = torch.randn_like(y[:, 3:])
    w = vidgpt_velocity(model, y, t, clean)
    assert torch.allclose(v[:, :3], w[:, :3], atol=1e-6)
    assert not torch.allclose(v[:, 3:], w[:, 3:], atol=1e-3)


def test_loss_and_bad_settings(model: FrameTransformer) -> None:
    loss = VidGptLoss(window=4)(model, torch.randn(3, 6, 8, 8, 8))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="chunk < window"):
        vidgpt_generate(model, torch.randn(1, 2, 8, 8, 8), 2, window=3, chunk=3)
