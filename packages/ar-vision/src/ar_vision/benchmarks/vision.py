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

Sections (``--sections``, comma-separated; default all), each compared in the same run:

* ``orderings``: the table above and SJD / LANTERN on raster-vq (window ``--window``).
* ``phi``: next-scale over ``msrvq`` without and with VAR's phi refinement (Tian et al.
  2024, section 3.2): tokenizer PSNR, partial-decode MSE after each scale on the test
  split, and the step model's class accuracy, Fréchet distance and bits per dim.
* ``ctf``: coarse-to-fine with the causal two-stream fine stage vs the bidirectional one
  (CTF, Guo et al. 2025; :mod:`ar_vision.bidirectional`): the same metrics plus the coarse,
  fine-given-coarse and full perplexity on the test split.
* ``speculative``: only the SJD / LANTERN part of ``orderings`` (trains raster-vq alone).
* ``windows``: SJD and LANTERN with windows 4, 8 and 16 (``--windows``) against plain
  sampling on the raster-pixels model (64 tokens, the only 8x8 run with that many; LANTERN's
  neighbours are the nearest grey levels): forward passes, mean accepted length, seconds
  (wall and CPU), class accuracy, Fréchet distance; then the same rows generating one
  image per class, each image its own call (``windows_one_image``: batch 1, the latency
  of an image; passes per image).

``speculative`` and ``windows`` run their rows interleaved ``--repeats`` times (one
thread) and report the median wall and CPU seconds of each.

