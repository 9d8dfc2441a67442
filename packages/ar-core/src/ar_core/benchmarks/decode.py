"""Greedy batch-1 decode speed: ar's Transformer vs Hugging Face ``LlamaForCausalLM.generate``.

Same weights (converted with :mod:`ar_core.interop.hf_llama`), eager and compiled, at the
``tiny`` (2 x 128) and ``medium`` (8 x 768) presets. Decode is memory-bound at batch 1,
so the medium model is also compared with the bound ``bandwidth / bytes read per token``
(every weight except the embedding table is read once per token; the KV cache of a short
sequence is negligible beside it).

Tokens/s = new tokens / wall time of the whole ``generate`` call (prefill of an 8-token
prompt included, for both libraries), median of a few rounds after a warm-up; the cases
run interleaved (one round = every case once), and the CPU time of the process is recorded
next to the wall time (on a shared machine the CPU-time ratios are the steadier ones).

Cases: ar eager; ar compiled (the fused greedy step: forward, argmax and cache commit in
one graph); ar compiled with the pick outside the step ("unfused", the previous path);
HF eager and compiled (static cache); and the same weights in bfloat16, in int8
(:func:`ar_core.quant.quantize`) and in ar's CPU decode layouts (float32 and bfloat16,
:func:`ar_core.quant.prepack`), eager and compiled, whose outputs are compared with the
float32 tokens (agreement) instead of being required equal. The int8 and bf16 logit error
is measured on random tokens; the held-out perplexity change on the ``tiny`` preset trained
for ``--ppl-steps`` on ar-core's own source bytes. ``profile_medium_eager`` lists the top
operators of an eager medium decode (torch.profiler, self CPU time).

    uv run ar bench decode -- [--quick] [--threads 1] [--sizes tiny,medium] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ar_core.generation import GenerationConfig, decode_with_pick, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.quant import prepack, quantize


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(
    device: torch.device, mbytes: int = 512, repeats: int = 5
) -> dict[str, float]:
    """Read bandwidth (a large float32 sum) and copy bandwidth (read + write), in GB/s,
    the best of ``repeats`` by wall time and (``*_cpu``) by the process's CPU time (on a
    shared machine the wall figure drops when other jobs hold the core)."""
    n = mbytes * 2**20 // 4
    x = torch.ones(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    read, copy_, read_cpu = [], [], []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        x.sum()
        _sync(device)
        read.append(x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
        read_cpu.append(x.numel() * 4 / max(time.process_time() - c0, 1e-9) / 1e9)
        t0 = time.perf_counter()
        y.copy_(x)
        _sync(device)
        copy_.append(2 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return {"read_gb_s": max(read), "copy_gb_s": max(copy_), "read_gb_s_cpu": max(read_cpu)}


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


def _argmax(logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def _unfused(model: Any, x: torch.Tensor, cfg: GenerationConfig) -> Any:
    """Compiled greedy with the pick and commit outside the compiled step (the previous
    decode path), for the fused-vs-unfused comparison."""
    lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
    return decode_with_pick(model, x, cfg, prompt_lengths=lengths, pick=_argmax, compile=True)


def _gen(model: Any, x: torch.Tensor, cfg: GenerationConfig, compiled: bool) -> Callable[[], Any]:
    return lambda: generate(model, x, cfg, compile=compiled)


def _variants(model: Transformer) -> dict[str, nn.Module]:
    """The float32 model, a bfloat16 copy and an int8 copy (same weights), and the
    float32 and bfloat16 ones with ar's CPU decode layouts (:func:`ar_core.quant.prepack`;
    on other devices they are the plain copies)."""
    bf16 = Transformer(model.cfg.model_copy(update={"dtype": "bfloat16"})).eval()
    bf16.load_state_dict(model.state_dict())
    int8 = quantize(copy.deepcopy(model), "int8")
    packed, bf16_packed = copy.deepcopy(model), copy.deepcopy(bf16)
    if model.device.type == "cpu":
        prepack(packed)
        prepack(bf16_packed)
    return {
        "f32": model,
        "bf16": bf16,
        "int8": int8,
        "f32packed": packed,
        "bf16packed": bf16_packed,
    }


def logit_error(model: Transformer, variant: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Relative (Frobenius) and max-abs logit error of ``variant`` against ``model`` on
    ``x`` (B, T), and how often their argmax agrees."""
    with torch.no_grad():
        ref = model(x).logits.float()
        out = variant(x).logits.float()
    return {
        "rel_err": float((out - ref).norm() / ref.norm()),
        "max_abs_err": float((out - ref).abs().max()),
        "top1_agree": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
    }


