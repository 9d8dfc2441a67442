"""ACDiT: its skip-causal mask against a loop over the paper's rules and against its flex
BlockMask; the KV-cached denoising call of block j equals the training forward at block
j; one block is a plain bidirectional diffusion transformer; bad input."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from ar_core import masks
from ar_core.errors import ConfigError, InputError
from ar_diffusion.acdit import ACDiT


def skip_causal_reference(n: int, block: int, q: int, kv: int) -> bool:
    """ACDiT's rules over [noisy (n); clean (n)], written as a loop over cases."""
    q_clean, kv_clean = q >= n, kv >= n
    bq, bkv = (q % n) // block, (kv % n) // block
    if q_clean:
        return kv_clean and bkv <= bq  # clean sees clean blocks <= its own
    if kv_clean:
        return bkv < bq  # noisy sees the clean blocks before it
    return bkv == bq  # and its own noisy block


@pytest.mark.parametrize(("n", "block"), [(8, 1), (8, 2), (12, 4), (8, 8)])
def test_mask_equals_the_loop_reference_and_its_block_mask(n: int, block: int) -> None:
    model = ACDiT(2, n, block, width=16, heads=2)
    dense = model.attn_mask.to_dense(2 * n, 2 * n)[0]
    expected = torch.tensor(
        [[skip_causal_reference(n, block, q, kv) for kv in range(2 * n)] for q in range(2 * n)]
    )
    assert torch.equal(dense, expected)
    bm = create_block_mask(
        model.attn_mask.mask_mod, None, None, 2 * n, 2 * n, device="cpu", BLOCK_SIZE=block
    )
    tiles = bm.to_dense()[0, 0].bool()  # (2n / block, 2n / block): some pair visible
    k = 2 * n // block
    assert torch.equal(tiles, expected.view(k, block, k, block).any(-1).any(1))


def make(block: int) -> tuple[ACDiT, torch.Tensor]:
    torch.manual_seed(0)
    model = ACDiT(3, 8, block, width=32, layers=2, heads=2).eval()
    return model, torch.randn(2, 8, 3)


@pytest.mark.parametrize("block", [1, 2, 4])
def test_cached_block_equals_the_training_forward(block: int) -> None:
    model, x = make(block)
    nb = 8 // block
    gen = torch.Generator().manual_seed(1)
    t_blocks = torch.rand(2, nb, generator=gen)
    x_t = torch.randn(2, 8, 3, generator=gen)
    with torch.no_grad():
        full = model.training_forward(x_t, t_blocks, x)  # (2, 8, 3)
        cache = model.new_cache(2)
        for j in range(nb):
            sl = slice(j * block, (j + 1) * block)
            # each row's noisy block at its own time, over the clean blocks < j
            v = torch.stack(
                [
                    model.block_velocity(cache, x_t[:, sl], float(t_blocks[r, j]), j)[r]
                    for r in range(2)
                ]
            )
            torch.testing.assert_close(v, full[:, sl], rtol=1e-5, atol=1e-5)
            model.commit_block(cache, x[:, sl], j)
    assert int(cache.lengths[0]) == 8


def test_one_block_is_plain_diffusion() -> None:
    """Block size N: the noisy copy sees only itself, bidirectionally; the clean copy
    changes nothing."""
    model, x = make(8)
    gen = torch.Generator().manual_seed(2)
    t = torch.rand(2, 1, generator=gen)
    x_t = torch.randn(2, 8, 3, generator=gen)
    with torch.no_grad():
        ours = model.training_forward(x_t, t, x)
        emb = model.embeddings(x_t, t.expand(2, 8))
        plain = model.transformer(
            torch.zeros(2, 8, dtype=torch.long),
            mask=masks.block_causal(torch.zeros(8, dtype=torch.long)),  # all see all
            query_embeds=emb,
        ).hidden
        torch.testing.assert_close(ours, model.out(plain), rtol=1e-5, atol=1e-5)
        other = model.training_forward(x_t, t, torch.randn(2, 8, 3, generator=gen))
        torch.testing.assert_close(other, ours, rtol=0, atol=0)


def test_sampling_calls_and_training_step() -> None:
    model, x = make(2)
    out, calls = model.sample(3, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 8, 3) and calls == 4 * 4 + 3
    loss = model.loss(x)
    loss.backward()
    assert torch.isfinite(loss) and model.embed.weight.grad is not None


def test_class_conditional_cached_block_equals_the_training_forward() -> None:
    """With labels: the cached calls still equal the training forward, and the label
    changes the velocity."""
    torch.manual_seed(0)
    model = ACDiT(3, 8, 4, width=32, layers=2, heads=2, num_classes=5).eval()
    gen = torch.Generator().manual_seed(1)
    x, x_t = torch.randn(2, 8, 3, generator=gen), torch.randn(2, 8, 3, generator=gen)
    t_blocks, y = torch.full((2, 2), 0.3), torch.tensor([1, 4])
    with torch.no_grad():
        full = model.training_forward(x_t, t_blocks, x, y)
        cache = model.new_cache(2)
        for j in range(2):
            sl = slice(4 * j, 4 * j + 4)
            v = model.block_velocity(cache, x_t[:, sl], 0.3, j, y)
            torch.testing.assert_close(v, full[:, sl], rtol=1e-5, atol=1e-5)
            model.commit_block(cache, x[:, sl], j, y)
        other = model.training_forward(x_t, t_blocks, x, torch.tensor([2, 4]))
    assert not torch.allclose(other[0], full[0]) and torch.equal(other[1], full[1])
    out, calls = model.sample(2, 3, labels=y, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8, 3) and calls == 2 * 3 + 1
    with pytest.raises(InputError, match=r"labels must lie in \[0, 5\)"):
        model.sample(1, 2, labels=torch.tensor([5]))
    with pytest.raises(InputError, match=r"labels must be a long tensor \(2,\)"):
        model.loss(x)
    with pytest.raises(InputError, match="unconditional model"):
        make(2)[0].loss(x, torch.tensor([0, 1]))


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="block_size=3 does not divide"):
        ACDiT(2, 8, 3)
    model, _ = make(2)
    with pytest.raises(InputError, match=r"tokens must be \(M, 8, 3\)"):
        model.loss(torch.randn(2, 8, 2))
    with pytest.raises(InputError, match="NaN"):
        model.loss(torch.full((1, 8, 3), float("nan")))
    with pytest.raises(ConfigError, match="steps"):
        model.sample(2, 0)
