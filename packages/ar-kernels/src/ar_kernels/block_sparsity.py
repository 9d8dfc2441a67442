"""The tile structure of a mask: which key blocks each query block must visit.

A (B, Tq, Tk) boolean visibility is cut into (BLOCK_M x BLOCK_N) tiles. A tile is

* *empty* when no query of it sees any key of it: a kernel never visits it (it reads
  neither its keys nor its values);
* *full* when every query sees every key: a kernel runs it without a mask;
* *partial* otherwise: a kernel applies the tile's own (BLOCK_M x BLOCK_N) mask, stored
  once in a compact table of the partial tiles only.

This is the block-sparse representation of FlexAttention's ``BlockMask`` ("FlexAttention:
A Programming Model for Generating Optimized Attention Kernels", Dong et al., 2024,
arXiv:2412.05496: ``kv_num_blocks``/``kv_indices`` and their ``full_`` counterparts),
with the partial tiles' masks precomputed instead of evaluated in the kernel, so any
``MaskSpec`` (block-causal, tree, two-stream, ...) runs in a kernel that knows nothing
about masks. Structured masks are mostly empty or full tiles; the partial-tile table is
then a small fraction of the dense mask.

Notation: B batch, Tq queries, Tk keys, nQ = ceil(Tq / BLOCK_M) query blocks,
nK = ceil(Tk / BLOCK_N) key blocks, P partial tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core.errors import ConfigError


@dataclass(frozen=True)
class TileLists:
    """Per (row, query block), the key blocks to visit in ascending order.

    ``kv_count``: (B, nQ) int32, how many key blocks the query block visits;
    ``kv_index``: (B, nQ, nK) int32, the visited key blocks first (ascending), then
    unused slots; ``tile_id``: (B, nQ, nK) int32, aligned with ``kv_index``: -1 for a
    full tile, else the tile's index in ``partial_masks``; ``partial_masks``:
    (P, BLOCK_M, BLOCK_N) int8, 1 = visible; ``has_key``: (B, Tq) bool, rows that see at
    least one key.
    """

    kv_count: Tensor
    kv_index: Tensor
    tile_id: Tensor
    partial_masks: Tensor
    has_key: Tensor
    block_m: int
    block_n: int
    q_len: int
    k_len: int

    @property
    def visited_tiles(self) -> int:
        """Tiles a kernel visits (full + partial), over every row and query block."""
        return int(self.kv_count.sum())

    @property
    def total_tiles(self) -> int:
        batch, n_q, n_k = self.kv_index.shape
        return batch * n_q * n_k

    def to_dense(self) -> Tensor:
        """(B, Tq, Tk) bool visibility as a kernel sees it: unvisited tiles False, full
        tiles True, partial tiles their stored mask (tests compare it with the input)."""
        batch, n_q, n_k = self.kv_index.shape
        bm, bn = self.block_m, self.block_n
        tiles = torch.zeros(batch, n_q, n_k, bm, bn, dtype=torch.bool)
        count = self.kv_count.cpu()
        index, tile_id = self.kv_index.cpu(), self.tile_id.cpu()
        partial = self.partial_masks.cpu().bool()
        for b in range(batch):
            for qb in range(n_q):
                for slot in range(int(count[b, qb])):
                    kb, tile = int(index[b, qb, slot]), int(tile_id[b, qb, slot])
                    tiles[b, qb, kb] = True if tile < 0 else partial[tile]
        dense = tiles.permute(0, 1, 3, 2, 4).reshape(batch, n_q * bm, n_k * bn)
        return dense[:, : self.q_len, : self.k_len]


def tile_lists(visible: Tensor, block_m: int, block_n: int) -> TileLists:
    """The :class:`TileLists` of ``visible`` (B, Tq, Tk) bool, on its device."""
    if visible.dim() != 3 or visible.dtype != torch.bool:
        raise ConfigError(
            f"tile_lists needs a (B, Tq, Tk) bool visibility, got shape {tuple(visible.shape)} "
            f"and dtype {visible.dtype}"
        )
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 16 or size & (size - 1):
            raise ConfigError(f"{name} must be a power of two >= 16 (tl.dot tiles), got {size}")
    batch, q_len, k_len = visible.shape
    n_q, n_k = -(-q_len // block_m), -(-k_len // block_n)
    padded = F.pad(visible, (0, n_k * block_n - k_len, 0, n_q * block_m - q_len), value=False)
    tiles = padded.view(batch, n_q, block_m, n_k, block_n).permute(0, 1, 3, 2, 4)
    # (B, nQ, nK, BM, BN)
    any_visible = tiles.any(dim=-1).any(dim=-1)  # (B, nQ, nK)
    all_visible = tiles.all(dim=-1).all(dim=-1)
    partial = any_visible & ~all_visible
    # visited key blocks first, each group in ascending block order (a stable sort)
    order = torch.sort((~any_visible).to(torch.int8), dim=-1, stable=True).indices
    ids = torch.full((batch, n_q, n_k), -1, dtype=torch.int32, device=visible.device)
    n_partial = int(partial.sum())
    ids[partial] = torch.arange(n_partial, dtype=torch.int32, device=visible.device)
    partial_masks = tiles[partial].to(torch.int8).contiguous()  # (P, BM, BN)
    return TileLists(
        kv_count=any_visible.sum(dim=-1).to(torch.int32).contiguous(),
        kv_index=order.to(torch.int32).contiguous(),
        tile_id=ids.gather(-1, order).contiguous(),
        partial_masks=partial_masks,
        has_key=visible.any(dim=-1),
        block_m=block_m,
        block_n=block_n,
        q_len=q_len,
        k_len=k_len,
    )


__all__ = ["TileLists", "tile_lists"]
