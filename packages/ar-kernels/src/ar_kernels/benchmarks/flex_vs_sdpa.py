"""FlexAttention vs SDPA with a dense boolean mask (and ar-kernels' Triton kernel on
CUDA), on block-causal masks.

Block-causal attention (block diffusion, ACDiT, VAR: position i sees j iff
block(j) <= block(i)) at 1k, 2k and 4k tokens, B=1, H=4, D=64, float32 (CPU) or
bfloat16 (CUDA). For each length and block size:

* ``flex_ms``: ``FlexBackend.attend`` with its BlockMask already cached (compiled
  ``flex_attention``; compilation and the first call are warm-up).
* ``sdpa_ms``: ``scaled_dot_product_attention(q, k, v, attn_mask=dense)`` with the
  (1, 1, T, T) boolean mask already built.
* ``triton_ms`` (CUDA only): ``TritonBackend.attend_prepared`` with its tile lists
  already built (``triton_plan_ms``: building them); ``triton_vs_flex`` =
  ``triton_ms / flex_ms`` (the goal of issue 17: <= 1.5 at 4k tokens). Off CUDA the
  row says why it was skipped (``triton_skipped``): Triton's CPU interpreter is for
  tests, not timings.
* ``block_mask_build_ms`` / ``dense_mask_build_ms``: building each mask once.
* Memory. CUDA: peak ``torch.cuda.max_memory_allocated`` during one attention call,
  minus what was allocated before it (the inputs and the mask). CPU: there is no
  allocator statistic, so it reports the bytes of the mask each backend consumes
  (dense (T, T) bools vs the BlockMask's block-index tensors); the score matrix SDPA's
  CPU kernel may allocate is not counted.

Times are medians of ``--repeats`` runs after ``--warmup`` runs.

    uv run ar bench flex_vs_sdpa -- [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core import masks
from ar_kernels.flex import FlexBackend
from ar_kernels.triton_backend import TritonBackend

BATCH, HEADS, HEAD_DIM = 1, 4, 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Extra CUDA memory at the peak of one call of ``fn`` (None off CUDA)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def block_mask_bytes(block_mask: Any) -> int:
    """Bytes of the index tensors a BlockMask holds."""
    total = 0
    for name in (
        "kv_num_blocks",
        "kv_indices",
        "full_kv_num_blocks",
        "full_kv_indices",
        "q_num_blocks",
        "q_indices",
        "full_q_num_blocks",
        "full_q_indices",
    ):
        t = getattr(block_mask, name, None)
        if isinstance(t, Tensor):
            total += t.numel() * t.element_size()
    return total


def run_case(
    seq_len: int, block: int, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int
) -> dict[str, Any]:
    spec = masks.block_causal(torch.arange(seq_len) // block)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(BATCH, HEADS, seq_len, HEAD_DIM, device=device, dtype=dtype, generator=g)
        for _ in range(3)
    )
    q_offset = torch.zeros(BATCH, dtype=torch.long, device=device)
    kv_len = torch.full((BATCH,), seq_len, dtype=torch.long, device=device)

    flex = FlexBackend()

    def build_block_mask() -> Any:
        flex._block_masks.clear()  # time a cache miss
        return flex.block_mask(spec, q_offset, kv_len, seq_len, seq_len)

    def build_dense() -> Tensor:
        return spec.to_dense(seq_len, seq_len, device=device)[:, None]  # (1, 1, T, T)

    block_mask_ms = time_ms(build_block_mask, device, 1, repeats)
    dense_ms = time_ms(build_dense, device, 1, repeats)
    block_mask, dense = build_block_mask(), build_dense()

    def run_flex() -> Tensor:
        return flex.attend(q, k, v, mask=spec, q_offset=q_offset, kv_len=kv_len, scale=None)

    def run_sdpa() -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)

    max_diff = (run_flex().float() - run_sdpa().float()).abs().max().item()  # also compiles
    flex_ms = time_ms(run_flex, device, warmup, repeats)
    sdpa_ms = time_ms(run_sdpa, device, warmup, repeats)
    flex_peak, sdpa_peak = peak_bytes(run_flex, device), peak_bytes(run_sdpa, device)
    if flex_peak is not None and sdpa_peak is not None:
        memory_kind = "cuda_peak_extra_bytes"
        flex_mem, sdpa_mem = flex_peak, sdpa_peak
    else:
        memory_kind = "mask_bytes"
        flex_mem, sdpa_mem = block_mask_bytes(block_mask), dense.numel() * dense.element_size()
    triton = time_triton(spec, q, k, v, q_offset, kv_len, device, warmup, repeats)
    if triton["triton_ms"] is not None:
        triton["triton_vs_flex"] = triton["triton_ms"] / flex_ms
        triton["triton_max_abs_diff"] = (
            (triton.pop("out").float() - run_sdpa().float()).abs().max().item()
        )
    else:
        triton.pop("out")
    visible = float(dense.float().mean())
    return {
        "seq_len": seq_len,
        "block": block,
        "density": visible,
        "flex_ms": flex_ms,
        "sdpa_ms": sdpa_ms,
        "speedup": sdpa_ms / flex_ms,
        "block_mask_build_ms": block_mask_ms,
        "dense_mask_build_ms": dense_ms,
        "memory_kind": memory_kind,
        "flex_mem_bytes": flex_mem,
        "sdpa_mem_bytes": sdpa_mem,
        "mem_ratio": (sdpa_mem / flex_mem) if flex_mem else None,
        "max_abs_diff": max_diff,
        **triton,
    }


def triton_skip_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernel is not timed here (None: it is)."""
    if device.type != "cuda":
        return f"the Triton kernels are timed on CUDA only (got {device.type})"
    return TritonBackend().unsupported_reason(device=device, dtype=dtype, mask=None)


