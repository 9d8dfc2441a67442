"""Greedy batch-1 decode speed: ar's Transformer vs Hugging Face ``LlamaForCausalLM.generate``.

Same weights (converted with :mod:`ar_core.interop.hf_llama`), eager and compiled, at the
``tiny`` (2 x 128) and ``medium`` (8 x 768) presets. Decode is memory-bound at batch 1,
so the medium model is also compared with the bound ``bandwidth / bytes read per token``
(every weight except the embedding table is read once per token; the KV cache of a short
sequence is negligible beside it).

Tokens/s = new tokens / wall time of the whole ``generate`` call (prefill of an 8-token
prompt included, for both libraries), median of a few runs after a warm-up.

    uv run ar bench decode -- [--quick] [--device cuda] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(
    device: torch.device, mbytes: int = 512, repeats: int = 5
) -> dict[str, float]:
    """Read bandwidth (a large float32 sum) and copy bandwidth (read + write), in GB/s."""
    n = mbytes * 2**20 // 4
    x = torch.ones(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    read, copy = [], []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        x.sum()
        _sync(device)
        read.append(x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
        t0 = time.perf_counter()
        y.copy_(x)
        _sync(device)
        copy.append(2 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return {"read_gb_s": max(read), "copy_gb_s": max(copy)}


def _time(fn: Callable[[], Any], device: torch.device, runs: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _hf_generate(hf: Any, x: torch.Tensor, n: int, compiled: bool) -> Callable[[], Any]:
    from transformers import CompileConfig

    kwargs: dict[str, Any] = dict(
        max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    if compiled:
        kwargs["cache_implementation"] = "static"
        # HF auto-compiles the static-cache decode step; on CPU only when asked explicitly
        compile_config = CompileConfig(fullgraph=False)
        # a private switch in transformers 5.x: auto-compile on the CPU too
        setattr(compile_config, "_compile_all_devices", True)  # noqa: B010
        kwargs["compile_config"] = compile_config
    else:
        kwargs["disable_compile"] = True

    def run() -> Any:
        with torch.no_grad():
            return hf.generate(x, **kwargs)

    return run


def bench_size(name: str, device: torch.device, n_new: int, runs: int) -> dict[str, Any]:
    from ar_core.interop.hf_llama import to_hf

    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_name(name)).to(device).eval()
    hf = to_hf(model)
    x = torch.randint(0, model.vocab_size, (1, 8), device=device)
    cfg = GenerationConfig(max_new_tokens=n_new)
    row: dict[str, Any] = {
        "size": name,
        "params": model.num_parameters(),
        "bytes_per_token": model.num_parameters(exclude_embeddings=True) * 4,
        "new_tokens": n_new,
    }
    cases: dict[str, Callable[[], Any]] = {
        "ar_eager": lambda: generate(model, x, cfg),
        "ar_compiled": lambda: generate(model, x, cfg, compile=True),
        "hf_eager": _hf_generate(hf, x, n_new, compiled=False),
        "hf_compiled": _hf_generate(hf, x, n_new, compiled=True),
    }
    reference = generate(model, x, cfg).sequences
    for case, fn in cases.items():
        try:
            out = fn()
            seq = out.sequences if hasattr(out, "sequences") else out
            if not torch.equal(seq.to(reference.device), reference):
                row[case] = None
                row[f"{case}_note"] = "n/a: output differs from ar eager greedy"
                continue
            row[case] = n_new / _time(fn, device, runs)
        except Exception as exc:  # report, do not hide: the reason goes in the table
            row[case] = None
            row[f"{case}_note"] = f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return row


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=".bench/decode.json", help="JSON results path")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = 2 if args.quick else 5
    sizes = {"tiny": 64 if args.quick else 256, "medium": 16 if args.quick else 64}
    if device.type == "cuda":
        sizes = {"tiny": 128 if args.quick else 256, "medium": 128 if args.quick else 256}

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bandwidth": measure_bandwidth(device),
        "rows": [bench_size(name, device, n, runs) for name, n in sizes.items()],
    }
    try:
        import transformers

        result["transformers"] = transformers.__version__
    except ImportError:
        pass
    bw = result["bandwidth"]["read_gb_s"] * 1e9
    for row in result["rows"]:
        row["bound_tokens_s"] = bw / row["bytes_per_token"]
        best = max((row[c] or 0.0) for c in ("ar_eager", "ar_compiled"))
        row["ar_best_pct_of_bound"] = 100 * best / row["bound_tokens_s"]
        hf_best = max((row[c] or 0.0) for c in ("hf_eager", "hf_compiled"))
        row["ar_over_hf"] = best / hf_best if hf_best else None

    _print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:8.1f}"


def _print_table(result: dict[str, Any]) -> None:
    bw = result["bandwidth"]
    print(
        f"device {result['device']} ({result['threads']} threads), torch {result['torch']}; "
        f"read {bw['read_gb_s']:.1f} GB/s, copy {bw['copy_gb_s']:.1f} GB/s"
    )
    head = "size    ar eager  ar comp  hf eager  hf comp   bound  %bound  ar/hf   (tokens/s)"
    print(head)
    for r in result["rows"]:
        ratio = "n/a" if r["ar_over_hf"] is None else f"{r['ar_over_hf']:.2f}x"
        print(
            f"{r['size']:<7} {_fmt(r['ar_eager'])} {_fmt(r['ar_compiled'])} "
            f"{_fmt(r['hf_eager'])} {_fmt(r['hf_compiled'])} {r['bound_tokens_s']:7.1f} "
            f"{r['ar_best_pct_of_bound']:6.1f}%  {ratio}"
        )
        for key, value in r.items():
            if key.endswith("_note"):
                print(f"  {key}: {value}")


if __name__ == "__main__":
    main(sys.argv[1:])
