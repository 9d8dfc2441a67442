"""Tokens per step of lookahead block layouts on the ~114M target of ``ar bench
decoding`` (built and cached there; built here the same way when missing): the
benchmark's 6 held-out prompts, 64 new bytes, eager runs, every output checked against
greedy. Counts are exact (no timing): new tokens after the first / steps after the prefill.

    uv run python tools/lookahead_sweep.py [--cache-dir DIR]

Shown in docs/packages/ar-decoding.md ("Lookahead on the CPU").
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ar_core import generate
from ar_core.generation import GenerationConfig
from ar_core.quant import prepack
from ar_decoding.benchmarks import decoding as bench

# label -> (block slots, lookahead settings)
LAYOUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "W=1 N=2 G=1, one 4-token candidate (the defaults)": ("6", {}),
    "W=1 N=3 G=1, one 3-token candidate": (
        "6", dict(ngram=3, candidate_len=3)
    ),
    "window=0, G=1, one 5-token candidate": ("6", dict(window=0, candidate_len=5)),
    "window=0, G=2, two 2-token candidates": (
        "5", dict(window=0, pool_size=2, candidate_len=2)
    ),
    "window=0, G=1, m=3, copy 5": ("4 / 6", dict(window=0, candidate_len=3, copy_len=5)),
    "W=1 N=3 G=2, m=3": ("9", dict(ngram=3, pool_size=2, candidate_len=3)),
    "window=0, G=1, one 8-token candidate": ("9", dict(window=0, candidate_len=8)),
    "window=0, G=2, two 5-token candidates": (
        "11", dict(window=0, pool_size=2, candidate_len=5)
    ),
    "window=0, G=1, one 11-token candidate": ("12", dict(window=0, candidate_len=11)),
    "W=1 N=3 G=2 m=3, copy 8 (the earlier defaults)": (
        "9 / 14", dict(ngram=3, pool_size=2, candidate_len=3, copy_len=8)
    ),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache/ar/bench"))
    args = parser.parse_args()
    torch.set_num_threads(2)  # building the target (when not cached) trains on both cores
    target, held = bench.default_grown_target(Path(args.cache_dir).expanduser())
    torch.set_num_threads(1)
    prepack(target.eval())
    xs = bench.prompts(held, 6, 160)
    n_new = 64
    cfg = GenerationConfig(max_new_tokens=n_new, temperature=0)
    greedy = [generate(target, x, cfg).sequences for x in xs]
    print("| setting | block T | tokens / step |\n|---|---|---|")
    for label, (slots, kw) in LAYOUTS.items():
        steps = 0
        for x, ref in zip(xs, greedy, strict=True):
            out = generate(target, x, cfg, strategy="lookahead", **kw)
            if not torch.equal(out.sequences, ref):
                raise SystemExit(f"{label}: output differs from greedy (a bug: please report)")
            steps += out.stats.target_forward_passes - 1  # the prefill gave the first token
        print(f"| {label} | {slots} | {(n_new - 1) * len(xs) / steps:.2f} |", flush=True)


if __name__ == "__main__":
    main()
