"""ARFlow's hybrid attention: the chunk-parallel forward equals the recurrent one (1e-5);
perturbing image j leaves images < j unchanged; the cross-image term equals a loop over
the decayed sums it stands for; bad input."""

from __future__ import annotations

import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_diffusion.arflow import ARFlowBackbone, HybridAttention


def make() -> tuple[ARFlowBackbone, torch.Tensor]:
    torch.manual_seed(0)
    return ARFlowBackbone(width=32, layers=2, heads=4).eval(), torch.randn(2, 5, 6, 32)


def test_chunk_parallel_equals_recurrent() -> None:
    model, x = make()
    with torch.no_grad():
        full = model(x)
        states = model.init_states(2)
        for j in range(5):
            out, states = model.step(x[:, j], states)
            torch.testing.assert_close(out, full[:, j], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("j", [0, 2, 4])
def test_later_images_do_not_change_earlier_ones(j: int) -> None:
    model, x = make()
    moved = x.clone()
    moved[:, j] += torch.randn_like(moved[:, j])
    with torch.no_grad():
        a, b = model(x), model(moved)
    torch.testing.assert_close(b[:, :j], a[:, :j], rtol=0, atol=0)
    assert not torch.allclose(b[:, j], a[:, j])


def test_cross_image_term_is_the_decayed_sum() -> None:
    """out_j - intra_j = (Q_j / sqrt(D)) sum_{i<j} gamma^(j-1-i) K_i^T V_i, by a loop."""
    torch.manual_seed(1)
    layer = HybridAttention(16, 2)
    x = torch.randn(1, 4, 3, 16)
    with torch.no_grad():
        q, k, v = layer._qkv(x)
        intra = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        want = torch.zeros_like(intra)
        for j in range(4):
            for h in range(2):
                s = torch.zeros(8, 8)
                for i in range(j):
                    s += layer.gamma[h] ** (j - 1 - i) * k[0, h, i].T @ v[0, h, i]
                want[0, h, j] = q[0, h, j] @ s
        torch.testing.assert_close(layer(x), layer._out(intra + want), rtol=1e-5, atol=1e-6)


def test_bad_input() -> None:
    model, x = make()
    with pytest.raises(InputError, match=r"\(B, n, P, C\) with C=32"):
        model(x[..., :16])
    with pytest.raises(InputError, match=r"\(B, P, C\)"):
        model.step(x, model.init_states(2))
    with pytest.raises(ConfigError, match="must divide"):
        HybridAttention(30, 4)
