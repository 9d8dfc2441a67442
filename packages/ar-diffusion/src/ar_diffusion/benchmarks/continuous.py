"""Continuous-valued generation: quality against network calls, and the heads' cost.

1. **Transition Matching vs Euler flow matching** on each 2-D mixture (8 Gaussians,
   moons, checkerboard): the ``diffusion-2d`` recipe's four generators (DTM, ARTM, FHTM,
   Euler FM) trained for ``--updates`` updates each, sampled at 2, 4, 8 and 32
   transitions; per row the backbone and flow-head calls per sample, sliced W1 and
   MMD^2 to fresh data, ms per sample, and the ratio of the sliced W1 to Euler FM's at
   the same T (the plain method of the same run). The data-vs-data distance of two
   fresh sample sets is the floor.
2. **diffusion-digits** (needs ar-vision): the recipe's generators on 8x8 digits (ACDiT
   with blocks 1, 4, 16 at 2 and 8 Euler steps per block, ARFlow, flow matching at 2 and
   8 steps) trained for ``--digits-updates`` updates each: per row the network calls per
   image, class accuracy (ar-vision's metrics classifier), Fréchet distance to the test
   images and ms per image, next to the test images' own accuracy and the test-vs-train
   Fréchet floor. ``--digits-updates 0`` skips it.
3. **Heads' sampling cost per token** (:mod:`ar_diffusion.heads`): untrained heads of the
   default sizes (width 128, depth 3; value dim ``--dim``, hidden width 256) drawing one
   value for each of ``--tokens`` tokens: head network calls per token and microseconds
   per token for DDPM (50 steps), DDIM (10), flow Euler (32), Heun (8 steps, 15 calls),
   the GMM (K = 8) and the MSE head.

Run: ``uv run ar bench diffusion-continuous -- [--quick] [--out PATH] [--updates N] [--data ...]
[--digits-updates N]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from ar_core.errors import ArError
from ar_diffusion.heads import DiffusionHead, FlowHead, GMMHead, MSEHead
from ar_diffusion.recipes.two_d import Diffusion2DConfig, recipe
from ar_diffusion.toy2d import DATASETS

RATIO = "W1 / Euler FM's"


def transition_rows(config: Diffusion2DConfig, out_dir: Path) -> dict[str, Any]:
    """One recipe run: rows with the ratio to Euler FM's sliced W1 at the same T."""
    result = recipe.run(config, out_dir, progress=lambda msg: print(f"  {msg}", flush=True))
    table = result.tables[0]
    rows = [dict(zip(table.columns, r, strict=True)) for r in table.rows]
    fm = {r["T"]: r["sliced W1"] for r in rows if r["method"] == "Euler FM"}
    for r in rows:
        r[RATIO] = round(r["sliced W1"] / fm[r["T"]], 3) if r["T"] in fm else None
    return {
        "rows": rows,
        "sliced_w1_data_vs_data": result.metrics["sw_data_vs_data"],
        "train_seconds": {m: result.metrics[f"{m}_train_seconds"] for m in config.methods},
    }


def digits_rows(updates: int, quick: bool, out_dir: Path) -> dict[str, Any]:
    """One diffusion-digits run: its table as records, its settings and training times."""
    from ar_diffusion.recipes.digits import DiffusionDigitsConfig
    from ar_diffusion.recipes.digits import recipe as digits_recipe

    if quick:
        config = DiffusionDigitsConfig(
            updates=updates,
            steps=[2],
            width=16,
            layers=1,
            arflow_images=4,
            fm_width=32,
            samples_per_class=2,
            progress_bar=False,
        )
    else:
        config = DiffusionDigitsConfig(updates=updates, progress_bar=False)
    result = digits_recipe.run(config, out_dir, progress=lambda msg: print(f"  {msg}", flush=True))
    table = result.tables[0]
    return {
        "rows": [dict(zip(table.columns, r, strict=True)) for r in table.rows],
        "note": table.note,
        "train_seconds": {
            k.removesuffix("_train_seconds"): v
            for k, v in result.metrics.items()
            if k.endswith("_train_seconds")
        },
    }