def bench_size(name: str, device: torch.device, n_new: int, runs: int) -> dict[str, Any]:
    """Every case of one preset, timed in interleaved rounds (median wall and CPU time)."""
    from ar_core.interop.hf_llama import to_hf

    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_name(name)).to(device).eval()
    hf = to_hf(model)
    variants = _variants(model)
    x = torch.randint(0, model.vocab_size, (1, 8), device=device)
    cfg = GenerationConfig(max_new_tokens=n_new)
    row: dict[str, Any] = {
        "size": name,
        "params": model.num_parameters(),
        "bytes_per_token": model.num_parameters(exclude_embeddings=True) * 4,
        "new_tokens": n_new,
    }
    exact: dict[str, Callable[[], Any]] = {  # must equal ar eager greedy, token for token
        "ar_eager": lambda: generate(model, x, cfg),
        "ar_compiled": lambda: generate(model, x, cfg, compile=True),
        "ar_compiled_unfused": lambda: _unfused(model, x, cfg),
        "hf_eager": _hf_generate(hf, x, n_new, compiled=False),
        "hf_compiled": _hf_generate(hf, x, n_new, compiled=True),
    }
    approx: dict[str, Callable[[], Any]] = {}  # other weights: agreement is reported
    for kind in ("bf16", "int8", "f32packed", "bf16packed"):
        for mode in ("eager", "compiled"):
            approx[f"{kind}_{mode}"] = _gen(variants[kind], x, cfg, mode == "compiled")
    reference = generate(model, x, cfg).sequences
    ok: dict[str, Callable[[], Any]] = {}
    for case, fn in {**exact, **approx}.items():
        try:
            out = fn()  # warm-up (and compilation)
            seq = out.sequences if hasattr(out, "sequences") else out
            seq = seq.to(reference.device)
            if case in exact and not torch.equal(seq, reference):
                row[case] = None
                row[f"{case}_note"] = "n/a: output differs from ar eager greedy"
                continue
            if case in approx:
                row[f"{case}_agree"] = float((seq[0, 8:] == reference[0, 8:]).float().mean())
            ok[case] = fn
        except Exception as exc:  # report, do not hide: the reason goes in the table
            row[case] = None
            row[f"{case}_note"] = f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    walls: dict[str, list[float]] = {c: [] for c in ok}
    cpus: dict[str, list[float]] = {c: [] for c in ok}
    for _ in range(runs):  # interleaved: load changes hit every case alike
        for case, fn in ok.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            walls[case].append(time.perf_counter() - t0)
            cpus[case].append(time.process_time() - c0)
    for case in ok:
        row[case] = n_new / statistics.median(walls[case])
        row[f"{case}_cpu"] = n_new / statistics.median(cpus[case])
    xs = torch.randint(0, model.vocab_size, (2, 64), device=device)
    for kind in ("bf16", "int8", "f32packed"):
        for key, value in logit_error(model, variants[kind], xs).items():
            row[f"{kind}_{key}"] = value
    return row


def _corpus() -> bytes:
    """ar-core's own source files: text every install has (bytes, for the tiny preset)."""
    root = Path(__file__).resolve().parents[1]
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*.py")))


