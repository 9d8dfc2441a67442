"""MDLM vs BD3-LM (block sizes 4 and 16) vs AR at equal updates, on stdlib bytes.

Four models of one size (``ar_core.Transformer``, byte vocabulary + [MASK] = 257 ids)
are trained with ``ar_core.Trainer`` for the same number of updates on the same windows
of the Python standard library's ``*.py`` files (sorted, every 10th file held out):

* ``ar``: next-byte cross-entropy; its input starts with the [MASK] id as a BOS, so all
  ``seq_len`` bytes of a window are scored, like the diffusion models';
* ``mdlm``: :func:`ar_diffusion.mdlm.mdlm_loss`;
* ``bd3-4``, ``bd3-16``: :func:`ar_diffusion.bd3.bd3_loss` (unclipped times, so the
  held-out estimate is the bound itself).

Held-out bits per byte: AR's exact NLL; the diffusion models' NELBO (an upper bound),
averaged over ``--eval-samples`` antithetic time draws per window. Then, on ``bd3-16``,
``block-diffusion`` sampling of ``--gen-tokens`` (default 496, 512 positions with the
16-byte prompt) with and without the block KV cache (tokens/s; outputs compared with
argmax values, the first differing position if any), and
confidence-threshold unmasking: network calls per token against the AR model's NLL of
the sample (generative perplexity), next to AR ``sample``.

    uv run ar bench diffusion -- [--quick] [--out PATH] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ar_core import masks
from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.trainer import TrainConfig, Trainer
from ar_diffusion.bd3 import bd3_loss
from ar_diffusion.mdlm import mdlm_loss

MASK = 256  # the [MASK] id, also the AR model's BOS
RUNS = ("ar", "mdlm", "bd3-4", "bd3-16")


def stdlib_bytes(max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) byte tensors: sorted stdlib ``*.py`` files without tests, every
    10th file held out, each side capped at ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.relative_to(root).as_posix())
    train, held = bytearray(), bytearray()
    for i, path in enumerate(files):
        side = held if i % 10 == 9 else train
        if len(side) < max_bytes:
            side += path.read_bytes()[: max_bytes - len(side)]
    return torch.tensor(list(train), dtype=torch.long), torch.tensor(list(held), dtype=torch.long)


def windows(data: torch.Tensor, seq_len: int) -> Callable[[torch.Generator, int], torch.Tensor]:
    def sample(gen: torch.Generator, batch_size: int) -> torch.Tensor:
        start = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=gen)
        return torch.stack([data[s : s + seq_len] for s in start.tolist()])  # (B, T)

    return sample


def ar_nll(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Summed next-byte NLL of each row of ``x`` (B, T) after a [MASK] BOS: (B,)."""
    bos = torch.full((x.shape[0], 1), MASK, dtype=torch.long, device=x.device)
    logits = model(torch.cat([bos, x[:, :-1]], 1), mask=masks.causal()).logits[..., :MASK]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none")
    return nll.view(x.shape).sum(-1)


def loss_fn(run: str) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """The training loss of ``run`` in nats per byte."""

    def loss(model: Any, x: torch.Tensor) -> torch.Tensor:
        if run == "ar":
            return ar_nll(model, x).mean() / x.shape[1]
        if run == "mdlm":
            return mdlm_loss(model, x, mask_id=MASK).mean() / x.shape[1]
        block = int(run.split("-")[1])
        return bd3_loss(model, x, block_size=block, mask_id=MASK).mean() / x.shape[1]

    return loss


@torch.no_grad()
def held_out_bpb(
    model: Transformer, run: str, held: torch.Tensor, n_windows: int, seq_len: int, samples: int
) -> float:
    """Bits per byte over ``n_windows`` fixed held-out windows (diffusion: the NELBO mean
    over ``samples`` seeded draws)."""
    model.eval()
    starts = torch.linspace(0, held.numel() - seq_len - 1, n_windows).long().tolist()
    x = torch.stack([held[s : s + seq_len] for s in starts])  # (W, T)
    g = torch.Generator().manual_seed(1234)
    if run == "ar":
        nats = float(ar_nll(model, x).sum())
    else:
        fn = loss_fn(run)
        nats = 0.0
        for _ in range(samples):
            torch.manual_seed(int(torch.randint(0, 2**31, (), generator=g)))
            nats += float(fn(model, x)) * x.numel() / samples
    model.train()
    return nats / (x.numel() * math.log(2))


