"""Accelerated decoding on CPU-trained byte-level code models, against greedy and against
Hugging Face assisted generation / prompt lookup on the same weights.

Two sections (``--sections big,small``), every ratio from runs interleaved in one process
(prompt by prompt), wall and CPU (``time.process_time``) seconds side by side:

``big`` - the setting where speculation is meant to pay: a bandwidth-bound target that
writes code. Training a ~100M model from scratch to useful quality takes far more than
this 2-core machine gives (24 updates in 50 min left one that wrote only spaces), so the
target is grown: a 2 x 256 byte-level model is trained (~7 minutes, ``ar_core.Trainer``),
grown function-preservingly to 16 x 768 (:func:`grow_transformer`: ~114M parameters,
455 MB of float32 weights read per decode step) with noise that breaks the copies'
symmetry, and trained on as a whole. The decode cost is that of the full model; what it
writes is close to the small model's (held-out bits per byte of each stage are reported).
All of ar's runs use :func:`ar_core.quant.prepack` (the CPU decode layouts), the baseline
greedy too (compiled; eager rows and an unpacked row show what each part gives). A
2 x 256 draft distilled on the target's own greedy continuations; code completion
(greedy, speculative k and adaptive, lookahead, HF assisted generation on the same
weights) and an edit workload (a snippet, a request to rename an identifier, the start of
the edited copy: the output repeats the input) for prompt lookup (ours and HF's). A
prefill-only run (1 new token) gives decode-only speed-ups too. Cached weights carry a
``bench.json`` (settings + the weights' checksum) and are reused only when both match;
the target's greedy continuations are checked for degeneracy (distinct 8-gram fraction):
speed-ups on a target that loops measure the mechanics, not a realistic acceptance rate.
Two parallel-generation families join the completion table (:func:`big_families`, same
interleaved run, same baseline): Medusa with heads trained on stored hidden states of the
target's own greedy continuations (the target runs once over them), and FiRST
self-speculative decoding (the target with blocks skipped as its own draft: the blocks
growth added, every other block, or the sets FiRST's routers choose per prompt). MTP is
not run here: its LoRA training backpropagates through the 114M target on every step.

``small`` - the overhead-bound setting: the big target's 2 x 256 base itself (its cached
weights validated) and a 1 x 128 draft trained with ``ar_core.Trainer`` on the Python
standard library's own source (a deterministic, sorted file list; every 10th file is held
out), plain float weights (the families wrap the target's ``nn.Linear`` layers, which
``prepack`` replaces). Trained weights are cached under ``--cache-dir`` keyed by a hash of
the model, data and training settings, and reused when present.

On held-out code-completion prompts (batch 1, a prefix of a held-out file ending at a
line break) every registered draft-and-verify strategy runs next to plain greedy in the
same process: target forward passes per new token, mean accepted length (tokens per
verification step, ar's ``accepted_lengths``), wall-clock speed-up over greedy, and
whether the output equals greedy's. Hugging Face's ``generate`` (greedy,
``assistant_model=``, ``prompt_lookup_num_tokens=``) runs on the converted weights
(:mod:`ar_core.interop.hf_llama`); we report its tokens/s, our/HF ratio and equality.

The parallel-generation families train their extra parts on the frozen target (cached
like the models): Medusa heads (:func:`ar_decoding.medusa.train_medusa_heads`), one MTP
model with 8 mask tokens (gated LoRA + sampler head, :func:`ar_decoding.mtp.train_mtp`;
run with k = 4 and 8 drafts, linear and quadratic), and FiRST self-speculative decoding
with a fixed skip set as the draft. ASSD needs an any-subset two-stream model: a small
one is trained on the same corpus (random orders) and ASSD (k = 4, 8) is compared with the
same model decoding one position per call (its own greedy), in a table of its own.

    uv run ar bench decoding -- [--quick] [--sections big,small] [--out PATH]
                                [--only speculative,lookahead,medusa,mtp,first,assd]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ar_core import registry
from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.quant import prepack
from ar_core.steps import TwoStreamStepModel
from ar_core.trainer import TrainConfig, Trainer

DRAFT = dict(vocab_size=256, dim=128, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=1024)


# -- data -----------------------------------------------------------------------------------


def stdlib_corpus(max_bytes: int) -> tuple[bytes, list[bytes]]:
    """(training bytes, held-out files): sorted stdlib ``*.py`` files (tests excluded),
    every 10th file held out; the training text is capped at ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.relative_to(root).as_posix())
    train, held = bytearray(), []
    for i, path in enumerate(files):
        data = path.read_bytes()
        if i % 10 == 9:
            held.append(data)
        elif len(train) < max_bytes:
            train += data[: max_bytes - len(train)]
    return bytes(train), held


def batches(data: torch.Tensor, seq_len: int) -> Callable[[torch.Generator, int], torch.Tensor]:
    def sample(gen: torch.Generator, batch_size: int) -> torch.Tensor:
        start = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=gen)
        return torch.stack([data[s : s + seq_len + 1] for s in start.tolist()])  # (B, T+1)

    return sample


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1]).logits  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def _trained_folder(
    name: str, arch: dict[str, Any], train: dict[str, Any], data: torch.Tensor, cache_dir: Path
) -> tuple[Path, dict[str, Any]]:
    key = {"arch": arch, "train": train, "bytes": data.numel()}
    blob = json.dumps(key, sort_keys=True)
    return cache_dir / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}", key