def head_costs(dim: int, tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Head calls and microseconds per token for each head and sampler (best of repeats)."""
    cond = 256
    torch.manual_seed(0)
    cases: list[tuple[str, str, int | None, DiffusionHead | FlowHead | GMMHead | MSEHead]] = [
        ("diffusion", "ddpm", 50, DiffusionHead(dim, cond)),
        ("diffusion", "ddim", 10, DiffusionHead(dim, cond, method="ddim")),
        ("flow", "euler", 32, FlowHead(dim, cond)),
        ("flow", "heun", 8, FlowHead(dim, cond, method="heun")),
        ("gmm (K=8)", "mixture", None, GMMHead(dim, cond, components=8)),
        ("mse", "mean", None, MSEHead(dim, cond)),
    ]
    hidden = torch.randn(tokens, cond)
    rows = []
    for name, method, steps, head in cases:
        head.eval()
        best = float("inf")
        for _ in range(repeats):
            gen = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            head.sample(hidden, generator=gen, steps=steps)
            best = min(best, time.perf_counter() - start)
        rows.append(
            {
                "head": name,
                "sampler": method,
                "steps": steps or 1,
                "head calls / token": head.network_calls(steps),
                "us / token": round(1e6 * best / tokens, 2),
                "parameters": sum(p.numel() for p in head.parameters()),
            }
        )
    return rows


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few updates, few samples")
    parser.add_argument("--out", default=".bench/diffusion-continuous.json")
    parser.add_argument("--updates", type=int, default=None, help="updates per generator")
    parser.add_argument("--dim", type=int, default=16, help="value dimension of the heads")
    parser.add_argument(
        "--digits-updates", type=int, default=None, help="diffusion-digits updates (0: skip)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--data", nargs="+", choices=DATASETS, default=list(DATASETS), help="2-D mixtures"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    updates = args.updates or (20 if quick else 1000)
    report: dict[str, Any] = {"updates": updates, "threads": args.threads}
    out = Path(args.out)
    work = out.parent / "diffusion-continuous"
    for data in args.data[:1] if quick else args.data:
        config = Diffusion2DConfig(
            data=data,
            updates=updates,
            samples=200 if quick else 2000,
            steps=[2, 4] if quick else [2, 4, 8, 32],
            progress_bar=False,
        )
        print(f"[{data}] {updates} updates per generator", flush=True)
        work.mkdir(parents=True, exist_ok=True)
        got = transition_rows(config, work)
        report[f"transition matching on {data}"] = got["rows"]
        report[f"{data}: sliced W1 data vs data"] = got["sliced_w1_data_vs_data"]
        report[f"{data}: train seconds"] = got["train_seconds"]
        for r in got["rows"]:
            print(
                f"  {r['method']:<9} T={r['T']:<3} backbone {r['backbone calls']:<3} head "
                f"{r['head calls']:<4} W1 {r['sliced W1']:.4f} ({r[RATIO]}x FM) "
                f"MMD^2 {r['MMD^2']:.5f}",
                flush=True,
            )
    digits_updates = (
        args.digits_updates if args.digits_updates is not None else (5 if quick else 1500)
    )
    if digits_updates > 0:
        print(f"[digits] {digits_updates} updates per generator", flush=True)
        try:
            got_d = digits_rows(digits_updates, quick, out.parent / "diffusion-digits")
        except ArError as exc:  # ar-vision missing: say so in the report
            report["diffusion-digits"] = f"skipped: {exc}"
            print(f"  skipped: {exc}", flush=True)
        else:
            report["diffusion-digits: quality against network calls"] = got_d["rows"]
            report["diffusion-digits: settings"] = got_d["note"]
            report["diffusion-digits: train seconds"] = got_d["train_seconds"]
            for r in got_d["rows"]:
                print(
                    f"  {r['method']:<17} calls {r['calls / image']:<4} accuracy "
                    f"{r['class accuracy']:.3f} Frechet {r['Fréchet']:.3f}",
                    flush=True,
                )
    tokens = 256 if quick else 4096
    report["head sampling cost per token"] = head_costs(args.dim, tokens, 1 if quick else 3)
    report["head cost settings"] = f"{tokens} tokens, value dim {args.dim}, hidden width 256"
    for r in report["head sampling cost per token"]:
        print(
            f"  {r['head']:<10} {r['sampler']:<8} {r['head calls / token']:>3} calls/token "
            f"{r['us / token']:>8.2f} us/token"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report
