"""The tile structure of a mask: which key blocks each query block must visit.

A (B, Tq, Tk) boolean visibility is cut into (BLOCK_M x BLOCK_N) tiles. A tile is

* *empty* when no query of it sees any key of it: a kernel never visits it (it reads
  neither its keys nor its values);
* *full* when every query sees every key: a kernel runs it without a mask;
* *partial* otherwise: a kernel applies the tile's own (BLOCK_M x BLOCK_N) mask, stored
  once in a compact table of the partial tiles only.

This is the block-sparse representation of FlexAttention's ``BlockMask`` ("FlexAttention:
A Programming Model for Generating Optimized Attention Kernels", Dong et al., 2024,
arXiv:2412.05496: ``kv_num_blocks``/``kv_indices`` for partial blocks and their ``full_``
counterparts, visited in two loops),
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
    """Per (row, query block), the key blocks to visit: partial ones and full ones in two
    lists (a kernel runs two loops without a per-tile branch), each in ascending order.

    ``partial_count``, ``full_count``: (B, nQ) int32, how many partial / full key blocks
    the query block visits; ``partial_index``, ``full_index``: (B, nQ, nK) int32, those
    key blocks first, then unused slots; ``partial_masks``: (P, BLOCK_M, BLOCK_N) int8,
    1 = visible, the partial tiles in (row, query block, key block) order, so slot ``s``
    of query block ``(b, i)`` has mask ``partial_start[b, i] + s``; ``partial_start``:
    (B, nQ) int32; ``has_key``: (B, Tq) bool, rows that see at least one key.
    """

    partial_count: Tensor
    partial_index: Tensor
    partial_start: Tensor
    partial_masks: Tensor
    full_count: Tensor
    full_index: Tensor
    has_key: Tensor
    block_m: int
    block_n: int
    q_len: int
    k_len: int

    @property
    def visited_tiles(self) -> int:
        """Tiles a kernel visits (full + partial), over every row and query block."""
        return int(self.partial_count.sum()) + int(self.full_count.sum())

    @property
    def total_tiles(self) -> int:
        batch, n_q, n_k = self.full_index.shape
        return batch * n_q * n_k

    def to_dense(self) -> Tensor:
        """(B, Tq, Tk) bool visibility as a kernel sees it: unvisited tiles False, full
        tiles True, partial tiles their stored mask (tests compare it with the input)."""
        batch, n_q, n_k = self.full_index.shape
        bm, bn = self.block_m, self.block_n
        tiles = torch.zeros(batch, n_q, n_k, bm, bn, dtype=torch.bool)
        p_count, p_index = self.partial_count.cpu(), self.partial_index.cpu()
        p_start, masks = self.partial_start.cpu(), self.partial_masks.cpu().bool()
        f_count, f_index = self.full_count.cpu(), self.full_index.cpu()
        for b in range(batch):
            for qb in range(n_q):
                for slot in range(int(p_count[b, qb])):
                    tiles[b, qb, int(p_index[b, qb, slot])] = masks[int(p_start[b, qb]) + slot]
                for slot in range(int(f_count[b, qb])):
                    tiles[b, qb, int(f_index[b, qb, slot])] = True
        dense = tiles.permute(0, 1, 3, 2, 4).reshape(batch, n_q * bm, n_k * bn)
        return dense[:, : self.q_len, : self.k_len]


def _listed_first(selected: Tensor) -> tuple[Tensor, Tensor]:
    """(count (B, nQ), index (B, nQ, nK)) int32: the selected key blocks of each query
    block first, in ascending order (a stable sort)."""
    order = torch.sort((~selected).to(torch.int8), dim=-1, stable=True).indices
    count = selected.sum(dim=-1).to(torch.int32).contiguous()
    return count, order.to(torch.int32).contiguous()


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
    full = tiles.all(dim=-1).all(dim=-1)
    partial = any_visible & ~full
    partial_count, partial_index = _listed_first(partial)
    full_count, full_index = _listed_first(full)
    ends = partial_count.flatten().cumsum(0, dtype=torch.int32)
    partial_start = (ends - partial_count.flatten()).view(batch, n_q).contiguous()
    return TileLists(
        partial_count=partial_count,
        partial_index=partial_index,
        partial_start=partial_start,
        partial_masks=tiles[partial].to(torch.int8).contiguous(),  # (P, BM, BN), row-major
        full_count=full_count,
        full_index=full_index,
        has_key=visible.any(dim=-1),
        block_m=block_m,
        block_n=block_n,
        q_len=q_len,
        k_len=k_len,
    )


__all__ = ["TileLists", "tile_lists"]