def trained(
    name: str, arch: dict[str, Any], train: dict[str, Any], data: torch.Tensor, cache_dir: Path
) -> Transformer:
    """Train ``arch`` with ``ar_core.Trainer`` in float32 (or load the cached weights for
    the same settings); ``train['seed']`` (default 0) seeds the initialisation and the
    batches."""
    folder, key = _trained_folder(name, arch, train, data, cache_dir)
    # weights are reused only with a bench.json naming these settings and their checksum
    if (folder / "config.json").exists() and _meta_matches(folder, key) is not None:
        print(f"[{name}] cached weights (validated): {folder}", flush=True)
        return Transformer.from_pretrained(folder).eval()
    seed = int(train.get("seed", 0))
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(**arch))
    cfg = TrainConfig.build(
        seed=seed,
        steps=train["steps"],
        batch_size=train["batch_size"],
        lr=train["lr"],
        warmup_steps=train["steps"] // 10,
        device="cpu",
        progress=False,
        log_every=max(1, train["steps"] // 5),
    )
    trainer = Trainer(model, lm_loss, batches(data, train["seq_len"]), cfg)
    t0 = time.perf_counter()
    losses = trainer.train()
    print(
        f"[{name}] trained {train['steps']} steps in {time.perf_counter() - t0:.0f}s, "
        f"loss {losses[0]:.2f} -> {sum(losses[-10:]) / len(losses[-10:]):.2f}",
        flush=True,
    )
    model.eval()
    _save_with_meta(model, folder, key, {"loss_last10": sum(losses[-10:]) / len(losses[-10:])})
    return model


# -- the bandwidth-bound setting: a >= 100M target, a draft distilled on its outputs ---------

# the small model a grown target starts from (:func:`grown_target`): 2 x 256, trained in
# float32 with ar_core.Trainer (~7 min here). A 4 x 256 trained under bf16 autocast for
# 600 steps of 16 x 256 (2.49 held-out bits per byte) was measured first: its greedy
# continuations of the held-out prompts were runs of spaces (it never left indentation);
# this one writes code on most of them
BASE: dict[str, Any] = dict(
    vocab_size=256, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=1024
)
BASE_TRAIN: dict[str, Any] = dict(steps=400, batch_size=16, seq_len=128, lr=3e-3)
# grown 3x wide (768, 12 heads, 6 KV heads, FFN 2304) and 8x deep (16 blocks): ~114M
# parameters, 455 MB of float32 weights read per decode step; then trained as a whole
GROW: dict[str, Any] = dict(width=3, depth=8, noise=0.02)
# (measured: 16 steps of 4 x 128 at lr 3e-4 took held-out bits per byte 2.49 -> 2.71)
GROWN_TRAIN: dict[str, Any] = dict(steps=32, batch_size=4, seq_len=128, lr=3e-5)


# -- a bandwidth-bound target that writes code: a trained small model, grown ---------------


def _tile_linear(w: torch.Tensor, r_out: int, r_in: int) -> torch.Tensor:
    """(out, in) -> (r_out * out, r_in * in): every block ``w / r_in``, so that an input
    repeated ``r_in`` times gives the output ``w x`` repeated ``r_out`` times."""
    return (w / r_in).repeat(r_out, r_in)


def grow_transformer(
    base: Transformer, width: int, depth: int, noise: float, seed: int = 0
) -> Transformer:
    """A ``width`` times wider, ``depth`` times deeper copy of ``base`` computing the same
    function (before ``noise``), for a large target that writes what a trained small model
    writes (function-preserving growth: Net2Net, Chen, Goodfellow & Shlens 2016,
    arXiv:1511.05641; bert2BERT, Chen et al. 2022).

    Width: the hidden state becomes ``[h, h, ..]`` (``width`` copies); every linear is tiled
    (:func:`_tile_linear`), the q/k/v rows head by head so that the new heads repeat the old
    ones (head_dim and hence RoPE and the attention scale stay; GQA groups line up), norms
    repeat their gains (RMS of a repeated vector is unchanged), embeddings repeat their
    columns. Depth: base block i is followed by ``depth - 1`` copies whose output
    projections (``wo``, ``w2``) are zero - identity blocks until trained. Then every weight
    gets Gaussian noise of ``noise`` times its tensor's standard deviation (the zero
    projections: ``noise`` times the base projection's), which breaks the copies' symmetry
    so that training can use them. With ``noise=0`` the logits equal ``base``'s up to
    float rounding (tested)."""
    c = base.cfg
    r = width
    cfg = TransformerConfig(
        **{
            **c.model_dump(),
            "dim": c.dim * r,
            "n_heads": c.n_heads * r,
            "n_kv_heads": c.kv_heads * r,
            "ffn_hidden": c.hidden_dim * r,
            "n_layers": c.n_layers * depth,
        }
    )
    big = Transformer(cfg)
    gen = torch.Generator().manual_seed(seed)

    def noisy(w: torch.Tensor, scale: float) -> torch.Tensor:
        if noise == 0:
            return w
        return w + torch.randn(w.shape, generator=gen) * noise * scale

    src = {k: v.detach().float() for k, v in base.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    out["tok_embeddings.weight"] = src["tok_embeddings.weight"].repeat(1, r)
    out["norm.weight"] = src["norm.weight"].repeat(r)
    out["output.weight"] = _tile_linear(src["output.weight"], 1, r)
    q, kv, h = c.n_heads * c.head_dim, c.kv_heads * c.head_dim, c.hidden_dim
    for i in range(c.n_layers):
        p = f"layers.{i}."
        wq, wk, wv = src[p + "attn.wqkv.weight"].split([q, kv, kv])
        w1, w3 = src[p + "ffn.w13.weight"].split([h, h])
        block = {
            "attn_norm.weight": src[p + "attn_norm.weight"].repeat(r),
            "ffn_norm.weight": src[p + "ffn_norm.weight"].repeat(r),
            "attn.wqkv.weight": torch.cat([_tile_linear(w, r, r) for w in (wq, wk, wv)]),
            "attn.wo.weight": _tile_linear(src[p + "attn.wo.weight"], r, r),
            "ffn.w13.weight": torch.cat([_tile_linear(w, r, r) for w in (w1, w3)]),
            "ffn.w2.weight": _tile_linear(src[p + "ffn.w2.weight"], r, r),
        }
        for j in range(depth):
            for name, w in block.items():
                zero = j > 0 and name in ("attn.wo.weight", "ffn.w2.weight")
                scale = (
                    float(w.std()) if w.numel() > 1 and not name.endswith("norm.weight") else 0.0
                )
                out[f"layers.{i * depth + j}.{name}"] = noisy(
                    torch.zeros_like(w) if zero else w, scale
                )
    for name in ("tok_embeddings.weight", "output.weight"):
        out[name] = noisy(out[name], float(out[name].std()))
    big.load_state_dict(out)
    return big.eval()


def distinct_ngrams(tokens: list[int], n: int = 8) -> float:
    """Distinct n-grams / n-grams of a continuation: ~1 for varied text, -> 0 for a loop."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def _bits_per_byte(model: Transformer, held: list[bytes], windows: int, seq_len: int) -> float:
    data = torch.tensor(list(b"".join(held)[: windows * (seq_len + 1)]), dtype=torch.long)
    batch = data[: windows * (seq_len + 1)].view(windows, seq_len + 1)
    with torch.no_grad():
        return float(lm_loss(model, batch)) / float(torch.log(torch.tensor(2.0)))


def _weights_digest(folder: Path) -> str | None:
    """The checksum ``save_pretrained`` stores inside ``model.safetensors``."""
    from safetensors import safe_open

    from ar_core.checkpoint import DIGEST_METADATA, WEIGHTS_NAME

    try:
        with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
            return (f.metadata() or {}).get(DIGEST_METADATA)
    except Exception:  # an unreadable file: not reusable
        return None


def _meta_matches(folder: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored ``bench.json`` when it was written for ``key`` and its recorded checksum
    is the one inside the weights file (which ``load_weights`` re-hashes on load)."""
    try:
        meta = json.loads((folder / "bench.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        print(f"[cache] {folder} was trained with other settings: retraining", flush=True)
        return None
    if _weights_digest(folder) != meta.get("sha256"):
        print(f"[cache] {folder}: checksum differs from bench.json: retraining", flush=True)
        return None
    return dict(meta)


def _save_with_meta(
    model: Transformer, folder: Path, key: dict[str, Any], extra: dict[str, Any]
) -> None:
    model.save_pretrained(folder)
    digest = _weights_digest(folder)
    (folder / "bench.json").write_text(
        json.dumps({"key": key, "sha256": digest, **extra}, indent=2)
    )


def _train_bf16(
    model: Transformer, train: dict[str, Any], data: torch.Tensor, held: list[bytes], label: str
) -> dict[str, Any]:
    """``train['steps']`` AdamW steps on random windows of ``data`` under bfloat16 autocast
    (the CPU has avx512_bf16): linear warm-up over the first 10%, cosine decay to 10% of
    ``train['lr']``, gradient clipping at 1. Returns the run's record (times, losses,
    held-out bits per byte)."""
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], betas=(0.9, 0.95), weight_decay=0.0)
    sample = batches(data, train["seq_len"])
    gen = torch.Generator().manual_seed(train.get("data_seed", 0))
    steps, warm = train["steps"], max(1, train["steps"] // 10)
    losses, t0, c0 = [], time.perf_counter(), time.process_time()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:  # linear warm-up, cosine decay to 10%
            frac = (
                (step + 1) / warm
                if step < warm
                else 0.55
                + 0.45
                * float(torch.cos(torch.tensor(torch.pi * (step - warm) / max(1, steps - warm))))
            )
            group["lr"] = train["lr"] * frac
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss(model, sample(gen, train["batch_size"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 20) == 0:
            print(f"[{label}] step {step + 1}/{steps} loss {losses[-1]:.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip
    model.eval()
    return {
        "train_wall_s": time.perf_counter() - t0,
        "train_cpu_s": time.process_time() - c0,
        "loss_first": losses[0],
        "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
        "held_out_bits_per_byte": _bits_per_byte(model, held, 8, 256),
    }


def _cached_model(
    name: str, key: dict[str, Any], cache_dir: Path
) -> tuple[Path, tuple[Transformer, dict[str, Any]] | None]:
    """The folder for ``key`` under ``cache_dir`` and, when it holds weights whose
    ``bench.json`` validates against ``key``, (the loaded model, that record)."""
    blob = json.dumps(key, sort_keys=True).encode()
    folder = cache_dir / f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"
    meta = _meta_matches(folder, key) if (folder / "config.json").exists() else None
    if meta is None:
        return folder, None
    print(f"[{name}] cached weights (validated): {folder}", flush=True)
    return folder, (Transformer.from_pretrained(folder).eval(), meta)


def cached_lm(
    name: str,
    arch: dict[str, Any],
    train: dict[str, Any],
    data: torch.Tensor,
    held: list[bytes],
    cache_dir: Path,
    start: Callable[[], tuple[Transformer, dict[str, Any]]] | None = None,
) -> tuple[Transformer, dict[str, Any]]:
    """A byte-level LM trained by :func:`_train_bf16` (from a fresh ``arch`` with seed 0,
    or from ``start()``: (initial model, what identifies it)), cached under ``cache_dir``
    with ``bench.json``: the settings, the weights' checksum and the quality reached."""
    key = {"arch": arch, "train": train, "bytes": data.numel()}
    origin = None
    if start is not None:
        model, origin = start()
        key["start"] = origin
    folder, cached = _cached_model(name, key, cache_dir)
    if cached is not None:
        return cached
    if start is None:
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(**arch))
    extra = _train_bf16(model, train, data, held, name)
    _save_with_meta(model, folder, key, extra)
    print(f"[{name}] {extra}", flush=True)
    return model, {"key": key, "sha256": _weights_digest(folder), **extra}


def code_base(
    arch: dict[str, Any],
    train: dict[str, Any],
    data: torch.Tensor,
    held: list[bytes],
    cache_dir: Path,
) -> tuple[Transformer, dict[str, Any]]:
    """The small byte-level code model both sections start from (:func:`trained`), with
    its record: the weights' checksum, the last training losses, held-out bits per byte."""
    model = trained("code-base", arch, train, data, cache_dir)
    folder, _ = _trained_folder("code-base", arch, train, data, cache_dir)
    meta = json.loads((folder / "bench.json").read_text())
    return model, {
        "sha256": meta["sha256"],
        "loss_last10": meta.get("loss_last10"),
        "held_out_bits_per_byte": _bits_per_byte(model, held, 8, 256),
    }


def grown_target(
    base_arch: dict[str, Any],
    base_train: dict[str, Any],
    grow: dict[str, Any],
    finetune: dict[str, Any],
    data: torch.Tensor,
    held: list[bytes],
    cache_dir: Path,
) -> tuple[Transformer, dict[str, Any]]:
    """The bandwidth-bound target: ``base_arch`` trained (``base_train``), grown by
    :func:`grow_transformer` (``grow``: width, depth, noise) and trained on as a whole
    (``finetune``); every stage cached and validated (the grown run's key holds the base's
    checksum). The record has the held-out bits per byte of the base, of the grown model
    before training and after it."""
    base, base_meta = code_base(base_arch, base_train, data, held, cache_dir)
    grown_bpb: dict[str, float] = {}

    def start() -> tuple[Transformer, dict[str, Any]]:
        model = grow_transformer(base, grow["width"], grow["depth"], grow["noise"])
        grown_bpb["grown_bits_per_byte_before_training"] = _bits_per_byte(model, held, 8, 256)
        return model, {"base_sha256": base_meta["sha256"], "grow": grow}

    model, meta = cached_lm(
        "grown-target", _grown_arch(base_arch, grow), finetune, data, held, cache_dir, start
    )
    return model, {
        **{k: v for k, v in meta.items() if k != "key"},
        **grown_bpb,
        "base_bits_per_byte": base_meta["held_out_bits_per_byte"],
        "base_training": {k: v for k, v in base_meta.items() if k not in ("key", "sha256")},
    }


def default_grown_target(cache_dir: Path) -> tuple[Transformer, list[bytes]]:
    """The ``big`` section's target at the benchmark's settings (cached under
    ``cache_dir``, trained and grown there when missing) and the held-out files, for
    scripts that study it (``tools/pass_cost.py``, ``tools/lookahead_sweep.py``)."""
    text, held = stdlib_corpus(max_bytes=2_000_000)
    data = torch.tensor(list(text), dtype=torch.long)
    target, _ = grown_target(BASE, BASE_TRAIN, GROW, GROWN_TRAIN, data, held, cache_dir)
    return target, held


def _grown_arch(base_arch: dict[str, Any], grow: dict[str, Any]) -> dict[str, Any]:
    r, d = grow["width"], grow["depth"]
    cfg = TransformerConfig(**base_arch)
    return {
        **base_arch,
        "dim": cfg.dim * r,
        "n_heads": cfg.n_heads * r,
        "n_kv_heads": cfg.kv_heads * r,
        "ffn_hidden": cfg.hidden_dim * r,
        "n_layers": cfg.n_layers * d,
    }


def prompts(held: list[bytes], n: int, length: int) -> list[torch.Tensor]:
    """``n`` prompts: the first ~``length`` bytes of held-out files, cut after a newline."""
    out = []
    for data in held:
        if len(data) < 4 * length or not data.isascii():
            continue
        cut = data.rfind(b"\n", 0, length) + 1
        if cut < length // 2:
            continue
        out.append(torch.tensor(list(data[:cut]), dtype=torch.long)[None, :])  # (1, T)
        if len(out) == n:
            break
    return out


def edit_prompts(held: list[bytes], n: int, length: int) -> list[torch.Tensor]:
    """``n`` edit requests (the output repeats the input): a held-out code snippet of about
    ``length`` bytes, a request to rename one of its identifiers, and the start of the
    edited copy (its first line, already renamed)."""
    import re

    out = []
    for data in held:
        if len(data) < 4 * length or not data.isascii():
            continue
        start = data.find(b"\n    def ")
        if start < 0:
            continue
        cut = data.rfind(b"\n", start, start + length) + 1
        snippet = data[start + 1 : cut]
        names = [m for m in re.findall(rb"\b[a-z_][a-z0-9_]{3,}\b", snippet) if m != b"self"]
        if cut <= start + length // 2 or not names:
            continue
        old = max(set(names), key=names.count)  # the most used identifier
        new = old + b"_v2"
        edited = snippet.replace(old, new)
        head = edited[: edited.find(b"\n") + 1]
        text = (
            b"# Before:\n" + snippet + b"\n# After renaming `" + old + b"` to `" + new
            + b"`:\n" + head
        )  # fmt: skip
        out.append(torch.tensor(list(text), dtype=torch.long)[None, :])  # (1, T)
        if len(out) == n:
            break
    return out


def distilled_draft(
    target: Transformer,
    arch: dict[str, Any],
    train: dict[str, Any],
    text: bytes,
    cache_dir: Path,
    fingerprint: str,
) -> tuple[Transformer, dict[str, Any]]:
    """A small draft trained on the target's own greedy continuations (sequence-level
    distillation: Kim & Rush 2016; DistillSpec, Zhou et al. 2024 arXiv:2310.08461):
    ``train['prompts']`` training-text windows of ``train['prompt_len']`` bytes, each
    continued by ``train['new']`` greedy target tokens (batched), then next-token training
    on ``[prompt, continuation]`` windows. Cached with the target's checksum in its key."""
    key = {"arch": arch, "train": train, "target_sha256": fingerprint}
    folder, cached = _cached_model("distilled-draft", key, cache_dir)
    if cached is not None:
        return cached
    gen = torch.Generator().manual_seed(1)  # the windows, then the training batches
    P = train["prompt_len"]
    t0 = time.perf_counter()
    # the target's outputs come from a prepacked copy (batched rows: oneDNN's blocked layout)
    teacher = prepack(copy.deepcopy(target))
    seqs = _target_continuations("distilled-draft", teacher, train, text, gen)  # (prompts, P + N)
    del teacher
    gen_s = time.perf_counter() - t0
    torch.manual_seed(0)
    draft = Transformer(TransformerConfig(**arch))
    opt = torch.optim.AdamW(draft.parameters(), lr=train["lr"])
    L = seqs.shape[1]
    T = min(train["seq_len"], L - 1)
    losses = []
    for step in range(train["steps"]):
        pick = torch.randint(0, seqs.shape[0], (train["batch_size"],), generator=gen)
        low = min(max(0, P - T // 2), L - T - 1)  # windows reach into the continuation
        off = torch.randint(low, L - T, (train["batch_size"],), generator=gen)
        batch = torch.stack([seqs[r, o : o + T + 1] for r, o in zip(pick.tolist(), off.tolist())])
        logits = draft(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, train["steps"] // 5) == 0:
            print(f"[distilled-draft] step {step + 1}: loss {losses[-1]:.3f}", flush=True)
    draft.eval()
    extra = {
        "target_outputs_s": gen_s,
        "train_wall_s": time.perf_counter() - t0 - gen_s,
        "loss_first": losses[0],
        "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
    }
    _save_with_meta(draft, folder, key, extra)
    print(f"[distilled-draft] {extra}", flush=True)
    return draft, {"key": key, **extra}


def interleaved(
    runs: dict[str, Callable[[torch.Tensor], Any]], xs: list[torch.Tensor], repeats: int = 1
) -> dict[str, dict[str, Any]]:
    """Each run on each prompt, the runs interleaved (prompt by prompt, ``repeats`` rounds)
    so that a load change on a shared machine hits them alike; wall and CPU seconds
    (``time.process_time``) summed over prompts, the median round kept. Every run is
    warmed up once on the longest prompt first (untimed: compiled steps are compiled for
    their cache size then, and eager kernels are ready)."""
    longest = max(xs, key=lambda x: x.shape[1])
    for fn in runs.values():
        fn(longest)
    rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    outputs: dict[str, list[Any]] = {k: [] for k in runs}
    for rep in range(repeats):
        acc = {k: [0.0, 0.0] for k in runs}
        for x in xs:
            for label, fn in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                out = fn(x)
                acc[label][0] += time.perf_counter() - t0
                acc[label][1] += time.process_time() - c0
                if rep == 0:
                    outputs[label].append(out)
        for label in runs:
            rounds[label].append((acc[label][0], acc[label][1]))
    result = {}
    for label in runs:
        walls = sorted(w for w, _ in rounds[label])
        cpus = sorted(c for _, c in rounds[label])
        result[label] = {
            "outputs": outputs[label],
            "seconds": walls[len(walls) // 2],
            "cpu_seconds": cpus[len(cpus) // 2],
        }
    return result


def time_split(
    fn: Callable[[torch.Tensor], Any], x: torch.Tensor, models: dict[str, torch.nn.Module]
) -> dict[str, float]:
    """Where one call's CPU time goes: inside each of ``models``' forwards (module hooks,
    ``time.process_time``) and the rest (the strategy's own Python and tensor work)."""
    spent = {name: 0.0 for name in models}
    started: dict[str, float] = {}
    handles = []
    for name, module in models.items():

        def pre(_m: Any, _a: Any, name: str = name) -> None:
            started[name] = time.process_time()

        def post(_m: Any, _a: Any, _o: Any, name: str = name) -> None:
            spent[name] += time.process_time() - started[name]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        c0 = time.process_time()
        fn(x)
        total = time.process_time() - c0
    finally:
        for h in handles:
            h.remove()
    return {
        "cpu_s": total,
        **{f"{k}_forward_s": v for k, v in spent.items()},
        "other_s": total - sum(spent.values()),
    }


def ours(
    target: Any, n_new: int, strategy: str, kwargs: dict[str, Any]
) -> Callable[[torch.Tensor], Any]:
    cfg = GenerationConfig(max_new_tokens=n_new, temperature=0)
    return lambda x: generate(target, x, cfg, strategy=strategy, **kwargs)


def hf_run(hf: Any, n_new: int, kwargs: dict[str, Any]) -> Callable[[torch.Tensor], Any]:
    common = dict(
        max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0,
        eos_token_id=None,
    )  # fmt: skip

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(x, **common, **kwargs)

    return run


def table_rows(
    timed: dict[str, dict[str, Any]], base: str, n_new: int
) -> dict[str, dict[str, Any]]:
    """Speed-ups over ``base`` (wall and CPU), passes per token, accepted length, equality
    with ``base``'s outputs and the distinct 8-gram fraction of the continuations."""
    ref = timed[base]
    pre = timed.get(PREFILL)  # the shared prefill (+ 1 token): subtracted for decode speed
    rows = {}
    for label, r in timed.items():
        if label == PREFILL:
            continue
        seqs = [o if isinstance(o, torch.Tensor) else o.sequences for o in r["outputs"]]
        stats = [o.stats for o in r["outputs"] if not isinstance(o, torch.Tensor)]
        tokens = sum(s.tokens_generated for s in stats) if stats else n_new * len(seqs)
        accepted = [a for s in stats for a in s.accepted_lengths]
        refs = [o if isinstance(o, torch.Tensor) else o.sequences for o in ref["outputs"]]
        rows[label] = {
            "tokens_per_s": tokens / r["seconds"],
            "speedup_wall": ref["seconds"] / r["seconds"],
            "speedup_cpu": ref["cpu_seconds"] / r["cpu_seconds"],
            "seconds": r["seconds"],
            "cpu_seconds": r["cpu_seconds"],
            **(
                {
                    "decode_speedup_wall": (ref["seconds"] - pre["seconds"])
                    / max(1e-9, r["seconds"] - pre["seconds"]),
                    "decode_speedup_cpu": (ref["cpu_seconds"] - pre["cpu_seconds"])
                    / max(1e-9, r["cpu_seconds"] - pre["cpu_seconds"]),
                }
                if pre is not None
                else {}
            ),
            "target_passes_per_token": (
                sum(s.target_forward_passes for s in stats) / tokens if stats else None
            ),
            "mean_accepted_length": sum(accepted) / len(accepted) if accepted else None,
            f"identical_to_{base.replace(' ', '_')}": all(
                torch.equal(a, b) for a, b in zip(seqs, refs, strict=True)
            ),
        }
    return rows


PREFILL = "prefill only (greedy, 1 new token)"
# what --only and --skip name (a run's label starts with its family; "greedy": the
# eager and unpacked greedy rows besides the compiled baseline)
FAMILIES = frozenset(
    {"greedy", "speculative", "tree-speculative", "prompt-lookup", "jacobi", "lookahead"}
    | {"medusa", "mtp", "first", "assd", "hf"}
)
LOOKAHEAD = "lookahead (defaults)"
BASE_DRAFT = "draft = the model the target was grown from"


def print_rows(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}\n{'run':34} {'tok/s':>7} {'x wall':>7} {'x cpu':>7} {'dec.wall':>8} "
          f"{'dec.cpu':>8} {'passes/tok':>10} {'acc.len':>8} {'=base':>6}")  # fmt: skip
    for label, r in rows.items():
        same = next(v for k, v in r.items() if k.startswith("identical_to_"))
        passes = r["target_passes_per_token"]
        acc = r["mean_accepted_length"]
        dw, dc = r.get("decode_speedup_wall", 0.0), r.get("decode_speedup_cpu", 0.0)
        print(f"{label:34} {r['tokens_per_s']:7.2f} {r['speedup_wall']:7.2f} {r['speedup_cpu']:7.2f} "
              f"{dw:8.2f} {dc:8.2f} "
              f"{'-' if passes is None else f'{passes:.3f}':>10} {'-' if acc is None else f'{acc:.2f}':>8} "
              f"{same!s:>6}")  # fmt: skip


def big_section(
    args: argparse.Namespace, data: torch.Tensor, text: bytes, held: list[bytes], cache_dir: Path
) -> dict[str, Any]:
    """The bandwidth-bound setting: the ~114M grown target, a draft distilled on its outputs,
    code completion (speculative, lookahead, Jacobi, HF assisted on the same weights) and
    the edit workload (prompt lookup, HF prompt lookup)."""
    quick = args.quick
    base_arch, base_train = BASE, BASE_TRAIN
    grow, grown_train = GROW, GROWN_TRAIN
    if quick:  # a 1-layer stand-in: checks the section runs, measures nothing
        base_arch = {**BASE, "dim": 64, "n_layers": 1, "n_heads": 1, "n_kv_heads": 1}
        base_train = {**BASE_TRAIN, "steps": 2, "batch_size": 2, "seq_len": 32}
        grow, grown_train = {**GROW, "width": 2, "depth": 2}, {**GROWN_TRAIN, "steps": 1}
    torch.set_num_threads(max(args.threads, args.train_threads))
    target, target_meta = grown_target(
        base_arch, base_train, grow, grown_train, data, held, cache_dir
    )
    from ar_core.checkpoint import tensors_digest

    fingerprint = tensors_digest(target.state_dict())
    draft_arch = dict(
        vocab_size=256, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=1024
    )
    draft_train = dict(
        prompts=8 if quick else 256, prompt_len=96, new=16 if quick else 128, gen_batch=64,
        steps=10 if quick else 1200, batch_size=16, seq_len=128, lr=3e-3,
    )  # fmt: skip
    draft, draft_meta = distilled_draft(
        target, draft_arch, draft_train, text, cache_dir, fingerprint
    )
    # an upper reference, not an independent draft: the small model the target was grown
    # from (the target is it, grown and barely trained: they agree far more than any
    # separately trained draft would; a 2 x 256 trained like it from another seed accepted
    # 2.35 tokens per k=5 step against 2.52 for the distilled draft)
    grown_from = trained("code-base", base_arch, base_train, data, cache_dir)
    torch.set_num_threads(args.threads)
    n_new = args.new_tokens or (16 if quick else 64)
    n_prompts = args.prompts or (1 if quick else 6)
    xs = prompts(held, n_prompts, 160)
    k = args.num_draft_tokens
    hf_target = hf_draft = hf_base = None
    if not args.no_hf:  # converted before prepack (which replaces the nn.Linear weights)
        from ar_core.interop.hf_llama import to_hf

        hf_target, hf_draft, hf_base = to_hf(target), to_hf(draft), to_hf(grown_from)
        for assistant, tokens in ((hf_draft, k), (hf_base, k + 1)):
            assistant.generation_config.num_assistant_tokens = tokens
            assistant.generation_config.num_assistant_tokens_schedule = "constant"
            assistant.generation_config.assistant_confidence_threshold = 0.0
    # ar's CPU decode layouts (ar.prepack): the baseline greedy gets them too
    unpacked = copy.deepcopy(target)
    # counted before prepack (its layouts are buffers, not parameters)
    sizes = {"target": target.num_parameters(), "draft": draft.num_parameters()}
    prepack(target)
    prepack(draft)
    prepack(grown_from)
    runs: dict[str, Callable[[torch.Tensor], Any]] = {
        "greedy": ours(target, n_new, "greedy", {"compile": True}),
        "greedy eager": ours(target, n_new, "greedy", {}),
        "greedy eager, unpacked weights": ours(unpacked, n_new, "greedy", {}),
        PREFILL: ours(target, 1, "greedy", {"compile": True}),
        f"speculative k={k}": ours(
            target, n_new, "speculative", dict(draft_model=draft, num_draft_tokens=k)
        ),
        "speculative adaptive": ours(
            target, n_new, "speculative", dict(draft_model=draft, num_draft_tokens=k, adaptive=True)
        ),
        # verification and draft steps as compiled graphs (ModelPass; the prepacked linears
        # stay oneDNN calls, inductor fuses the rest)
        f"speculative k={k}, compiled": ours(
            target, n_new, "speculative", dict(draft_model=draft, num_draft_tokens=k, compile=True)
        ),
        # the strategy's CPU defaults (W=1 N=2 G=1, context n-grams, one 4-token candidate:
        # a 6-slot block), eager and with each step's pass compiled (its mask table a graph
        # input)
        LOOKAHEAD: ours(target, n_new, "lookahead", {}),
        f"{LOOKAHEAD}, compiled": ours(target, n_new, "lookahead", {"compile": True}),
        # the earlier defaults: 9 slots, 14 with a long copy
        "lookahead W=1 N=3 G=2 m=3 copy 8": ours(
            target,
            n_new,
            "lookahead",
            dict(window=1, ngram=3, pool_size=2, candidate_len=3, copy_len=8),
        ),
        # compiled, in one oneDNN row tile: the prepacked linears cost about the same for 1-6
        # rows and ~1.4x for 7-9 (docs/packages/ar-decoding.md), so a 6-slot pass (k = 5, a
        # 6-slot lookahead block) verifies more for the price of k = 4
        f"speculative k={k + 1}, compiled": ours(
            target,
            n_new,
            "speculative",
            dict(draft_model=draft, num_draft_tokens=k + 1, compile=True),
        ),
        f"speculative k={k + 1}, compiled, {BASE_DRAFT}": ours(
            target,
            n_new,
            "speculative",
            dict(draft_model=grown_from, num_draft_tokens=k + 1, compile=True),
        ),
        # Fu et al.'s pool alone (no context n-grams), a GPU-style window
        "lookahead W=4 N=4 G=2 no context": ours(
            target, n_new, "lookahead", dict(window=4, ngram=4, pool_size=2, context=0)
        ),
    }
    if hf_target is not None:
        runs["HF greedy"] = hf_run(hf_target, n_new, {})
        runs[f"HF assisted k={k}"] = hf_run(hf_target, n_new, dict(assistant_model=hf_draft))
        runs[f"HF assisted k={k + 1}, {BASE_DRAFT}"] = hf_run(
            hf_target, n_new, dict(assistant_model=hf_base)
        )
    only = {f for f in args.only.split(",") if f}
    families: dict[str, Any] = {}
    if not only or only & {"medusa", "first", "mtp"}:
        torch.set_num_threads(max(args.threads, args.train_threads))
        family_runs, families = big_families(
            target, text, cache_dir, fingerprint, n_new, k, only, quick, grow["depth"], unpacked, xs
        )
        torch.set_num_threads(args.threads)
        runs.update(family_runs)
    if only:  # greedy (the baseline), the prefill-only run and the families asked for
        keep = {"greedy", PREFILL}
        runs = {
            label: fn
            for label, fn in runs.items()
            if label in keep or any(label.lower().startswith(f) for f in only)
        }
    timed = interleaved(runs, xs, args.repeats)
    completion = table_rows(timed, "greedy", n_new)
    greedy_new = [
        o.sequences[0, x.shape[1] :].tolist() for o, x in zip(timed["greedy"]["outputs"], xs)
    ]
    distinct = [distinct_ngrams(g) for g in greedy_new]
    quality = {
        "held_out_bits_per_byte": target_meta.get("held_out_bits_per_byte"),
        "greedy_distinct_8gram_fraction": distinct,
        # a loop or a run of one byte: speculation on it measures nothing useful
        "degenerate_prompts": sum(d < 0.5 for d in distinct),
        "degenerate": sum(distinct) / len(distinct) < 0.5,
        "greedy_sample": bytes(greedy_new[0][:96]).decode("ascii", errors="replace"),
    }
    print_rows("code completion, ~114M grown target", completion)
    parts: dict[str, torch.nn.Module] = {"target": target, "draft": draft}
    profile = {
        label: time_split(runs[label], xs[0], {**parts, **families.get("parts", {})})
        for label in (f"speculative k={k}", LOOKAHEAD, *families.get("profile", []))
        if label in runs
    }
    print(f"profile (one prompt, CPU s): {json.dumps(profile, indent=1)}", flush=True)
    print(f"target quality: {quality}", flush=True)
    report: dict[str, Any] = {
        "big_families": {k: v for k, v in families.items() if k not in ("parts", "profile")}
    }
    if only and "prompt-lookup" not in only:
        return {
            "big_completion": completion,
            "big_profile_one_prompt": profile,
            "big_target_quality": quality,
            "big_prompt_bytes": [int(x.shape[1]) for x in xs],
            "big_new_tokens": n_new,
            **report,
        }

    # the edit workload: prompt lookup (ours, HF's) against greedy
    es = edit_prompts(held, n_prompts, 200)
    e_runs: dict[str, Callable[[torch.Tensor], Any]] = {
        "greedy": ours(target, n_new, "greedy", {"compile": True}),
        "greedy eager": ours(target, n_new, "greedy", {}),
        PREFILL: ours(target, 1, "greedy", {"compile": True}),
        "prompt-lookup k=10": ours(target, n_new, "prompt-lookup", {}),
        "prompt-lookup k=10, compiled": ours(target, n_new, "prompt-lookup", {"compile": True}),
        "prompt-lookup k=5, compiled": ours(
            target, n_new, "prompt-lookup", {"compile": True, "num_draft_tokens": 5}
        ),
    }
    if hf_target is not None:
        e_runs["HF greedy"] = hf_run(hf_target, n_new, {})
        e_runs["HF prompt lookup 10"] = hf_run(hf_target, n_new, dict(prompt_lookup_num_tokens=10))
    e_timed = interleaved(e_runs, es, args.repeats)
    edit = table_rows(e_timed, "greedy", n_new)
    edit_new = [
        o.sequences[0, x.shape[1] :].tolist() for o, x in zip(e_timed["greedy"]["outputs"], es)
    ]
    print_rows("edit workload (rename an identifier), ~114M grown target", edit)
    profile["edit: prompt-lookup k=10"] = time_split(e_runs["prompt-lookup k=10"], es[0], parts)
    return {  # tables (mappings of records) at the top level: docs/gen_benchmarks.py shows them
        "big_completion": completion,
        "big_edit_workload": edit,
        "big_profile_one_prompt": profile,
        "big_target": {**target.cfg.model_dump(), "parameters": sizes["target"]},
        "big_target_training": target_meta
        | {"settings": {"base": base_train, "grow": grow, "grown": grown_train}},
        "big_target_quality": quality,
        "big_draft": {**draft_arch, "parameters": sizes["draft"]},
        "big_draft_training": {k: v for k, v in draft_meta.items() if k != "key"}
        | {"settings": draft_train},
        "big_prompts": len(xs),
        "big_prompt_bytes": [int(x.shape[1]) for x in xs],
        "big_new_tokens": n_new,
        "big_edit_prompt_bytes": [int(x.shape[1]) for x in es],
        "big_edit_greedy_sample": bytes(edit_new[0][:96]).decode("ascii", errors="replace"),
        **report,
    }


# the Medusa heads of the big target: trained on stored features of the target's own
# greedy continuations (the target runs once over them; the heads take many cheap steps)
BIG_MEDUSA: dict[str, Any] = dict(
    heads=4, prompts=64, prompt_len=96, new=128, gen_batch=32, steps=500, batch_size=8,
    window=64, lr=2e-3,
)  # fmt: skip


def _load_state(
    name: str, key: dict[str, Any], cache_dir: Path, module: torch.nn.Module
) -> tuple[Path, dict[str, Any] | None]:
    """The state file for ``key`` under ``cache_dir`` and, when its ``.json`` record names
    ``key`` and the state's checksum, the record (``module`` loaded from the file)."""
    from ar_core.checkpoint import tensors_digest

    path, hit = _cached_state(name, key, cache_dir)
    meta_path = path.with_suffix(".json")
    if hit and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        state = torch.load(path)
        if meta.get("key") == key and tensors_digest(state) == meta.get("sha256"):
            module.load_state_dict(state)
            print(f"[{name}] cached state (validated): {path}", flush=True)
            return path, {k: v for k, v in meta.items() if k not in ("key", "sha256")}
        print(f"[{name}] {path} does not validate: retraining", flush=True)
    return path, None


def _save_state(
    name: str, path: Path, key: dict[str, Any], module: torch.nn.Module, meta: dict[str, Any]
) -> None:
    """Write ``module``'s state to ``path`` and its record (``key``, the checksum,
    ``meta``) beside it, as :func:`_load_state` reads them."""
    import io

    from ar_core.atomic import atomic_write_bytes, atomic_write_text
    from ar_core.checkpoint import tensors_digest

    state = module.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())  # a crash leaves the old file or none
    record = {"key": key, "sha256": tensors_digest(state), **meta}
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2))
    print(f"[{name}] {meta}", flush=True)


def _target_continuations(
    name: str,
    target: torch.nn.Module,
    settings: dict[str, Any],
    text: bytes,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """``settings['prompts']`` windows of ``settings['prompt_len']`` training bytes (drawn
    with ``gen``, default seed 2), each continued by ``settings['new']`` greedy tokens of
    ``target`` (batches of ``settings['gen_batch']``): (prompts, P + N), the
    self-distillation data of the distilled draft, the Medusa heads and the MTP model."""
    gen = torch.Generator().manual_seed(2) if gen is None else gen
    data = torch.tensor(list(text), dtype=torch.long)
    P, N = settings["prompt_len"], settings["new"]
    starts = torch.randint(0, data.numel() - P, (settings["prompts"],), generator=gen).tolist()
    t0 = time.perf_counter()
    seqs = []
    for i in range(0, len(starts), settings["gen_batch"]):
        x = torch.stack([data[s : s + P] for s in starts[i : i + settings["gen_batch"]]])
        res = generate(target, x, GenerationConfig(max_new_tokens=N, temperature=0))
        seqs.append(res.sequences)  # (b, P + N)
        print(f"[{name}] target outputs {i + x.shape[0]}/{len(starts)} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip
    return torch.cat(seqs)


def big_medusa_heads(
    target: Transformer,
    settings: dict[str, Any],
    text: bytes,
    cache_dir: Path,
    fingerprint: str,
) -> tuple[Any, dict[str, Any]]:
    """Medusa heads for the (prepacked) big target, cached under a key of its checksum and
    ``settings``: ``settings['prompts']`` training-text windows continued by
    ``settings['new']`` greedy target tokens (what the heads will be asked to predict), the
    target's final hidden states of them computed once (:func:`ar_decoding.medusa.
    base_features`; the second half of each prompt and the continuation are kept), then
    ``settings['steps']`` steps on those features only
    (:func:`ar_decoding.medusa.train_medusa_heads_on_features`)."""
    from ar_decoding.medusa import MedusaHeads, base_features, train_medusa_heads_on_features

    key = {"target_sha256": fingerprint, **settings, "bytes": len(text)}
    heads = MedusaHeads.for_model(target, settings["heads"])
    path, cached = _load_state("big-medusa", key, cache_dir, heads)
    if cached is not None:
        return heads.eval(), cached
    P = settings["prompt_len"]
    t0 = time.perf_counter()
    tokens = _target_continuations("big-medusa", target, settings, text)
    hidden = base_features(target, tokens)[:, P // 2 :]  # (prompts, P/2 + N, C)
    tokens = tokens[:, P // 2 :]
    feats_s = time.perf_counter() - t0
    losses = train_medusa_heads_on_features(
        heads,
        hidden,
        tokens,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        window=min(settings["window"], tokens.shape[1]),
        lr=settings["lr"],
        progress=_progress("big-medusa", settings["steps"]),
    )
    meta = {
        "target_outputs_and_features_s": feats_s,
        "train_wall_s": time.perf_counter() - t0 - feats_s,
        "loss_first10": sum(losses[:10]) / len(losses[:10]),
        "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
    }
    _save_state("big-medusa", path, key, heads, meta)
    return heads, meta


# the MTP model of the big target: gated LoRA on the top blocks only, the masks entering
# there (lora_layers); trained on stored keys/values of the target's own greedy
# continuations (the Medusa heads' data: the target runs once over them, then each step
# runs the masks alone through the top blocks), anchors in the continuations
BIG_MTP: dict[str, Any] = dict(
    masks=4, rank=16, lora_layers=4, prompts=64, prompt_len=96, new=128, gen_batch=32,
    steps=1500, batch_size=8, anchors=8, lr=2e-3, consistency=1.0,
)  # fmt: skip
# the rows of the table: BIG_MTP with these changes (twice the blocks and the data)
BIG_MTP_VARIANTS: list[dict[str, Any]] = [{}, dict(lora_layers=8, prompts=128, steps=1200)]


def big_mtp(
    target: Transformer,
    unpacked: Transformer,
    settings: dict[str, Any],
    text: bytes,
    cache_dir: Path,
    fingerprint: str,
) -> tuple[Any, dict[str, Any]]:
    """An MTP model (:class:`ar_decoding.mtp.MTPModel` with ``lora_layers``) on the big
    target's float copy ``unpacked``, cached under a key of the target's checksum and
    ``settings`` (the trained parameters only: adapters, mask embeddings, sampler): the
    (prepacked) ``target`` continues the training windows (:func:`_target_continuations`),
    :func:`ar_decoding.mtp.mtp_features` stores what the frozen base computes on them
    (the second half of each prompt and the continuation), then
    :func:`ar_decoding.mtp.train_mtp_on_features` with anchors in the continuation. Returns
    the model (unpacked: prepack a copy to decode) and its record."""
    from ar_decoding.mtp import MTPModel, mtp_features, train_mtp_on_features

    key = {"target_sha256": fingerprint, **settings, "bytes": len(text)}
    torch.manual_seed(4)  # the adapters' and mask embeddings' initialisation
    model = MTPModel(
        copy.deepcopy(unpacked),
        settings["masks"],
        rank=settings["rank"],
        lora_layers=settings["lora_layers"],
    )
    trained = torch.nn.ParameterDict(
        {n.replace(".", "__"): p for n, p in model.named_parameters() if p.requires_grad}
    )  # the same Parameter objects: loading the cache fills the model
    path, cached = _load_state("big-mtp", key, cache_dir, trained)
    if cached is not None:
        return model.eval(), cached
    P = settings["prompt_len"]
    t0 = time.perf_counter()
    tokens = _target_continuations("big-mtp", target, settings, text)[:, P // 2 :]
    feats = mtp_features(model, tokens, batch_size=settings["gen_batch"])
    feats_s = time.perf_counter() - t0
    print(f"[big-mtp] target outputs and features in {feats_s:.0f}s", flush=True)
    history = train_mtp_on_features(
        model,
        feats,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        anchors=settings["anchors"],
        anchor_from=P - P // 2 - 2,  # the first mask predicts the first continuation token
        lr=settings["lr"],
        consistency=settings["consistency"],
        seed=5,
        progress=_progress("big-mtp", settings["steps"]),
    )

    def mean(part: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(sum(h[k] for h in part) / len(part), 4) for k in part[0]}

    meta = {
        "target_outputs_and_features_s": feats_s,
        "train_wall_s": time.perf_counter() - t0 - feats_s,
        "losses_first10": mean(history[:10]),
        "losses_last10": mean(history[-10:]),
    }
    _save_state("big-mtp", path, key, trained, meta)
    return model.eval(), meta


# FiRST's routers on the big target: bernoulli gates (each layer seen skipped), a start
# near 50/50 and a high rate so that a few backward passes through 114M parameters move
# the decisions (each step: forward + backward of batch_size x (prompt + scored) bytes)
BIG_ROUTERS: dict[str, Any] = dict(
    prompt=64, scored=32, steps=30, batch_size=4, lr=5e-2, keep_bias=1.0, skip_weight=0.5,
    gate="bernoulli",
)  # fmt: skip


def big_routers(
    unpacked: Transformer,
    settings: dict[str, Any],
    text: bytes,
    cache_dir: Path,
    fingerprint: str,
) -> tuple[Any, dict[str, Any]]:
    """FiRST routers for the big target (:func:`ar_decoding.first.train_routers` on its
    float copy ``unpacked``), cached under a key of the target's checksum and
    ``settings``; the record has the keep probabilities at the end of training."""
    from ar_decoding.first import FiRSTRouters, train_routers

    key = {"target_sha256": fingerprint, **settings, "bytes": len(text)}
    routers = FiRSTRouters.for_model(unpacked, keep_bias=settings["keep_bias"])
    path, cached = _load_state("big-routers", key, cache_dir, routers)
    if cached is not None:
        return routers.eval(), cached
    data = torch.tensor(list(text), dtype=torch.long)
    t0 = time.perf_counter()
    history = train_routers(
        unpacked,
        routers,
        batches(data, settings["prompt"] + settings["scored"]),
        prompt_len=settings["prompt"],
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        skip_weight=settings["skip_weight"],
        gate=settings["gate"],
        seed=3,
    )
    for p in unpacked.parameters():
        p.requires_grad_(True)
    meta = {
        "train_wall_s": time.perf_counter() - t0,
        "first": history[0],
        "last": history[-1],
        "bias_keep_probability": [
            round(float(torch.sigmoid(lin.bias.detach())[0]), 3) for lin in routers.linears()
        ],
    }
    _save_state("big-routers", path, key, routers, meta)
    return routers.eval(), meta


def big_families(
    target: Transformer,
    text: bytes,
    cache_dir: Path,
    fingerprint: str,
    n_new: int,
    k: int,
    only: set[str],
    quick: bool,
    depth: int,
    unpacked: Transformer | None = None,
    xs: list[torch.Tensor] | None = None,
) -> tuple[dict[str, Callable[[torch.Tensor], Any]], dict[str, Any]]:
    """Medusa, MTP and FiRST self-speculative decoding on the prepacked big ``target``: their
    runs (to be interleaved with greedy) and a record of what was built. Medusa: heads from
    :func:`big_medusa_heads` (prepacked for decoding), a tree and a chain. FiRST: the
    skipping target as its own draft, with the blocks that growth added (each started as
    an identity block, :func:`grow_transformer`: a property of how this target was built,
    not of trained models in general) or every other block skipped. ``depth``: the
    growth's depth factor (base block i became blocks ``i * depth .. i * depth + depth - 1``,
    the first of them the base block itself). With ``unpacked`` (the target's float copy:
    router training backpropagates through it), FiRST's routers are trained
    (:func:`big_routers`) and choose each prompt's set. MTP (with ``unpacked``: its
    adapters wrap the float linears): :func:`big_mtp`'s model, prepacked, linear and
    quadratic decoding with all its masks and with 2 of them as drafts, for each of
    ``BIG_MTP_VARIANTS``."""
    import copy

    runs: dict[str, Callable[[torch.Tensor], Any]] = {}
    record: dict[str, Any] = {"parts": {}, "profile": []}
    if not only or "medusa" in only:
        settings = BIG_MEDUSA
        if quick:
            settings = {**BIG_MEDUSA, "prompts": 4, "new": 16, "gen_batch": 4, "steps": 5}
        heads, meta = big_medusa_heads(target, settings, text, cache_dir, fingerprint)
        packed_heads = prepack(copy.deepcopy(heads))
        n_heads = settings["heads"]
        # a verify pass over M tree nodes costs more the larger M (22, 9, 5 nodes here)
        trees = (("tree", (3, 2, 1, 1)), ("tree", (2, 1, 1, 1)), ("chain", (1, 1, 1, 1)))
        for name, expansion in trees:
            label = f"medusa {n_heads} heads {name} {','.join(map(str, expansion))}"
            runs[label] = ours(
                target, n_new, "medusa", dict(heads=packed_heads, expansion=expansion)
            )
        record["medusa"] = {"settings": settings, **meta}
        record["parts"]["medusa_heads"] = packed_heads
        record["profile"].append(f"medusa {n_heads} heads tree 3,2,1,1")
    if (not only or "mtp" in only) and unpacked is not None:
        record["mtp"] = {}
        for variant in BIG_MTP_VARIANTS:
            settings = {**BIG_MTP, **variant}
            if quick:
                settings = {**settings, "prompts": 4, "new": 16, "gen_batch": 4, "steps": 5}
                settings["lora_layers"] = min(settings["lora_layers"], target.cfg.n_layers)
            name = f"mtp top {settings['lora_layers']} blocks"
            if name in record["mtp"]:  # --quick: the stand-in's 2 blocks for both
                continue
            model, meta = big_mtp(target, unpacked, settings, text, cache_dir, fingerprint)
            packed_mtp = prepack(copy.deepcopy(model))  # the target's decode layouts
            # all the masks as drafts, and 2 of them (a step of fewer slots)
            for drafts in sorted({settings["masks"], 2}, reverse=True):
                for quadratic in (False, True):
                    label = f"{name} k={drafts} {'quadratic' if quadratic else 'linear'}"
                    runs[label] = ours(
                        packed_mtp,
                        n_new,
                        "mtp",
                        dict(quadratic=quadratic, num_draft_tokens=drafts),
                    )
            record["mtp"][name] = {"settings": settings, **meta}
    if not only or "first" in only:
        L = target.cfg.n_layers
        grown = tuple(i for i in range(L) if i % depth != 0)  # the copies growth added
        alternate = tuple(range(1, L, 2))
        sets = {"grown": grown, "odd": alternate}
        for name, skip in sets.items():
            label = f"first self-spec skip {len(skip)} {name} k={k}"
            runs[label] = ours(
                target, n_new, "first",
                dict(skip_layers=skip, speculative_draft=True, num_draft_tokens=k),
            )  # fmt: skip
        record["first"] = {
            "skip_sets": {n: list(v) for n, v in sets.items()},
            # the draft is the target with blocks skipped: its passes run inside the
            # target's forward, so the profile's target time holds both
            "profile_note": "target_forward_s includes the draft's (skipping) passes",
        }
        record["profile"].append(f"first self-spec skip {len(grown)} grown k={k}")
        if unpacked is not None and xs:  # FiRST's routers choose the set per prompt
            settings = BIG_ROUTERS if not quick else {**BIG_ROUTERS, "steps": 2}
            routers, meta = big_routers(unpacked, settings, text, cache_dir, fingerprint)
            runs[f"first self-spec routers k={k}"] = ours(
                target, n_new, "first",
                dict(routers=routers, speculative_draft=True, num_draft_tokens=k),
            )  # fmt: skip
            from ar_decoding.first import choose_skip

            chosen = [  # each timed prompt's skip set (what the strategy decides at prefill)
                [
                    int(i)
                    for i in torch.nonzero(
                        choose_skip(target, routers, x, torch.tensor([x.shape[1]]))[0]
                    )
                ]
                for x in xs
            ]
            record["first"]["routers"] = {"settings": settings, **meta, "chosen_skip": chosen}
            print(f"[big-routers] skip sets chosen on the timed prompts: {chosen}", flush=True)
    return runs, record


# -- the parallel-generation families: extra parts trained on the frozen target -------------


def _fingerprint(model: Transformer) -> str:
    """Which weights: parts trained on one target are never reused on another."""
    return hashlib.sha256(model.output.weight.detach().float().numpy().tobytes()).hexdigest()[:12]


def _cached_state(name: str, key: dict[str, Any], cache_dir: Path) -> tuple[Path, bool]:
    blob = json.dumps(key, sort_keys=True)
    path = cache_dir / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.pt"
    return path, path.exists()


def _progress(name: str, steps: int) -> Callable[[int, Any], None]:
    every = max(1, steps // 5)

    def report(step: int, loss: Any) -> None:
        if (step + 1) % every == 0:
            shown = loss if isinstance(loss, float) else {k: round(v, 3) for k, v in loss.items()}
            print(f"[{name}] step {step + 1}/{steps}: {shown}", flush=True)

    return report


def medusa_heads(
    target: Transformer, settings: dict[str, Any], data: torch.Tensor, cache_dir: Path
) -> Any:
    from ar_decoding.medusa import MedusaHeads, train_medusa_heads

    path, hit = _cached_state(
        "medusa", {"target": _fingerprint(target), **settings, "bytes": data.numel()}, cache_dir
    )
    heads = MedusaHeads.for_model(target, settings["heads"])
    if hit:
        heads.load_state_dict(torch.load(path))
        print(f"[medusa] cached heads: {path}", flush=True)
        return heads.eval()
    t0 = time.perf_counter()
    heads, losses = train_medusa_heads(
        target,
        batches(data, settings["seq_len"]),
        heads=heads,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        progress=_progress("medusa", settings["steps"]),
    )
    print(f"[medusa] trained in {time.perf_counter() - t0:.0f}s, loss {losses[0]:.2f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.2f}", flush=True)  # fmt: skip
    torch.save(heads.state_dict(), path)
    return heads


def mtp_model(
    target: Transformer, settings: dict[str, Any], data: torch.Tensor, cache_dir: Path
) -> Any:
    import copy

    from ar_decoding.mtp import MTPModel, train_mtp

    path, hit = _cached_state(
        "mtp", {"target": _fingerprint(target), **settings, "bytes": data.numel()}, cache_dir
    )
    model = MTPModel(copy.deepcopy(target), settings["masks"], rank=settings["rank"])
    if hit:
        model.load_state_dict(torch.load(path))
        print(f"[mtp] cached model: {path}", flush=True)
        return model.eval()
    t0 = time.perf_counter()
    history = train_mtp(
        model,
        batches(data, settings["seq_len"]),
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        anchors=settings["anchors"],
        lr=settings["lr"],
        progress=_progress("mtp", settings["steps"]),
    )
    print(f"[mtp] trained in {time.perf_counter() - t0:.0f}s: first {history[0]}, last "
          f"{history[-1]}", flush=True)  # fmt: skip
    torch.save(model.state_dict(), path)
    return model.eval()


def two_stream_model(
    arch: dict[str, Any], settings: dict[str, Any], data: torch.Tensor, cache_dir: Path
) -> TwoStreamStepModel:
    """An any-subset model: random order per row, a random number of given slots (one
    step) then one step per slot, the query-stream cross-entropy."""
    key = {"arch": arch, **settings, "bytes": data.numel()}
    folder = (
        cache_dir
        / f"two-stream-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}"
    )
    if (folder / "config.json").exists():
        print(f"[two-stream] cached weights: {folder}", flush=True)
        return TwoStreamStepModel.from_pretrained(folder).eval()
    torch.manual_seed(0)
    n = settings["seq_len"]
    model = TwoStreamStepModel(Transformer(TransformerConfig(**arch)), 256)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"])
    gen = torch.Generator().manual_seed(0)
    sample = batches(data, n - 1)
    t0 = time.perf_counter()
    losses = []
    for step in range(settings["steps"]):
        x = sample(gen, settings["batch_size"])  # (B, n)
        B = x.shape[0]
        order = torch.rand(B, n, generator=gen).argsort(-1)
        if step % 2 == 0:  # half the batches: left to right after a prefix (the bench's use)
            order = torch.arange(n).expand(B, n)
        g = int(torch.randint(1, n // 2, (), generator=gen))
        slot_steps = torch.cat([torch.zeros(g, dtype=torch.long), torch.arange(1, n - g + 1)])
        loss = model.loss(x, order, slot_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, settings["steps"] // 5) == 0:
            print(
                f"[two-stream] step {step + 1}: loss {sum(losses[-20:]) / len(losses[-20:]):.2f}",
                flush=True,
            )
    print(f"[two-stream] trained in {time.perf_counter() - t0:.0f}s", flush=True)
    model.eval()
    model.save_pretrained(folder)
    return model


def run_assd(
    model: TwoStreamStepModel, held: list[bytes], settings: dict[str, Any], ks: list[int]
) -> dict[str, dict[str, Any]]:
    """ASSD with k drafts against k = 1 (one position per call: the model's own greedy)."""
    from ar_decoding.assd import assd_fill

    n_prompt, n_new = settings["prompt"], settings["new"]
    xs = [
        x[:, :n_prompt]
        for x in prompts(held, settings["prompts"], 4 * n_prompt)
        if x.shape[1] >= n_prompt
    ]
    runs: dict[int, dict[str, Any]] = {}
    for k in [1, *ks]:
        outs, calls, accepted, seconds = [], 0, [], 0.0
        for x in xs:
            tokens = torch.cat([x, torch.full((1, n_new), -1)], 1)
            t0 = time.perf_counter()
            res = assd_fill(model, tokens, k=k, temperature=0.0)
            seconds += time.perf_counter() - t0
            outs.append(res.tokens)
            calls += int(res.calls.sum())
            accepted += res.accepted_lengths
        runs[k] = {"outputs": outs, "seconds": seconds, "calls": calls, "accepted": accepted}
    base = runs[1]
    rows = {}
    for k, r in runs.items():
        rows["assd k=1 (sequential)" if k == 1 else f"assd k={k}"] = {
            "network_calls_per_token": r["calls"] / (n_new * len(xs)),
            "mean_accepted_length": sum(r["accepted"]) / len(r["accepted"]),
            "speedup_vs_sequential": base["seconds"] / r["seconds"],
            "identical_to_sequential_greedy": all(
                torch.equal(a, b) for a, b in zip(r["outputs"], base["outputs"], strict=True)
            ),
        }
    return rows


# -- measuring ------------------------------------------------------------------------------


def run_ours(
    target: Any, xs: list[torch.Tensor], n_new: int, strategy: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    kwargs = dict(kwargs)
    target = kwargs.pop("model", target)  # strategies on a wrapped model (mtp)
    cfg = GenerationConfig(max_new_tokens=n_new, temperature=0)
    generate(target, xs[0], cfg, strategy=strategy, **kwargs)  # warm-up
    outs, passes, tokens, accepted, seconds, cpu = [], 0, 0, [], 0.0, 0.0
    for x in xs:
        t0, c0 = time.perf_counter(), time.process_time()
        res = generate(target, x, cfg, strategy=strategy, **kwargs)
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0
        outs.append(res.sequences)
        passes += res.stats.target_forward_passes
        tokens += res.stats.tokens_generated
        accepted += res.stats.accepted_lengths
    return {
        "outputs": outs,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens_per_s": tokens / seconds,
        "target_passes_per_token": passes / tokens,
        "mean_accepted_length": sum(accepted) / max(1, len(accepted)),
    }


def run_hf(hf: Any, xs: list[torch.Tensor], n_new: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    common = dict(
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    with torch.no_grad():
        hf.generate(xs[0], **common, **kwargs)  # warm-up
        outs, seconds = [], 0.0
        for x in xs:
            t0 = time.perf_counter()
            outs.append(hf.generate(x, **common, **kwargs))
            seconds += time.perf_counter() - t0
    return {"outputs": outs, "seconds": seconds, "tokens_per_s": n_new * len(xs) / seconds}


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny training, few prompts")
    parser.add_argument("--out", default=".bench/decoding.json")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache/ar/bench"))
    parser.add_argument("--num-draft-tokens", type=int, default=4)
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated families to run besides greedy (speculative, lookahead, medusa, "
        "mtp, first, assd; in the big section also prompt-lookup = the edit workload, hf); "
        "default all",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated families to leave out (instead of --only)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads while timing (1: OpenMP on a shared 2-core box is erratic)",
    )
    parser.add_argument("--prompts", type=int, default=None, help="held-out prompts")
    parser.add_argument("--new-tokens", type=int, default=None, help="new bytes")
    parser.add_argument(
        "--sections",
        default="big,small",
        help="big: the ~114M grown target, its distilled draft, code completion and the edit "
        "workload; small: its 2 x 256 base and the parallel-generation families",
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument("--train-threads", type=int, default=2, help="torch threads to train")
    args = parser.parse_args(argv)
    skip = {f for f in args.skip.split(",") if f}
    if skip:  # --skip: every family but these
        if args.only or not skip <= FAMILIES:
            raise SystemExit(
                f"--skip: give families of {sorted(FAMILIES)} (unknown: "
                f"{sorted(skip - FAMILIES)}), and not together with --only"
            )
        args.only = ",".join(sorted(FAMILIES - skip))
    sections = {x for x in args.sections.split(",") if x}
    if not sections <= {"big", "small"}:
        raise SystemExit(
            f"--sections: unknown {sorted(sections - {'big', 'small'})}; use big,small"
        )
    text, held = stdlib_corpus(max_bytes=2_000_000)
    data = torch.tensor(list(text), dtype=torch.long)
    cache_dir = Path(args.cache_dir).expanduser()
    report: dict[str, Any] = {
        "machine": f"CPU, {args.threads} torch threads while timing, torch {torch.__version__}",
        "load_average_start": list(__import__("os").getloadavg()),
    }
    if "big" in sections:
        report.update(big_section(args, data, text, held, cache_dir))
    if "small" in sections:
        report.update(small_section(args, data, held, cache_dir))
    report["load_average_end"] = list(__import__("os").getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report


def small_section(
    args: argparse.Namespace, data: torch.Tensor, held: list[bytes], cache_dir: Path
) -> dict[str, Any]:
    """The 2 x 256 code-base target (its cached weights validated), every strategy and the
    parallel-generation families against greedy; HF on the same weights."""
    quick = args.quick
    torch.set_num_threads(args.threads)  # training too: OpenMP spin-waits on a shared box
    base_arch, target_train = BASE, BASE_TRAIN
    if quick:
        base_arch = {**BASE, "dim": 64, "n_layers": 2, "n_heads": 1, "n_kv_heads": 1}
        target_train = {**BASE_TRAIN, "steps": 2, "batch_size": 2, "seq_len": 32}
    draft_train = dict(steps=20 if quick else 400, batch_size=8, seq_len=128, lr=2e-3)
    torch.set_num_threads(max(args.threads, args.train_threads))
    target, target_meta = code_base(base_arch, target_train, data, held, cache_dir)
    torch.set_num_threads(args.threads)
    draft = trained("draft", DRAFT, draft_train, data, cache_dir)
    xs = prompts(held, args.prompts or (2 if quick else 6), 384)
    n_new = args.new_tokens or (32 if quick else 128)
    torch.set_num_threads(args.threads)
    k = args.num_draft_tokens

    strategies: dict[str, tuple[str, dict[str, Any]]] = {
        "greedy": ("greedy", {}),
        "greedy compiled": ("greedy", {"compile": True}),
        f"speculative k={k}": ("speculative", dict(draft_model=draft, num_draft_tokens=k)),
        "speculative adaptive": (
            "speculative",
            dict(draft_model=draft, num_draft_tokens=k, adaptive=True),
        ),
        "tree-speculative 2x4": (
            "tree-speculative",
            dict(draft_model=draft, expansion=(2, 1, 1, 1)),
        ),
        "prompt-lookup": ("prompt-lookup", {}),
    }
    for name in ("jacobi", "lookahead"):  # the other engineer's strategies, when present
        if name in registry.strategies.names():
            strategies[name] = (name, {})
    only = {f for f in args.only.split(",") if f}

    def wanted(family: str) -> bool:
        return not only or family in only

    # the extra parts' training is sized for a shared 2-core CPU (a few minutes each)
    medusa_train = dict(heads=4, steps=20 if quick else 80, batch_size=4, seq_len=64, lr=2e-3)
    mtp_train = dict(
        masks=8, rank=16, steps=10 if quick else 60, batch_size=4, seq_len=64, anchors=8, lr=2e-3
    )
    if wanted("medusa"):
        heads = medusa_heads(target, medusa_train, data, cache_dir)
        strategies["medusa 4 heads (3,2,1,1)"] = ("medusa", dict(heads=heads))
    if wanted("mtp"):
        mtp = mtp_model(target, mtp_train, data, cache_dir)
        for kk in (4, 8):
            for quadratic in (False, True):
                label = f"mtp k={kk} {'quadratic' if quadratic else 'linear'}"
                strategies[label] = (
                    "mtp",
                    dict(model=mtp, num_draft_tokens=kk, quadratic=quadratic),
                )
    if wanted("first"):
        L = target.cfg.n_layers  # skip the middle half, or every other layer
        middle = tuple(range(L // 4, L // 4 + L // 2))
        alternate = tuple(range(1, L, 2))
        for skip in (middle, alternate):
            strategies[f"first self-spec skip {skip}"] = (
                "first",
                dict(skip_layers=skip, speculative_draft=True, num_draft_tokens=k),
            )
        strategies[f"first skip {alternate} (lossy)"] = ("first", dict(skip_layers=alternate))
    if only:
        strategies = {
            label: v
            for label, v in strategies.items()
            if label.startswith("greedy") or any(label.startswith(f) for f in only)
        }

    results: dict[str, dict[str, Any]] = {}
    for label, (strategy, kwargs) in strategies.items():
        try:
            results[label] = run_ours(target, xs, n_new, strategy, kwargs)
        except Exception as exc:  # a strategy of another package that cannot run here
            print(f"[{label}] skipped: {type(exc).__name__}: {exc}", flush=True)
    base = results["greedy"]
    fastest = results.get("greedy compiled", base)
    rows: dict[str, dict[str, Any]] = {}
    for label, r in results.items():
        rows[label] = {
            "tokens_per_s": r["tokens_per_s"],
            "speedup_vs_greedy": base["seconds"] / r["seconds"],
            # against the compiled greedy step (overhead-bound models gain most from it)
            "speedup_vs_compiled_greedy": fastest["seconds"] / r["seconds"],
            "speedup_cpu_vs_greedy": base["cpu_seconds"] / r["cpu_seconds"],
            "speedup_cpu_vs_compiled_greedy": fastest["cpu_seconds"] / r["cpu_seconds"],
            "target_passes_per_token": r["target_passes_per_token"],
            "mean_accepted_length": r["mean_accepted_length"],
            "identical_to_greedy": all(
                torch.equal(a, b) for a, b in zip(r["outputs"], base["outputs"], strict=True)
            ),
        }

    assd_rows: dict[str, dict[str, Any]] = {}
    two_stream_arch = dict(
        vocab_size=258, dim=128, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=256
    )
    assd_train = dict(steps=20 if quick else 200, batch_size=8, seq_len=64, lr=2e-3)
    assd_bench = dict(prompts=len(xs), prompt=32, new=32)
    if wanted("assd"):
        two = two_stream_model(two_stream_arch, assd_train, data, cache_dir)
        assd_rows = run_assd(two, held, assd_bench, [4, 8])

    hf_rows: dict[str, dict[str, Any]] = {}
    if not args.no_hf and (not only or "speculative" in only):
        from ar_core.interop.hf_llama import to_hf

        hf_target, hf_draft = to_hf(target), to_hf(draft)
        hf_draft.generation_config.num_assistant_tokens = k
        hf_draft.generation_config.num_assistant_tokens_schedule = "constant"
        hf_draft.generation_config.assistant_confidence_threshold = 0.0
        hf_runs: dict[str, tuple[str, dict[str, Any]]] = {
            "greedy": ("greedy", {}),
            f"speculative k={k}": ("assisted", dict(assistant_model=hf_draft)),
            "prompt-lookup": ("prompt-lookup", dict(prompt_lookup_num_tokens=10)),
        }
        for label, (hf_name, kwargs) in hf_runs.items():
            r = run_hf(hf_target, xs, n_new, kwargs)
            ours = results[label]
            hf_rows[label] = {
                "hf_mode": hf_name,
                "hf_tokens_per_s": r["tokens_per_s"],
                "ours_over_hf": r["seconds"] / ours["seconds"],
                "hf_equals_ours": all(
                    torch.equal(a, b) for a, b in zip(r["outputs"], ours["outputs"], strict=True)
                ),
            }

    report = {
        "target": {**base_arch, "parameters": target.num_parameters()},
        "target_held_out_bits_per_byte": target_meta["held_out_bits_per_byte"],
        "draft": DRAFT,
        "prompts": len(xs),
        "prompt_bytes": [int(x.shape[1]) for x in xs],
        "new_tokens": n_new,
        "strategies": rows,
        "hugging_face": hf_rows,
        "training": {
            "target": target_train,
            "draft": draft_train,
            "medusa": medusa_train,
            "mtp": mtp_train,
            "two_stream": assd_train,
        },
        "assd": assd_rows,
        "assd_model": two_stream_arch,
        "assd_setting": assd_bench,
    }
    print(
        f"\n{'strategy':32} {'tok/s':>7} {'speedup':>8} {'passes/tok':>10} {'acc.len':>8} "
        f"{'=greedy':>8} {'HF tok/s':>9} {'ours/HF':>8} {'HF=ours':>8}"
    )
    for label, r in rows.items():
        h = hf_rows.get(label)
        hf_cols = (
            f"{h['hf_tokens_per_s']:9.1f} {h['ours_over_hf']:8.2f} {h['hf_equals_ours']!s:>8}"
            if h
            else f"{'-':>9} {'-':>8} {'-':>8}"
        )
        print(
            f"{label:32} {r['tokens_per_s']:7.1f} {r['speedup_vs_greedy']:8.2f} "
            f"{r['target_passes_per_token']:10.3f} {r['mean_accepted_length']:8.2f} "
            f"{r['identical_to_greedy']!s:>8} {hf_cols}"
        )
    if assd_rows:
        print(
            f"\n{'ASSD (own two-stream model)':28} {'calls/tok':>9} {'acc.len':>8} {'speedup':>8} {'=seq':>6}"
        )
        for label, r in assd_rows.items():
            print(
                f"{label:28} {r['network_calls_per_token']:9.3f} {r['mean_accepted_length']:8.2f} "
                f"{r['speedup_vs_sequential']:8.2f} {r['identical_to_sequential_greedy']!s:>6}"
            )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
