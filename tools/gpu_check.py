"""GPU check of ar-kernels' Triton backend (run by tools/gpu_check.sh on a CUDA machine).

Four stages, each recorded in ``gpu_check.json`` under ``--out``:

1. ``tests``: pytest on CUDA over test_triton.py (its slow kernel tests too),
   test_model_backends.py and test_xformers.py.
2. ``parity``: ``attend`` on every runnable backend (triton, sdpa, flex, xformers)
   against ``math`` on block-causal, tree, two-stream, document and causal masks in
   float32, float16 and bfloat16 (max |diff| and ||diff|| / ||ref||).
3. ``forward``: the Triton forward against FlexAttention (compiled), SDPA with a dense
   mask and xformers with a dense bias on block-causal masks at 4k tokens, each with its
   mask prepared once; a few Triton tile shapes; ratio ``triton_ms / flex_ms``
   (issue 17's goal: <= 1.5).
4. ``decode``: the split-K decode kernel over a ragged StaticKVCache, its achieved
   bandwidth (K and V bytes of every row's valid entries / time) against a device-to-
   device copy measured in the same run and the H200 datasheet's 4.8 TB/s (goal: 70%),
   and SDPA / FlexAttention on the same cache.

Times are ``triton.testing.do_bench`` medians (CUDA events). ``--smoke`` runs tiny sizes
(on the CPU under ``TRITON_INTERPRET=1`` too) to check the script itself.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
H200_DATASHEET_BYTES_PER_S = 4.8e12


def ensure_plugins() -> dict[str, str]:
    """Make ar's entry points visible when the packages run from their sources (a lent
    GPU machine has no installed workspace): a throw-away dist-info that names ar-core's
    and ar-kernels' plugins, on sys.path and on PYTHONPATH for the pytest run."""
    names = {ep.name for ep in md.entry_points(group="ar")}
    if {"core", "kernels"} <= names:
        return {}
    shim = Path(tempfile.mkdtemp(prefix="ar-entry-points-"))
    info = shim / "ar_gpu_check_plugins-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ar-gpu-check-plugins\nVersion: 0.0\n"
    )
    lines = ["[ar]"]
    lines += [
        f"{n} = {m}"
        for n, m in (("core", "ar_core._plugin"), ("kernels", "ar_kernels._plugin"))
        if n not in names
    ]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    sys.path.insert(0, str(shim))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(shim), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    from ar_core import plugins

    plugins.reset()
    return {"entry_point_shim": str(shim)}


def environment(device: torch.device) -> dict[str, Any]:
    import triton

    from ar_core import registry

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backends": sorted(registry.attention_backends.names()),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
    }
    try:
        import xformers

        info["xformers"] = xformers.__version__
    except ImportError:
        info["xformers"] = None
    return info


def bench_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Median milliseconds of ``fn`` (CUDA events through do_bench; a host clock off CUDA)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


# -- 1. tests ---------------------------------------------------------------------------


def run_tests(out: Path, smoke: bool, timeout: int) -> dict[str, Any]:
    tests = ["packages/ar-kernels/tests/test_triton.py"]
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    if smoke:
        args += ["-k", "registered or tile or decode_rows"]
    else:
        tests += [
            "packages/ar-kernels/tests/test_model_backends.py",
            "packages/ar-kernels/tests/test_xformers.py",
        ]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [*args, *tests], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        text, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        partial_out = [x.decode() if isinstance(x, bytes) else x for x in (exc.stdout, exc.stderr)]
        text = "".join(filter(None, partial_out)) + f"\nTIMEOUT after {timeout} s"
        rc = 124
    (out / "tests.txt").write_text(text)
    counts = {
        word: int(n)
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text)
    }
    print(text[-3000:])
    return {"rc": rc, "seconds": time.perf_counter() - started, **counts}


# -- 2. parity ----------------------------------------------------------------------------