A section reuses a model another section trained with the same settings.

    uv run ar bench vision -- [--quick] [--sections orderings,speculative,phi,ctf,windows]
        [--window 8] [--windows 4,8,16] [--repeats 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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

SECTIONS = ("orderings", "speculative", "phi", "ctf", "windows")
RUNS: dict[str, tuple[str, str]] = {  # run -> (tokenizer, ordering)
    "raster-pixels": ("pixel", "raster"),
    "raster-vq": ("vqvae", "raster"),
    "next-scale": ("msrvq", "next-scale"),
    "next-frequency": ("nfig", "next-frequency"),
    "coarse-to-fine": ("ctf", "coarse-to-fine"),
}


def speculative(
    ev: Evaluation,
    config: VisionDigitsConfig,
    runs: dict[str, tuple[str, dict[str, Any]]],
    repeats: int = 1,
    single: bool = False,
) -> dict[str, dict[str, Any]]:
    """Each of ``runs`` (row -> (strategy, its keyword arguments)) on one model (one
    position per step), the first row the baseline of the speed-ups. The rows run
    interleaved ``repeats`` times (the same seeded call, so the same tokens each time);
    seconds are the medians. ``single``: one image per class, each its own call (batch 1:
    the latency of one image); forward passes are then per image."""
    from ar_vision import metrics
    from ar_vision.lm_adapter import CausalLMAdapter, generate_tokens

    adapter = CausalLMAdapter(ev.model, ev.plan, cfg_scale=config.cfg_scale)
    per_class = 1 if single else config.samples_per_class
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    calls = list(labels.split(1)) if single else [labels]
    gen_config = GenerationConfig(max_new_tokens=ev.rep.num_tokens, seed=config.seed + 2)
    test_images = _test_images(config)
    out: dict[str, dict[str, Any]] = {}
    wall: dict[str, list[float]] = {row: [] for row in runs}
    cpu: dict[str, list[float]] = {row: [] for row in runs}
    for _ in range(repeats):
        for row, (strategy, kwargs) in runs.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            results = [
                generate_tokens(adapter, batch, gen_config, strategy=strategy, **kwargs)
                for batch in calls
            ]
            wall[row].append(time.perf_counter() - start)
            cpu[row].append(time.process_time() - cpu_start)
            if row in out:
                continue
            tokens = torch.cat([t for t, _ in results])
            accepted = [n for _, stats in results for n in stats.accepted_lengths]
            passes = sum(stats.target_forward_passes for _, stats in results) / len(calls)
            images = ev.rep.decode(tokens).clamp(0, 1)
            out[row] = {
                "strategy": strategy,
                "window": kwargs.get("window", 1),
                "forward_passes": round(passes, 2),
                "mean_accepted_length": round(sum(accepted) / max(1, len(accepted)), 3),
                "class_accuracy": round(metrics.class_accuracy(images, labels), 4),
                "frechet_distance": round(metrics.frechet_distance(images, test_images), 3),
            }
    for row, record in out.items():
        record["seconds"] = round(statistics.median(wall[row]), 4)
        record["cpu_seconds"] = round(statistics.median(cpu[row]), 4)
        record["repeats"] = repeats
    base = next(iter(out.values()))
    for record in out.values():
        record["speedup_wall"] = round(base["seconds"] / record["seconds"], 3)
        record["speedup_cpu"] = round(base["cpu_seconds"] / record["cpu_seconds"], 3)
        passes = base["forward_passes"] / record["forward_passes"]
        record["speedup_forward_passes"] = round(passes, 3)
    return out


def vq_strategies(ev: Evaluation, window: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Plain sampling, SJD and LANTERN (neighbours from the VQ codebook) at one window."""
    from ar_vision.tokenizers import codebook_neighbours

    neighbours = codebook_neighbours(ev.rep.tokenizer.codebook(), k=8)  # (V, 8)
    return {
        "sample": ("sample", {}),
        "sjd": ("sjd", {"window": window}),
        "lantern": ("lantern", {"window": window, "neighbours": neighbours, "delta": 0.1}),
    }


def window_strategies(ev: Evaluation, windows: list[int]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Plain sampling, then SJD and LANTERN at each window, on the pixel tokenizer: a grey
    level's LANTERN neighbours are the nearest levels."""
    from ar_vision.tokenizers import codebook_neighbours

    levels = torch.linspace(0, 1, ev.rep.vocab_size)[:, None]  # (V, 1) grey values
    neighbours = codebook_neighbours(levels, k=min(4, ev.rep.vocab_size - 1))  # (V, 4)
    runs: dict[str, tuple[str, dict[str, Any]]] = {"sample": ("sample", {})}
    for w in windows:
        runs[f"sjd-{w}"] = ("sjd", {"window": w})
    for w in windows:
        runs[f"lantern-{w}"] = ("lantern", {"window": w, "neighbours": neighbours, "delta": 0.1})
    return runs


def _test_images(config: VisionDigitsConfig) -> torch.Tensor:
    from ar_vision.data import load_digits

    return load_digits(config.image_size, "test", config.seed)[0]


def _test_tokens(ev: Evaluation, config: VisionDigitsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from ar_vision.data import load_digits

    x, y = load_digits(config.image_size, "test", config.seed)
    return ev.rep.encode(x), y


def _model_row(ev: Evaluation) -> dict[str, float]:
    m = ev.metrics
    keys = [
        "class_accuracy",
        "frechet_distance",
        "bits_per_dim",
        "network_calls_per_image",
        "train_seconds",
        "tokenizer_seconds",
    ]
    return {k: round(m[k], 4) for k in keys}


def phi_row(ev: Evaluation, config: VisionDigitsConfig) -> dict[str, float]:
    """The next-scale run's numbers and its tokenizer's partial-decode MSE per scale."""
    x = _test_images(config)
    tokenizer = ev.rep.tokenizer
    tokens = tokenizer.encode(x)
    row: dict[str, float] = {"tokenizer_psnr": round(ev.metrics["tokenizer_psnr"], 3)}
    for k, side in enumerate(tokenizer.scales):
        partial = tokenizer.decode_partial(tokens, k)
        row[f"mse_after_scale_{side}"] = round(float(((partial - x) ** 2).mean()), 5)
    return {**row, **_model_row(ev)}


def ctf_row(ev: Evaluation, config: VisionDigitsConfig) -> dict[str, float]:
    """The coarse-to-fine run's numbers and its coarse / fine-given-coarse / full perplexity."""
    from ar_vision.recipes.images import coarse_fine_nll

    tokens, labels = _test_tokens(ev, config)
    coarse, fine = coarse_fine_nll(ev.model, ev.rep, ev.plan, tokens, labels)
    return {
        **_model_row(ev),
        "coarse_perplexity": round(math.exp(coarse), 3),
        "fine_given_coarse_perplexity": round(math.exp(fine), 3),
        "full_perplexity": round(math.exp(coarse + fine), 3),
    }


class Runner:
    """Trains each distinct config once (``vision-digits``' train_and_evaluate)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.done: dict[str, tuple[VisionDigitsConfig, Evaluation]] = {}

    def __call__(self, name: str, config: VisionDigitsConfig) -> Evaluation:
        if name in self.done:
            if self.done[name][0] != config:
                raise ValueError(f"run {name!r} asked for with two configs")
            return self.done[name][1]
        print(f"[vision] {name}: {config.tokenizer} tokens, {config.ordering}", flush=True)
        ev = train_and_evaluate(config, self.work / name, lambda msg: print(f"  {msg}", flush=True))
        self.done[name] = (config, ev)
        return ev


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny training, few samples")
    parser.add_argument("--out", default=".bench/vision.json")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--runs", default=",".join(RUNS), help="orderings: comma-separated runs")
    parser.add_argument("--steps", type=int, default=None, help="step-model updates")
    parser.add_argument("--tokenizer-steps", type=int, default=None, help="tokenizer fit steps")
    parser.add_argument("--samples-per-class", type=int, default=None)
    parser.add_argument("--window", type=int, default=8, help="orderings: SJD/LANTERN window")
    parser.add_argument("--windows", default="4,8,16", help="windows: SJD/LANTERN windows")
    parser.add_argument(
        "--repeats", type=int, default=3, help="speculative, windows: interleaved repeats"
    )
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    runs = [r for r in args.runs.split(",") if r]
    for bad, known in ((set(sections) - set(SECTIONS), SECTIONS), (set(runs) - set(RUNS), RUNS)):
        if bad:
            parser.error(f"unknown {sorted(bad)}; choose from {', '.join(known)}")
    windows = [int(w) for w in args.windows.split(",") if w]
    torch.set_num_threads(1)
    out_path = Path(args.out)
    work = out_path.with_suffix("")  # .bench/vision/: checkpoints and grids
    default = (20, 20, 2) if args.quick else (300, 300, 10)
    base = VisionDigitsConfig(
        tokenizer_steps=args.tokenizer_steps or default[1],
        steps=args.steps or default[0],
        samples_per_class=args.samples_per_class or default[2],
        progress_bar=False,
    )
    run = Runner(work)
    report: dict[str, Any] = {"sections": sections, "config": base.model_dump()}

    def write() -> None:  # after each section: what finished is kept if a later one fails
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2))

    def config_of(name: str, **update: Any) -> VisionDigitsConfig:
        tokenizer, ordering = RUNS[name]
        return base.model_copy(update={"tokenizer": tokenizer, "ordering": ordering, **update})

    if "orderings" in sections:
        report["runs"], report["grids"] = {}, {}
        rows: list[tuple[str, dict[str, float]]] = []
        for name in runs:
            config = config_of(name)
            ev = run(name, config)
            grid = save_samples(
                ev.images, ev.labels, work / f"{name}.png", config.samples_per_class
            )
            report["runs"][name] = {k: round(v, 5) for k, v in ev.metrics.items()}
            report["grids"][name] = str(grid)
            rows.append((name, ev.metrics))
        note = f"{base.samples_per_class} samples per class, CFG {base.cfg_scale}"
        _print_table(result_table(rows, note=note))
        write()
    if "speculative" in sections or ("orderings" in sections and "raster-vq" in runs):
        print(f"[vision] SJD / LANTERN on raster-vq (window {args.window})", flush=True)
        ev = run("raster-vq", config_of("raster-vq"))
        spec = speculative(ev, config_of("raster-vq"), vq_strategies(ev, args.window), args.repeats)
        report["speculative"] = spec
        _print_records("raster-vq: speculative decoding", spec)
        write()
    if "phi" in sections:
        print("[vision] next-scale: msrvq without and with phi", flush=True)
        report["phi"] = {
            f"phi {'on' if phi else 'off'}": phi_row(
                run(name, config_of("next-scale", phi=phi)), base
            )
            for phi, name in ((False, "next-scale"), (True, "next-scale-phi"))
        }
        _print_records("next-scale: VAR's phi refinement", report["phi"])
        write()
    if "ctf" in sections:
        print("[vision] coarse-to-fine: causal vs bidirectional fine stage", flush=True)
        report["ctf_fine_stage"] = {
            label: ctf_row(run(name, config_of("coarse-to-fine", bidirectional_steps=bi)), base)
            for label, bi, name in (
                ("causal", False, "coarse-to-fine"),
                ("bidirectional", True, "coarse-to-fine-bidirectional"),
            )
        }
        _print_records("coarse-to-fine: fine stage", report["ctf_fine_stage"])
        write()
    if "windows" in sections:
        print(f"[vision] SJD / LANTERN windows {windows} on raster-pixels", flush=True)
        ev = run("raster-pixels", config_of("raster-pixels"))
        strategies = window_strategies(ev, windows)
        report["windows"] = speculative(ev, base, strategies, args.repeats)
        _print_records("raster-pixels (64 tokens): SJD / LANTERN windows", report["windows"])
        report["windows_one_image"] = speculative(ev, base, strategies, args.repeats, single=True)
        _print_records("raster-pixels: one image per call", report["windows_one_image"])
        write()
    return report


def _print_records(title: str, records: dict[str, dict[str, Any]]) -> None:
    columns = ["", *next(iter(records.values())).keys()]
    _print_table(Table(title, columns, [[k, *v.values()] for k, v in records.items()]))


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
