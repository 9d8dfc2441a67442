"""ARFlow: the chunk-parallel forward equals the recurrent one (1e-5), with one image per
chunk and with a pair layout; perturbing image j leaves images < j unchanged (backbone and
the generative model); the cross-image term equals a loop over the decayed sums it
stands for; the recurrent sampler's velocities are the training forward's on the
trajectory; class sequences; a short training run lowers the loss; bad input."""

from __future__ import annotations

import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_diffusion.arflow import ARFlow, ARFlowBackbone, HybridAttention, class_sequences


def make(chunk: int = 1, n: int = 6) -> tuple[ARFlowBackbone, torch.Tensor]:
    torch.manual_seed(0)
    model = ARFlowBackbone(width=32, layers=2, heads=4, images_per_chunk=chunk).eval()
    return model, torch.randn(2, n, 5, 32)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunk_parallel_equals_recurrent(chunk: int) -> None:
    model, x = make(chunk)
    with torch.no_grad():
        full = model(x)
        states = model.init_states(2)
        for j in range(6):
            out, states = model.step(x[:, j], states)
            torch.testing.assert_close(out, full[:, j], rtol=1e-5, atol=1e-5)
            assert states[0].keys.shape[2] == 5 * ((j + 1) % chunk)  # buffer of open chunk


@pytest.mark.parametrize(("chunk", "j"), [(1, 0), (1, 2), (1, 5), (2, 2), (2, 3), (3, 4)])
def test_later_images_do_not_change_earlier_ones(chunk: int, j: int) -> None:
    model, x = make(chunk)
    moved = x.clone()
    moved[:, j] += torch.randn_like(moved[:, j])
    with torch.no_grad():
        a, b = model(x), model(moved)
    torch.testing.assert_close(b[:, :j], a[:, :j], rtol=0, atol=0)
    assert not torch.allclose(b[:, j], a[:, j])
    if j + 1 < 6:  # and later images do see it
        assert not torch.allclose(b[:, j + 1], a[:, j + 1])


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


def tiny_arflow(chunk: int = 1, n: int = 4) -> ARFlow:
    torch.manual_seed(0)
    return ARFlow(8, 1, 2, n, 10, width=32, layers=2, heads=2, images_per_chunk=chunk).eval()


def test_tokens_round_trip_and_patch_layout() -> None:
    model = tiny_arflow()
    img = torch.arange(2 * 64.0).reshape(2, 1, 8, 8)
    tok = model.to_tokens(img)
    assert tok.shape == (2, 16, 4)
    torch.testing.assert_close(tok[0, 1], torch.tensor([2.0, 3.0, 10.0, 11.0]))  # patch (0, 1)
    torch.testing.assert_close(model.from_tokens(tok), img, rtol=0, atol=0)


@pytest.mark.parametrize("chunk", [1, 2])
def test_recurrent_sampler_is_the_training_forward(chunk: int) -> None:
    """The velocity the sampler used at each step equals the chunk-parallel velocity of
    the trajectory it drew (1e-5), and the samples follow the Euler updates."""
    model = tiny_arflow(chunk)
    labels = torch.tensor([3, 7, 0])
    out = model.sample(labels, generator=torch.Generator().manual_seed(0), return_sequence=True)
    assert out.sequence is not None and out.velocities is not None and out.times is not None
    assert out.calls == 4 and out.images.shape == (3, 1, 8, 8)
    t = out.times.expand(3, 4)
    with torch.no_grad():
        par = model.velocity(out.sequence, t, labels)
    torch.testing.assert_close(out.velocities, par, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        out.images, out.sequence[:, -1] + out.velocities[:, -1] / 4, rtol=0, atol=1e-6
    )


def test_model_velocity_is_causal_over_images() -> None:
    model = tiny_arflow()
    x, t, y = torch.randn(2, 4, 1, 8, 8), torch.rand(2, 4).sort(1).values, torch.tensor([1, 2])
    with torch.no_grad():
        a = model.velocity(x, t, y)
        moved = x.clone()
        moved[:, 2] += 1.0
        b = model.velocity(moved, t, y)
    torch.testing.assert_close(b[:, :2], a[:, :2], rtol=0, atol=0)
    assert not torch.allclose(b[:, 2:], a[:, 2:])


def test_class_sequences_and_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(5)  # 3 classes of 5 images
    images = torch.rand(15, 1, 8, 8) * 0.2 + labels[:, None, None, None] * 0.4
    seq, y = class_sequences(images, labels, 4, 16, gen)
    assert seq.shape == (16, 4, 1, 8, 8)
    for r in range(16):  # one class per row, distinct images
        assert torch.equal(
            labels[(seq[r, :, None] == images[None]).flatten(2).all(-1).nonzero()[:, 1]],
            y[r].repeat(4),
        )
        assert len({tuple(s.flatten().tolist()) for s in seq[r]}) == 4
    t = tiny_arflow().train_times(64, gen)
    assert (t.diff(dim=1) > 0).all() and (t[:, 0] < 0.25).all() and (t[:, 3] >= 0.75).all()
    model = tiny_arflow().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        seq, y = class_sequences(images, labels, 4, 16, gen)
        loss = model.loss(seq, y, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])


def test_bad_input() -> None:
    model, x = make()
    with pytest.raises(InputError, match=r"\(B, n, P, C\) with C=32"):
        model(x[..., :16])
    with pytest.raises(InputError, match=r"\(B, P, C\)"):
        model.step(x, model.init_states(2))
    with pytest.raises(ConfigError, match="must divide"):
        HybridAttention(30, 4)
    pair, _ = make(chunk=2)
    with pytest.raises(InputError, match=r"5 images do not fill a pair layout"):
        pair(torch.randn(1, 5, 5, 32))
    with pytest.raises(ConfigError, match="pair layout needs an even count"):
        ARFlow(n_images=5, images_per_chunk=2)
    with pytest.raises(ConfigError, match="patch=3 must divide image_size=8"):
        ARFlow(patch=3)
    flow = tiny_arflow()
    with pytest.raises(InputError, match="n_images=4"):
        flow.loss(torch.rand(2, 3, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(InputError, match=r"\(B, n, c, S, S\) with c=1, S=8"):
        flow.loss(torch.rand(2, 4, 1, 6, 6), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="NaN"):
        flow.loss(torch.full((1, 4, 1, 8, 8), float("nan")), torch.tensor([0]))
    with pytest.raises(InputError, match=r"labels must lie in \[0, 10\)"):
        flow.sample(torch.tensor([10]))
    with pytest.raises(InputError, match="class 1 has only 2 images"):
        class_sequences(torch.rand(5, 1, 8, 8), torch.tensor([0, 0, 0, 1, 1]), 3, 4)
