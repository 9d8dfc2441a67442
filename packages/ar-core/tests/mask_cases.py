"""The masks every attention test runs: (id, MaskSpec, Python-loop reference, length)."""

from __future__ import annotations

import mask_reference as ref
import torch

from ar_core import masks

N = 12  # positions covered by the length-bound masks below
STEPS = [0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 5]
STEPS_SHUFFLED = [3, 0, 2, 0, 1, 3, 2, 1, 0, 2, 3, 1]  # any-order: steps out of position order
PARENTS = [-1, 0, 0, 1, 1, 2, -1, 6]  # two roots; M = 8 nodes
DOCS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3]
VALID = [True, True, False, True, True, True, False, False, True, True, True, False]


def cases() -> list[tuple[str, masks.MaskSpec, ref.Pair, int]]:
    """(id, spec, reference, positions covered)."""
    return [
        ("causal", masks.causal(), ref.causal(), N),
        ("prefix0", masks.prefix(0), ref.prefix(0), N),
        ("prefix5", masks.prefix(5), ref.prefix(5), N),
        ("block_causal", masks.block_causal(STEPS), ref.block_causal(STEPS), N),
        (
            "block_causal_any_order",
            masks.block_causal(torch.tensor(STEPS_SHUFFLED)),
            ref.block_causal(STEPS_SHUFFLED),
            N,
        ),
        ("block_diffusion", masks.block_diffusion(6, 2), ref.block_diffusion(6, 2), 12),
        ("block_diffusion_1", masks.block_diffusion(6, 1), ref.block_diffusion(6, 1), 12),
        ("block_diffusion_all", masks.block_diffusion(6, 6), ref.block_diffusion(6, 6), 12),
        ("two_stream", masks.two_stream(STEPS[:6]), ref.two_stream(STEPS[:6]), 12),
        (
            "two_stream_own_step",
            masks.two_stream(STEPS[:6], query_sees_own_step=True),
            ref.two_stream(STEPS[:6], own_step=True),
            12,
        ),
        ("window1", masks.sliding_window(1), ref.sliding_window(1), N),
        ("window3", masks.sliding_window(3), ref.sliding_window(3), N),
        ("sets", masks.sets(3, [2, 3, 1], 3), ref.sets(3, [2, 3, 1], 3), 12),
        ("sets_no_prefix", masks.sets(0, [4, 4], 4), ref.sets(0, [4, 4], 4), 12),
        ("tree", masks.tree(torch.tensor(PARENTS), 4), ref.tree(PARENTS, [4]), 12),
        ("tree_at_0", masks.tree(PARENTS, 0), ref.tree(PARENTS, [0]), 8),
        ("document", masks.document(DOCS), ref.document(DOCS), N),
        (
            "document_bidirectional",
            masks.document(DOCS, causal=False),
            ref.document(DOCS, causal=False),
            N,
        ),
        (
            "causal_and_key_padding",
            masks.causal() & masks.key_padding(VALID),
            ref.both(ref.causal(), ref.key_padding(VALID)),
            N,
        ),
        (
            "block_and_window",
            masks.block_causal(STEPS) & masks.sliding_window(4),
            ref.both(ref.block_causal(STEPS), ref.sliding_window(4)),
            N,
        ),
        (
            "document_or_prefix",
            masks.document(DOCS) | masks.prefix(3),
            ref.either(ref.document(DOCS), ref.prefix(3)),
            N,
        ),
    ]


CASES = cases()
IDS = [c[0] for c in CASES]
