"""Image orderings on class-conditional 8x8 digits, and SJD / LANTERN on the VQ-token model.

One class-conditional step model (ar_vision.model) per run, each trained by the recipe
``vision-digits`` (same steps, batch, model size, CFG scale and seed):

| run            | tokenizer | ordering       | image AR family                      |
|----------------|-----------|----------------|--------------------------------------|
| raster-pixels  | pixel     | raster         | pixel-based (PixelCNN-like)          |
| raster-vq      | vqvae     | raster         | token-based (VQGAN / LlamaGen-like)  |
| next-scale     | msrvq     | next-scale     | scale-based (VAR, arXiv:2404.02905)  |
| next-frequency | nfig      | next-frequency | NFIG (arXiv:2503.07076)              |
| coarse-to-fine | ctf       | coarse-to-fine | CTF (arXiv:2503.16194)               |

Per run: network calls per image, seconds per image (batch of 10 x samples per class),
Fréchet distance to the test split on the metrics classifier's features, class accuracy,
bits per dim (and the factorised baseline's); a grid PNG per run.

Then, on the raster-vq model through ``ar_core.generate`` (the causal-LM adapter,
ar_vision.lm_adapter; CFG inside the adapter): plain ``sample`` vs ``sjd`` (Teng et al.
2024, arXiv:2410.01699) vs ``lantern`` (Jang et al. 2025, arXiv:2410.03355; neighbours
from the VQ codebook by ``codebook_neighbours``): forward passes, mean accepted length,
wall-clock speed-up over plain sampling, class accuracy. Needs ar-decoding.

    uv run ar bench vision -- [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ar_core.generation import GenerationConfig
from ar_core.recipes import Table
from ar_vision.recipes.digits import (
    NUM_CLASSES,
    Evaluation,
    VisionDigitsConfig,
    result_table,
    save_samples,
    train_and_evaluate,
)

RUNS: dict[str, tuple[str, str]] = {  # run -> (tokenizer, ordering)
    "raster-pixels": ("pixel", "raster"),
    "raster-vq": ("vqvae", "raster"),
    "next-scale": ("msrvq", "next-scale"),
    "next-frequency": ("nfig", "next-frequency"),
    "coarse-to-fine": ("ctf", "coarse-to-fine"),
}


def speculative(ev: Evaluation, config: VisionDigitsConfig, window: int) -> dict[str, Any]:
    """Plain sampling vs SJD vs LANTERN on one model (one position per step)."""
    from ar_vision import metrics
    from ar_vision.lm_adapter import CausalLMAdapter, generate_tokens
    from ar_vision.tokenizers import codebook_neighbours

    adapter = CausalLMAdapter(ev.model, ev.plan, cfg_scale=config.cfg_scale)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(config.samples_per_class)
    gen_config = GenerationConfig(max_new_tokens=ev.rep.num_tokens, seed=config.seed + 2)
    neighbours = codebook_neighbours(ev.rep.tokenizer.codebook(), k=8)  # (V, 8)
    runs: dict[str, dict[str, Any]] = {
        "sample": {},
        "sjd": {"window": window},
        "lantern": {"window": window, "neighbours": neighbours, "delta": 0.1},
    }
    out: dict[str, Any] = {}
    for strategy, kwargs in runs.items():
        start = time.perf_counter()
        tokens, stats = generate_tokens(adapter, labels, gen_config, strategy=strategy, **kwargs)
        seconds = time.perf_counter() - start
        images = ev.rep.decode(tokens).clamp(0, 1)
        out[strategy] = {
            "forward_passes": stats.target_forward_passes,
            "mean_accepted_length": round(stats.mean_accepted_length, 3),
            "seconds": round(seconds, 4),
            "class_accuracy": round(metrics.class_accuracy(images, labels), 4),
            "frechet_distance": round(metrics.frechet_distance(images, _test_images(config)), 3),
        }
    base = out["sample"]
    for row in out.values():
        row["speedup_wall"] = round(base["seconds"] / row["seconds"], 3)
        row["speedup_forward_passes"] = round(base["forward_passes"] / row["forward_passes"], 3)
    return out


def _test_images(config: VisionDigitsConfig) -> torch.Tensor:
    from ar_vision.data import load_digits

    return load_digits(config.image_size, "test", config.seed)[0]


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny training, few samples")
    parser.add_argument("--out", default=".bench/vision.json")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated run names")
    parser.add_argument("--steps", type=int, default=None, help="step-model updates")
    parser.add_argument("--window", type=int, default=8, help="SJD/LANTERN window")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out_path = Path(args.out)
    work = out_path.with_suffix("")  # .bench/vision/: checkpoints and grids
    steps = args.steps or (20 if args.quick else 300)
    base = VisionDigitsConfig(
        tokenizer_steps=20 if args.quick else 300,
        steps=steps,
        samples_per_class=2 if args.quick else 10,
        progress_bar=False,
    )
    report: dict[str, Any] = {"config": base.model_dump(), "runs": {}, "grids": {}}
    rows: list[tuple[str, dict[str, float]]] = []
    vq_eval: Evaluation | None = None
    for name in args.runs.split(","):
        tokenizer, ordering = RUNS[name]
        config = base.model_copy(update={"tokenizer": tokenizer, "ordering": ordering})
        print(f"[vision] {name}: {tokenizer} tokens, {ordering}", flush=True)
        ev = train_and_evaluate(config, work / name, lambda msg: print(f"  {msg}", flush=True))
        grid = save_samples(ev.images, ev.labels, work / f"{name}.png", config.samples_per_class)
        report["runs"][name] = {k: round(v, 5) for k, v in ev.metrics.items()}
        report["grids"][name] = str(grid)
        rows.append((name, ev.metrics))
        if name == "raster-vq":
            vq_eval = ev
    table = result_table(
        rows, note=f"{base.samples_per_class} samples per class, CFG {base.cfg_scale}"
    )
    _print_table(table)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))  # kept if the speculative part fails
    if vq_eval is not None:
        print(f"[vision] SJD / LANTERN on raster-vq (window {args.window})", flush=True)
        config = base.model_copy(update={"tokenizer": "vqvae", "ordering": "raster"})
        spec = speculative(vq_eval, config, args.window)
        report["speculative"] = spec
        columns = ["strategy", *next(iter(spec.values())).keys()]
        _print_table(
            Table(
                "raster-vq: speculative decoding",
                columns,
                [[k, *v.values()] for k, v in spec.items()],
            )
        )
        out_path.write_text(json.dumps(report, indent=2))
    return report


def _print_table(table: Table) -> None:
    print(f"\n{table.title}")
    widths = [
        max(len(str(c)), *(len(str(r[i])) for r in table.rows)) for i, c in enumerate(table.columns)
    ]
    print("  ".join(str(c).ljust(w) for c, w in zip(table.columns, widths, strict=True)))
    for row in table.rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    if table.note:
        print(table.note)


if __name__ == "__main__":
    main(sys.argv[1:])
