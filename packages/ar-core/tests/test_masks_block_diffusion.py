"""masks.block_diffusion: the three rules of BD3-LM's training mask, against the Python-loop
reference at every (q, kv) for several sizes, and against FlexAttention's BlockMask built
from the same mask_mod."""

from __future__ import annotations

import mask_reference as ref
import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from ar_core import masks
from ar_core.errors import ConfigError


@pytest.mark.parametrize(("n", "block"), [(1, 1), (8, 1), (8, 2), (12, 4), (12, 12), (16, 8)])
def test_equals_the_loop_reference_at_every_pair(n: int, block: int) -> None:
    spec = masks.block_diffusion(n, block)
    see = ref.block_diffusion(n, block)
    dense = spec.to_dense(2 * n, 2 * n)[0]
    expected = torch.tensor([[see(0, q, kv) for kv in range(2 * n)] for q in range(2 * n)])
    assert torch.equal(dense, expected)
    # block size 1 and one block: the noisy half is the identity (AR's input positions) or
    # fully bidirectional within the sequence (MDLM)
    if block == 1:
        assert torch.equal(dense[:n, :n], torch.eye(n, dtype=torch.bool))
    if block == n:
        assert bool(dense[:n, :n].all() and not dense[:n, n:].any())


def test_equals_its_flex_block_mask() -> None:
    n, block = 16, 4
    spec = masks.block_diffusion(n, block)
    bm = create_block_mask(spec.mask_mod, None, None, 2 * n, 2 * n, device="cpu", BLOCK_SIZE=block)
    # the BlockMask's per-tile view (full or partial tiles = some pair visible)
    tiles = bm.to_dense()[0, 0].bool()  # (2n / block, 2n / block)
    dense = spec.to_dense(2 * n, 2 * n)[0]
    expected = dense.view(2 * n // block, block, 2 * n // block, block).any(-1).any(1)
    assert torch.equal(tiles, expected)
    # with tiles of the block size every tile is all-or-nothing: no partial tiles
    full = dense.view(2 * n // block, block, 2 * n // block, block).all(-1).all(1)
    assert torch.equal(full, expected)


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="block_size=3 does not divide the length n=8"):
        masks.block_diffusion(8, 3)
    with pytest.raises(ConfigError, match="n >= 1 and block_size >= 1"):
        masks.block_diffusion(8, 0)
    assert masks.block_diffusion(8, 2).cache_key != masks.block_diffusion(8, 4).cache_key