def quant_perplexity(steps: int, seed: int = 0) -> dict[str, Any]:
    """Train the ``tiny`` preset (bytes) for ``steps`` on 90% of ar-core's source and
    report held-out perplexity in float32, bfloat16 and int8 (the last 10%)."""
    data = torch.frombuffer(bytearray(_corpus()), dtype=torch.uint8).long()
    split = int(0.9 * data.numel())
    train, held = data[:split], data[split:]
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig.from_name("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    seq, batch = 128, 16
    for _ in range(steps):
        start = torch.randint(0, train.numel() - seq - 1, (batch,), generator=gen)
        win = torch.stack([train[s : s + seq + 1] for s in start.tolist()])
        logits = model(win[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), win[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    n_win = (held.numel() - 1) // seq
    wins = torch.stack([held[i * seq : i * seq + seq + 1] for i in range(n_win)])
    out: dict[str, Any] = {"train_steps": steps, "held_out_tokens": n_win * seq}
    for kind, variant in _variants(model).items():
        with torch.no_grad():
            logits = variant(wins[:, :-1]).logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), wins[:, 1:].flatten())
        out[f"ppl_{kind}"] = float(nll.exp())
    out["int8_ppl_change_pct"] = 100 * (out["ppl_int8"] / out["ppl_f32"] - 1)
    out["bf16_ppl_change_pct"] = 100 * (out["ppl_bf16"] / out["ppl_f32"] - 1)
    out.update(
        {
            f"int8_{k}": v
            for k, v in logit_error(model, _variants(model)["int8"], wins[:8, :-1]).items()
        }
    )
    return out


def profile_decode(name: str, n_new: int, compiled: bool) -> list[dict[str, Any]]:
    """Where a greedy decode's time goes: the top operators by self CPU time
    (``torch.profiler``) over one ``generate`` of ``n_new`` tokens on ``name``."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_name(name)).eval()
    x = torch.randint(0, model.vocab_size, (1, 8))
    cfg = GenerationConfig(max_new_tokens=n_new)
    generate(model, x, cfg, compile=compiled)  # warm-up (and compilation)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, x, cfg, compile=compiled)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "pct": 100 * e.self_cpu_time_total / total,
        }
        for e in events[:8]
    ]


def _best(row: dict[str, Any], cases: tuple[str, ...], suffix: str = "") -> float:
    return max((row.get(c + suffix) or 0.0) for c in cases)


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=".bench/decode.json", help="JSON results path")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sizes", default="tiny,medium", help="presets, comma-separated")
    parser.add_argument(
        "--ppl-steps", type=int, default=None, help="training steps of the perplexity model"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the medium profile")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = 3 if args.quick else 5
    tokens = {"tiny": 64 if args.quick else 256, "small": 32, "medium": 16 if args.quick else 32}
    if device.type == "cuda":
        tokens = {"tiny": 128 if args.quick else 256, "small": 256, "medium": 256}
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bandwidth": measure_bandwidth(device),
        "rows": [bench_size(name, device, tokens.get(name, 32), runs) for name in sizes],
    }
    try:
        import transformers

        result["transformers"] = transformers.__version__
    except ImportError:
        pass
    bw = result["bandwidth"]["read_gb_s"] * 1e9
    bw_cpu = result["bandwidth"]["read_gb_s_cpu"] * 1e9
    ar_cases = ("ar_eager", "ar_compiled")
    # the same float32 weights in ar's CPU decode layouts (outputs: agreement reported)
    packed_cases = ("f32packed_eager", "f32packed_compiled")
    hf_cases = ("hf_eager", "hf_compiled")
    summary = []
    for row in result["rows"]:
        row["bound_tokens_s"] = bw / row["bytes_per_token"]
        row["bound_tokens_s_cpu"] = bw_cpu / row["bytes_per_token"]
        line: dict[str, Any] = {"size": row["size"]}
        for suffix, label in (("", "wall"), ("_cpu", "cpu")):
            best = _best(row, ar_cases, suffix)
            hf_best = _best(row, hf_cases, suffix)
            line[f"ar_over_hf_{label}"] = best / hf_best if hf_best else None
            line[f"pct_of_f32_bound_{label}"] = 100 * best / row["bound_tokens_s" + suffix]
            packed = _best(row, packed_cases, suffix)
            line[f"prepacked_pct_of_f32_bound_{label}"] = (
                100 * packed / row["bound_tokens_s" + suffix]
            )
            line[f"prepacked_over_f32_{label}"] = packed / best if best else None
            line[f"prepacked_over_hf_{label}"] = packed / hf_best if hf_best else None
            int8 = _best(row, ("int8_eager", "int8_compiled"), suffix)
            bf16 = _best(row, ("bf16_eager", "bf16_compiled"), suffix)
            line[f"int8_over_f32_{label}"] = int8 / best if best else None
            line[f"bf16_over_f32_{label}"] = bf16 / best if best else None
            unfused = row.get("ar_compiled_unfused" + suffix)
            fused = row.get("ar_compiled" + suffix)
            line[f"fused_over_unfused_{label}"] = fused / unfused if fused and unfused else None
        summary.append(line)
    result["summary"] = summary
    ppl_steps = args.ppl_steps if args.ppl_steps is not None else (150 if args.quick else 400)
    if ppl_steps > 0:
        result["quant_quality"] = [quant_perplexity(ppl_steps)]
    if not args.no_profile and "medium" in sizes and device.type == "cpu":
        result["profile_medium_eager"] = profile_decode("medium", 8, compiled=False)

    _print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fmt(x: float | None) -> str:
    return "     n/a" if x is None else f"{x:8.1f}"


def _print_table(result: dict[str, Any]) -> None:
    bw = result["bandwidth"]
    print(
        f"device {result['device']} ({result['threads']} threads), torch {result['torch']}; "
        f"read {bw['read_gb_s']:.1f} GB/s, copy {bw['copy_gb_s']:.1f} GB/s"
    )
    cases = (
        "ar_eager",
        "ar_compiled",
        "ar_compiled_unfused",
        "hf_eager",
        "hf_compiled",
        "bf16_eager",
        "bf16_compiled",
        "int8_eager",
        "int8_compiled",
        "f32packed_eager",
        "f32packed_compiled",
        "bf16packed_eager",
        "bf16packed_compiled",
    )
    print("tokens/s, wall (cpu)")
    for r in result["rows"]:
        print(f"{r['size']} (bound {r['bound_tokens_s']:.1f} tokens/s)")
        for c in cases:
            print(f"  {c:<20} {_fmt(r.get(c))} ({_fmt(r.get(c + '_cpu'))})")
        for key, value in r.items():
            if key.endswith("_note"):
                print(f"  {key}: {value}")
    for line in result["summary"]:
        print(
            "  ".join(
                f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()
            )
        )
    for q in result.get("quant_quality", []):
        print("quality:", ", ".join(f"{k}={v:.4g}" for k, v in q.items()))
    for p in result.get("profile_medium_eager", []):
        print(f"  {p['op']:<40} {p['calls']:6d} {p['self_cpu_ms']:9.1f} ms {p['pct']:5.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
