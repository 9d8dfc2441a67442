"""Straightforward Python-loop references for every MaskSpec constructor.

Each function answers one (query, key) pair with plain Python, written from the
definition in the docstring of ``ar_core.masks`` and sharing no code with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Pair = Callable[[int, int, int], bool]  # (b, q, kv) -> may attend


def causal() -> Pair:
    return lambda b, q, kv: kv <= q


def prefix(n: int) -> Pair:
    def see(b: int, q: int, kv: int) -> bool:
        if q < n and kv < n:
            return True
        return kv <= q

    return see


def block_causal(steps: Sequence[int]) -> Pair:
    return lambda b, q, kv: steps[kv] <= steps[q]


def block_diffusion(n: int, block_size: int) -> Pair:
    """BD3-LM's three rules over [x_t (n) ; x_0 (n)], written out case by case."""

    def see(b: int, q: int, kv: int) -> bool:
        q_noisy, kv_noisy = q < n, kv < n
        q_block = (q if q_noisy else q - n) // block_size
        kv_block = (kv if kv_noisy else kv - n) // block_size
        if q_noisy and kv_noisy:
            return q_block == kv_block
        if q_noisy:
            return kv_block < q_block
        if kv_noisy:
            return False
        return kv_block <= q_block

    return see


def two_stream(steps: Sequence[int], own_step: bool = False) -> Pair:
    n = len(steps)

    def see(b: int, q: int, kv: int) -> bool:
        q_query, kv_query = q >= n, kv >= n
        sq, skv = steps[q % n], steps[kv % n]
        if not q_query:
            return (not kv_query) and skv <= sq
        if not kv_query:
            return skv < sq
        return q == kv or (own_step and sq == skv)

    return see


def sliding_window(w: int) -> Pair:
    return lambda b, q, kv: kv <= q and q - kv < w


def sets(prefix_len: int, option_lens: Sequence[int], suffix_len: int) -> Pair:
    owner: list[str] = ["prefix"] * prefix_len
    for i, length in enumerate(option_lens):
        owner += [f"option{i}"] * length
    owner += ["suffix"] * suffix_len

    def see(b: int, q: int, kv: int) -> bool:
        if kv > q:
            return False
        if owner[q] in ("prefix", "suffix") or owner[kv] == "prefix":
            return True
        return owner[q] == owner[kv]

    return see


def tree(parents: Sequence[int], starts: Sequence[int]) -> Pair:
    """``starts``: one start per row (a single value is used for every row)."""

    def ancestors_or_self(node: int) -> set[int]:
        out = set()
        while node >= 0:
            out.add(node)
            node = parents[node]
        return out

    def see(b: int, q: int, kv: int) -> bool:
        start = starts[b] if len(starts) > 1 else starts[0]
        m = len(parents)
        if q < start:
            return kv <= q
        if q >= start + m:  # past this row's tree: not a node
            return False
        if kv < start:
            return True
        return kv < start + m and (kv - start) in ancestors_or_self(q - start)

    return see


def document(ids: Sequence[int] | Sequence[Sequence[int]], causal: bool = True) -> Pair:
    def see(b: int, q: int, kv: int) -> bool:
        row = ids[b] if isinstance(ids[0], Sequence) else ids
        return (kv <= q or not causal) and row[q] == row[kv]  # type: ignore[index]

    return see


def key_padding(valid: Sequence[bool] | Sequence[Sequence[bool]]) -> Pair:
    def see(b: int, q: int, kv: int) -> bool:
        row = valid[b] if isinstance(valid[0], Sequence) else valid
        return bool(row[kv])  # type: ignore[index]

    return see


def both(a: Pair, c: Pair) -> Pair:
    return lambda b, q, kv: a(b, q, kv) and c(b, q, kv)


def either(a: Pair, c: Pair) -> Pair:
    return lambda b, q, kv: a(b, q, kv) or c(b, q, kv)


def dense(see: Pair, q_len: int, kv_len: int, q_offsets: Sequence[int]) -> torch.Tensor:
    """(B, q_len, kv_len) bool, one Python call per (b, q, kv)."""
    out = torch.zeros(len(q_offsets), q_len, kv_len, dtype=torch.bool)
    for b, offset in enumerate(q_offsets):
        for i in range(q_len):
            for j in range(kv_len):
                out[b, i, j] = see(b, offset + i, j)
    return out