def time_triton(
    spec: masks.MaskSpec,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_offset: Tensor,
    kv_len: Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """``triton_ms`` and ``triton_plan_ms`` with the tile lists prepared once (as a model
    does per forward), or None and ``triton_skipped`` with the reason."""
    reason = triton_skip_reason(device, q.dtype)
    if reason is not None:
        return {"triton_ms": None, "triton_plan_ms": None, "triton_skipped": reason, "out": None}
    backend = TritonBackend()
    seq_len = q.shape[2]

    def plan() -> Any:
        return backend.prepare(
            mask=spec, q_offset=q_offset, kv_len=kv_len, q_len=seq_len, k_len=seq_len
        )

    plan_ms = time_ms(plan, device, 1, repeats)
    state = plan()

    def run() -> Tensor:
        return backend.attend_prepared(q, k, v, state, None)

    out = run()  # compiles
    return {
        "triton_ms": time_ms(run, device, warmup, repeats),
        "triton_plan_ms": plan_ms,
        "tiles_visited": state.tiles.visited_tiles,
        "tiles_total": state.tiles.total_tiles,
        "out": out,
    }


def print_table(rows: list[dict[str, Any]], device: str) -> None:
    kind = rows[0]["memory_kind"] if rows else ""
    print(f"\nFlexAttention vs SDPA (dense bool mask), block-causal, {device}; memory = {kind}")
    header = (
        f"{'T':>6} {'block':>5} {'dens':>5} {'flex ms':>9} {'sdpa ms':>9} {'x':>6} "
        f"{'bm build':>9} {'dense bld':>9} {'flex MiB':>9} {'sdpa MiB':>9} {'mem x':>7} "
        f"{'triton ms':>9} {'tri/flex':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        mem_ratio = f"{r['mem_ratio']:.1f}" if r["mem_ratio"] is not None else "-"
        tri = f"{r['triton_ms']:.2f}" if r["triton_ms"] is not None else "skipped"
        tri_x = f"{r['triton_vs_flex']:.2f}" if r["triton_ms"] is not None else "-"
        print(
            f"{r['seq_len']:>6} {r['block']:>5} {r['density']:>5.2f} {r['flex_ms']:>9.2f} "
            f"{r['sdpa_ms']:>9.2f} {r['speedup']:>6.2f} {r['block_mask_build_ms']:>9.2f} "
            f"{r['dense_mask_build_ms']:>9.2f} {r['flex_mem_bytes'] / 2**20:>9.3f} "
            f"{r['sdpa_mem_bytes'] / 2**20:>9.3f} {mem_ratio:>7} {tri:>9} {tri_x:>8}"
        )
    print("x = sdpa_ms / flex_ms (>1: flex faster); mem x = sdpa / flex; tri/flex = triton / flex")
    skipped = {r.get("triton_skipped") for r in rows} - {None}
    for reason in sorted(str(x) for x in skipped):
        print(f"triton skipped: {reason}")
    print()


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="block 128 only, 3 repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--blocks", type=int, nargs="+", default=None, help="default 64 128")
    parser.add_argument("--repeats", type=int, default=None, help="default 10 (quick: 3)")
    parser.add_argument("--warmup", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--out", type=Path, default=Path(".bench/flex_vs_sdpa.json"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    blocks = args.blocks or ([128] if args.quick else [64, 128])
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = args.warmup or (1 if args.quick else 3)

    rows = [
        run_case(seq_len, block, device, dtype, warmup, repeats)
        for seq_len in args.lengths
        for block in blocks
    ]
    print_table(rows, str(device))
    result = {
        "benchmark": "flex_vs_sdpa",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "shape": {"batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM},
        "repeats": repeats,
        "warmup": warmup,
        "quick": args.quick,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
