"""What a multi-token pass costs on this CPU: the prepacked linears of one block per row
count, and a whole compiled ``ModelPass`` per width, on the ~114M target of ``ar bench
decoding`` (built and cached there; built here the same way when missing). One thread;
CPU milliseconds (thread time for the linears, process time for the passes), medians.

    uv run python tools/pass_cost.py [--cache-dir DIR] [--widths 1,5,6,7,9,12] [--out FILE]

Shown in docs/packages/ar-core.md ("Width matters in steps of 6 rows").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from ar_core.generation import ModelPass
from ar_core.quant import prepack
from ar_decoding.benchmarks import decoding as bench


def linears_ms(dim: int, hidden: int, rows: range, repeats: int = 9, calls: int = 20) -> dict:
    """Median ms of one block's linears (wqkv, wo, w13, w2), prepacked, per row count."""
    shapes = [(dim, 3 * dim), (dim, dim), (dim, 2 * hidden), (hidden, dim)]
    mods = [prepack(nn.Sequential(nn.Linear(i, o, bias=False))) for i, o in shapes]
    out: dict[int, list[float]] = {}
    with torch.inference_mode():
        for _ in range(repeats):
            for m in rows:
                xs = [torch.randn(1, m, i) for i, _ in shapes]
                c0 = time.thread_time()
                for _ in range(calls):
                    for mod, x in zip(mods, xs, strict=True):
                        mod(x)
                out.setdefault(m, []).append((time.thread_time() - c0) / calls * 1000)
    return {m: sorted(v)[len(v) // 2] for m, v in out.items()}


def passes_ms(target: nn.Module, widths: list[int], repeats: int = 15) -> dict:
    """Median ms of a compiled pass of each width (causal table) after 160 cached tokens."""
    run = ModelPass(target, compile=True, widths=widths)
    out: dict[int, list[float]] = {}
    with torch.inference_mode():
        cache = target.new_cache(1, max_len=256)
        target(torch.randint(0, 256, (1, 160)), cache=cache)
        tables = {
            w: torch.tril(torch.ones(w, w, dtype=torch.bool)) if w > 1 else None for w in widths
        }
        for w in widths:  # compile each width first (tens of seconds each)
            run(torch.randint(0, 256, (1, w)), cache, table=tables[w])
        for _ in range(repeats):
            for w in widths:
                tokens = torch.randint(0, 256, (1, w))
                c0 = time.process_time()
                run(tokens, cache, table=tables[w])
                out.setdefault(w, []).append((time.process_time() - c0) * 1000)
    return {w: sorted(v)[len(v) // 2] for w, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache/ar/bench"))
    parser.add_argument("--widths", default="1,5,6,7,9,12")
    parser.add_argument("--out", default=".bench/pass_cost.json")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",") if w]
    if not widths or min(widths) < 1:
        raise SystemExit(f"--widths: give positive widths, e.g. 1,5,6,7; got {args.widths!r}")
    torch.set_num_threads(2)  # building the target (when not cached) trains on both cores
    target, _ = bench.default_grown_target(Path(args.cache_dir).expanduser())
    torch.set_num_threads(1)
    prepack(target.eval())
    lin = linears_ms(target.cfg.dim, target.cfg.hidden_dim, range(1, 17))
    one = lin[1]
    print("rows | linears of one block, ms | x one row")
    for m, ms in lin.items():
        print(f"{m:4d} | {ms:6.3f} | {ms / one:.2f}")
    cost = passes_ms(target, widths)
    step = cost.get(1)
    print("width | compiled pass, ms | x one-token step")
    for w, ms in cost.items():
        print(f"{w:5d} | {ms:6.1f} | {ms / step:.2f}" if step else f"{w:5d} | {ms:6.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"linears_ms": lin, "pass_ms": cost}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