def generation(
    bd3: Transformer, ar: Transformer, prompt: torch.Tensor, n_new: int, thresholds: list[float]
) -> dict[str, Any]:
    """Block KV cache speed, and threshold unmasking: calls per token vs generative NLL."""
    bd3.eval()
    ar.eval()
    cfg = GenerationConfig(max_new_tokens=n_new, temperature=1.0, seed=0)
    # the cache comparison draws argmax values (positions still in seeded random order):
    # cached and uncached logits differ by float noise (~1e-5), which can flip an
    # inverse-CDF draw at temperature 1 somewhere in hundreds of draws
    greedy = GenerationConfig(max_new_tokens=n_new, temperature=0.0, seed=0)
    out: dict[str, Any] = {"kv_cache": {}}
    seqs = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        res = generate(
            bd3,
            prompt,
            greedy,
            strategy="block-diffusion",
            block_size=16,
            steps=16,
            use_cache=use_cache,
        )
        seconds = time.perf_counter() - t0
        seqs[use_cache] = res.sequences
        out["kv_cache"][f"bd3-16 use_cache={use_cache}"] = {
            "tokens_per_s": n_new * prompt.shape[0] / seconds,
            "network_calls": res.stats.target_forward_passes,
        }
    out["cache_speedup"] = (
        out["kv_cache"]["bd3-16 use_cache=True"]["tokens_per_s"]
        / out["kv_cache"]["bd3-16 use_cache=False"]["tokens_per_s"]
    )
    out["cached_equals_uncached"] = bool(torch.equal(seqs[True], seqs[False]))
    differ = (seqs[True] != seqs[False]).nonzero()
    out["first_difference"] = int(differ[0, 1]) if differ.numel() else None

    def gen_nll(sequences: torch.Tensor) -> float:
        """The AR model's NLL per generated byte (nats), given the prompt."""
        with torch.no_grad():
            total = ar_nll(ar, sequences) - ar_nll(ar, sequences[:, : prompt.shape[1]])
        return float(total.mean()) / n_new

    rows = []
    for name, kwargs in [
        ("ar sample", dict(strategy="sample")),
        ("bd3-16 steps=16", dict(strategy="block-diffusion", block_size=16, steps=16)),
        *[
            (
                f"bd3-16 threshold={th}",
                dict(strategy="block-diffusion", block_size=16, threshold=th),
            )
            for th in thresholds
        ],
    ]:
        model = ar if name.startswith("ar") else bd3
        res = generate(model, prompt, cfg, **kwargs)  # type: ignore[arg-type]
        rows.append(
            {
                "method": name,
                "calls_per_token": res.stats.target_forward_passes / n_new,
                "gen_nll_nats_per_byte": gen_nll(res.sequences),
            }
        )
    out["threshold"] = rows
    return out


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few updates, short generation")
    parser.add_argument("--out", default=".bench/diffusion.json")
    parser.add_argument("--steps", type=int, default=None, help="updates per model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    steps = args.steps or (10 if quick else 400)
    seq_len, batch = 128, 16
    train, held = stdlib_bytes(200_000 if quick else 2_000_000)
    arch = dict(vocab_size=257, dim=96, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=1024)
    models: dict[str, Transformer] = {}
    report: dict[str, Any] = {
        "steps": steps,
        "seq_len": seq_len,
        "batch_size": batch,
        "arch": arch,
        "runs": {},
    }
    for run in RUNS:
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(**arch))
        cfg = TrainConfig(
            steps=steps,
            batch_size=batch,
            lr=3e-3,
            warmup_steps=min(50, steps),
            progress=False,
            seed=0,
        )
        t0 = time.perf_counter()
        losses = Trainer(model, loss_fn(run), windows(train, seq_len), cfg).train()
        seconds = time.perf_counter() - t0
        bpb = held_out_bpb(model, run, held, 8 if quick else 64, seq_len, 2 if quick else 8)
        report["runs"][run] = {
            "bits_per_byte": bpb,
            "final_train_loss": losses[-1],
            "train_seconds": seconds,
        }
        print(
            f"[{run}] {steps} updates in {seconds:.0f} s: held-out {bpb:.3f} bits/byte", flush=True
        )
        models[run] = model
    prompt = held[:16][None]
    n_new = 32 if quick else 496
    report |= generation(models["bd3-16"], models["ar"], prompt, n_new, [0.9, 0.7, 0.5, 0.3])
    g, kv = report, report["kv_cache"]
    print(
        f"bd3-16 at {16 + n_new} positions: {kv['bd3-16 use_cache=True']['tokens_per_s']:.0f} tok/s "
        f"cached vs {kv['bd3-16 use_cache=False']['tokens_per_s']:.0f} uncached "
        f"({g['cache_speedup']:.1f}x), equal: {g['cached_equals_uncached']}"
    )
    for row in g["threshold"]:
        print(
            f"  {row['method']:<24} calls/token {row['calls_per_token']:.3f}  "
            f"AR NLL of the sample {row['gen_nll_nats_per_byte']:.3f} nats/byte"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report