def parity(device: torch.device, smoke: bool) -> list[dict[str, Any]]:
    from ar_core import masks, registry
    from ar_core.attention import attend

    n = 64 if smoke else 512
    steps = torch.arange(n) // 16
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, -1, 6, 7, 3, 9, 9, 4, 12, 13, 5])
    cases = {
        "causal": (masks.causal(), n, n, [0, 0], [n, n]),
        "block_causal": (masks.block_causal(steps), n, n, [0, 0], [n, n - 17]),
        "tree": (masks.tree(parents, n - 16), 16, n, [n - 16, n - 16], [n, n]),
        "two_stream": (
            masks.two_stream(steps[: n // 2], query_sees_own_step=True),
            n,
            n,
            [0, 0],
            [n, n],
        ),
        "document": (masks.document(torch.arange(n) * 5 // n), n, n, [0, 0], [n, n]),
        "decode_ragged": (None, 1, n, [n - 1, 9], [n, 10]),
    }
    dtypes = (
        [torch.float32, torch.float16] if smoke else [torch.float32, torch.float16, torch.bfloat16]
    )
    tolerance = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
    names = ["triton", "sdpa", "flex", "xformers"]
    rows: list[dict[str, Any]] = []
    for case, (mask, q_len, k_len, q_offset, kv_len) in cases.items():
        for dtype in dtypes:
            g = torch.Generator(device=device).manual_seed(len(rows))
            q = torch.randn(2, 8, q_len, 64, device=device, generator=g).to(dtype)
            k = torch.randn(2, 2, k_len, 64, device=device, generator=g).to(dtype)
            v = torch.randn(2, 2, k_len, 64, device=device, generator=g).to(dtype)
            qo = torch.tensor(q_offset, device=device)
            kl = torch.tensor(kv_len, device=device)
            ref = attend(q, k, v, mask=mask, q_offset=qo, kv_len=kl, backend="math").float()
            for name in names:
                backend = registry.attention_backends.get(name)
                reason = backend.unsupported_reason(device=device, dtype=dtype, mask=mask)
                row: dict[str, Any] = {"case": case, "dtype": str(dtype), "backend": name}
                if reason is not None or (smoke and name != "triton"):
                    row["skipped"] = reason or "smoke run: triton only"
                else:
                    got = attend(q, k, v, mask=mask, q_offset=qo, kv_len=kl, backend=name)
                    diff = (got.float() - ref).abs()
                    row["max_abs_diff"] = float(diff.max())
                    row["rel_l2"] = float(diff.norm() / ref.norm().clamp_min(1e-30))
                    row["finite"] = bool(torch.isfinite(got).all())
                    row["ok"] = row["finite"] and row["max_abs_diff"] <= tolerance[dtype]
                rows.append(row)
                if "ok" in row and not row["ok"]:
                    print(f"PARITY FAIL {row}")
    failed = [r for r in rows if r.get("ok") is False]
    print(f"parity: {sum('ok' in r for r in rows)} compared, {len(failed)} over tolerance")
    return rows


# -- 3. forward benchmark ---------------------------------------------------------------

FORWARD_TILES = [(64, 64, 4), (128, 64, 4), (128, 64, 8), (128, 128, 8), (64, 32, 4)]


def forward_case(
    block: int,
    seq: int,
    heads: int,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    smoke: bool,
) -> dict[str, Any]:
    """One block size: every backend with its mask prepared once, then Triton tile shapes."""
    import torch.nn.functional as F

    from ar_core import masks
    from ar_kernels.flex import FlexBackend
    from ar_kernels.triton_backend import FlashPlan, TritonBackend

    spec = masks.block_causal(torch.arange(seq) // block)
    g = torch.Generator(device=device).manual_seed(block)
    q, k, v = (
        torch.randn(1, heads, seq, dim, device=device, generator=g).to(dtype) for _ in range(3)
    )
    q_offset = torch.zeros(1, dtype=torch.long, device=device)
    kv_len = torch.full((1,), seq, dtype=torch.long, device=device)
    row: dict[str, Any] = {
        "seq_len": seq,
        "block": block,
        "heads": heads,
        "head_dim": dim,
        "dtype": str(dtype),
    }

    flex = FlexBackend(compile=not smoke)
    flex_state = flex.prepare(mask=spec, q_offset=q_offset, kv_len=kv_len, q_len=seq, k_len=seq)
    ref = flex.attend_prepared(q, k, v, flex_state, None).float()
    row["flex_ms"] = bench_ms(lambda: flex.attend_prepared(q, k, v, flex_state, None), device)

    dense = spec.to_dense(seq, seq, device=device)[:, None]  # (1, 1, T, T)
    row["sdpa_ms"] = bench_ms(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense), device
    )
    row["xformers_ms"] = None
    if device.type != "cuda":
        row["xformers_skipped"] = "xformers runs on CUDA only"
    else:
        try:
            import xformers.ops as xops

            from ar_kernels.xformers_backend import additive_bias

            bias = additive_bias(dense[:, 0], heads, dtype)  # (1, H, T, T), built once
            qx, kx, vx = (t.transpose(1, 2) for t in (q, k, v))  # (B, T, H, D)
            row["xformers_ms"] = bench_ms(
                lambda: xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias), device
            )
        except ImportError as exc:
            row["xformers_skipped"] = f"xformers not importable: {exc}"

    configs: list[dict[str, Any]] = []
    for block_m, block_n, warps in [(16, 16, None)] if smoke else FORWARD_TILES:
        backend = TritonBackend(block_m=block_m, block_n=block_n, num_warps=warps)
        state = backend.prepare(mask=spec, q_offset=q_offset, kv_len=kv_len, q_len=seq, k_len=seq)
        assert isinstance(state, FlashPlan)  # block-causal: the flash kernel
        got = backend.attend_prepared(q, k, v, state, None)
        ms = bench_ms(partial(backend.attend_prepared, q, k, v, state, None), device)
        configs.append(
            {
                "block_m": block_m,
                "block_n": block_n,
                "num_warps": warps,
                "ms": ms,
                "tiles_visited": state.tiles.visited_tiles,
                "tiles_total": state.tiles.total_tiles,
                "max_abs_diff_vs_flex": float((got.float() - ref).abs().max()),
            }
        )
    best = min(configs, key=lambda c: float(c["ms"]))
    row["triton_configs"] = configs
    row["triton_ms"] = best["ms"]
    row["triton_best"] = {key: best[key] for key in ("block_m", "block_n", "num_warps")}
    row["triton_vs_flex"] = best["ms"] / row["flex_ms"]
    # FLOPs of the visible area only: two products of 2 * D per visible (query, key) pair
    visible_pairs = float(dense.float().sum()) * heads
    row["triton_tflops"] = 4 * dim * visible_pairs / (best["ms"] * 1e-3) / 1e12
    print(
        f"forward T={seq} block={block}: triton {best['ms']:.3f} ms ({row['triton_best']}), "
        f"flex {row['flex_ms']:.3f}, sdpa {row['sdpa_ms']:.3f}, xformers {row['xformers_ms']}; "
        f"triton/flex {row['triton_vs_flex']:.2f}"
    )
    return row


def forward_bench(device: torch.device, smoke: bool) -> list[dict[str, Any]]:
    seq, heads, dim = (64, 2, 16) if smoke else (4096, 16, 64)
    dtype = torch.float32 if smoke else torch.bfloat16
    blocks = [16] if smoke else [64, 128, 256]
    return [forward_case(b, seq, heads, dim, dtype, device, smoke) for b in blocks]


# -- 4. decode bandwidth ----------------------------------------------------------------


def copy_bandwidth(device: torch.device) -> float | None:
    """Bytes read plus written per second by a large device-to-device copy."""
    if device.type != "cuda":
        return None
    src = torch.randn(2**28, device=device, dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def decode_case(
    label: str,
    cache: Any,
    q: torch.Tensor,
    copy_bps: float | None,
    device: torch.device,
    smoke: bool,
) -> list[dict[str, Any]]:
    """The decode kernel at a few split counts, then SDPA and FlexAttention, over the
    cache's current lengths; bytes = the K and V entries below each row's length."""
    from ar_core.attention import attend_planned, plan_attention
    from ar_kernels.triton_decode import choose_splits, decode_attention

    kv_len = cache.lengths
    k_buf, v_buf = cache.k[0], cache.v[0]
    batch, kv_heads, slots, dim = k_buf.shape
    bytes_read = int(kv_len.sum()) * kv_heads * dim * 2 * k_buf.element_size()
    auto = choose_splits(batch * kv_heads, slots, 64, device)
    rows: list[dict[str, Any]] = []
    ref = decode_attention(q, k_buf, v_buf, kv_len, num_splits=1)
    configs = [(1, 16)] if smoke else [(s, n) for n in (64, 128) for s in sorted({1, 4, 16, auto})]
    for splits, block_n in configs:
        run = partial(decode_attention, q, k_buf, v_buf, kv_len, num_splits=splits, block_n=block_n)
        ms = bench_ms(run, device)
        bps = bytes_read / (ms * 1e-3)
        rows.append(
            {
                "lengths": label,
                "kernel": "triton",
                "num_splits": splits,
                "block_n": block_n,
                "auto": splits == auto and block_n == 64,
                "ms": ms,
                "bytes": bytes_read,
                "bytes_per_s": bps,
                "of_copy": bps / copy_bps if copy_bps else None,
                "of_datasheet": bps / H200_DATASHEET_BYTES_PER_S,
                "max_abs_diff_vs_one_split": float((run().float() - ref.float()).abs().max()),
            }
        )
        print(
            f"decode {label} splits={splits} block_n={block_n}: {ms:.4f} ms, {bps / 1e12:.2f} TB/s"
        )
    for name in ["sdpa"] if smoke else ["sdpa", "flex"]:
        plan = plan_attention(
            backend=name,
            mask=None,
            q_offset=kv_len - 1,
            kv_len=kv_len,
            q_len=1,
            k_len=slots,
            device=device,
            dtype=q.dtype,
        )
        run = partial(attend_planned, q, k_buf, v_buf, plan)
        ms = bench_ms(run, device)
        rows.append(
            {
                "lengths": label,
                "kernel": name,
                "ms": ms,
                "bytes": bytes_read,
                "bytes_per_s": bytes_read / (ms * 1e-3),
                "max_abs_diff_vs_triton": float((run().float() - ref.float()).abs().max()),
            }
        )
        print(f"decode {label} {name}: {ms:.4f} ms")
    return rows


def decode_bench(device: torch.device, smoke: bool) -> dict[str, Any]:
    from ar_core.cache import StaticKVCache

    copy_bps = copy_bandwidth(device)
    batch, heads, kv_heads, dim, slots = (2, 4, 2, 16, 64) if smoke else (8, 32, 8, 128, 16384)
    dtype = torch.float32 if smoke else torch.bfloat16
    cache = StaticKVCache(1, batch, kv_heads, dim, slots, dtype=dtype, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    fill = torch.randn(2, batch, kv_heads, slots, dim, device=device, generator=g).to(dtype)
    cache.write(0, fill[0], fill[1])
    del fill
    q = torch.randn(batch, heads, 1, dim, device=device, generator=g).to(dtype)
    rows = []
    full = torch.full((batch,), slots, device=device)
    ragged = torch.linspace(slots // 2, slots, batch).long().to(device)
    for label, lengths in (("full", full), ("ragged", ragged)):
        cache.set_lengths(lengths)
        rows += decode_case(label, cache, q, copy_bps, device, smoke)
    return {
        "copy_bytes_per_s": copy_bps,
        "datasheet_bytes_per_s": H200_DATASHEET_BYTES_PER_S,
        "shape": {
            "batch": batch,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": dim,
            "slots": slots,
        },
        "dtype": str(dtype),
        "rows": rows,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-out"))
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes; CPU allowed under TRITON_INTERPRET=1"
    )
    parser.add_argument("--test-timeout", type=int, default=240)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, or --smoke with TRITON_INTERPRET=1"
        )
        return 2
    started = time.perf_counter()
    result: dict[str, Any] = {"check": "gpu_check", "smoke": args.smoke, **ensure_plugins()}
    result["environment"] = environment(device)
    print(json.dumps(result["environment"], indent=1))
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("tests", lambda: run_tests(args.out, args.smoke, args.test_timeout)),
        ("parity", lambda: parity(device, args.smoke)),
        ("forward", lambda: forward_bench(device, args.smoke)),
        ("decode", lambda: decode_bench(device, args.smoke)),
    ]
    for name, stage in stages:
        stage_start = time.perf_counter()
        try:
            result[name] = stage()
        except Exception as exc:  # keep going: the other stages still report
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"stage {name} failed: {type(exc).__name__}: {exc}")
        print(f"stage {name}: {time.perf_counter() - stage_start:.1f} s")
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    result["seconds"] = time.perf_counter() - started
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    ok = (
        isinstance(result["tests"], dict)
        and result["tests"].get("rc") == 0
        and isinstance(result["parity"], list)
        and not any(r.get("ok") is False for r in result["parity"])
        and all(
            "error" not in result[s] for s in ("forward", "decode") if isinstance(result[s], dict)
        )
    )
    print(
        f"gpu_check: {'OK' if ok else 'FAILED'} in {result['seconds']:.0f} s; wrote {args.out / 'gpu_check.json'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
