"""Recipe ``diffusion-text``: MDLM, BD3-LM and an AR model of the same size on code bytes.

The standard library's ``*.py`` sources (the corpus of ar-text's ``text-code``, read by
:mod:`ar_diffusion.bytes_lm`) train four ``ar_core.Transformer`` models of one size for
the same number of updates with ar-core's Trainer: ``ar`` (next byte), ``mdlm`` (masked
diffusion over the whole window) and ``bd3-L`` for each block size (block diffusion).
Then:

* held-out bits per byte (AR: exact NLL; diffusion: the NELBO, an upper bound);
* samples after held-out prompts by each sampler: AR ``sample``, ``mdlm``,
  ``block-diffusion`` (each BD3 model), ``freecache`` and ``ar-guided-diffusion`` (the
  MDLM model, the AR model as guide), with network calls per token, tokens per second
  and the generative perplexity (the AR model's perplexity of the sampled bytes given
  the prompt; lower is not better by itself: repetitive text scores low);
* training curves; the models are saved, so ``ar sample DIR`` samples again.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pydantic
import torch

from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_core.trainer import TrainConfig, Trainer
from ar_diffusion.bytes_lm import MASK, ar_nll, held_out_bpb, loss_fn, stdlib_bytes, windows


class DiffusionTextConfig(pydantic.BaseModel):
    """Settings of ``diffusion-text``; the defaults train for a few minutes on 2 cores."""

    model_config = pydantic.ConfigDict(extra="forbid")

    max_bytes: int = pydantic.Field(default=2_000_000, ge=10_000)  # per side (train, held out)
    seq_len: int = pydantic.Field(default=128, ge=16)  # every block size must divide it
    block_sizes: list[int] = pydantic.Field(default_factory=lambda: [4, 16], min_length=1)
    steps: int = pydantic.Field(default=400, ge=1)  # updates per model, equal for all four
    batch_size: int = pydantic.Field(default=16, ge=1)
    lr: float = pydantic.Field(default=3e-3, gt=0)  # high, fine for 2 layers with warm-up
    dim: int = pydantic.Field(default=96, ge=8)
    n_layers: int = pydantic.Field(default=2, ge=1)
    n_heads: int = pydantic.Field(default=4, ge=1)
    eval_windows: int = pydantic.Field(default=64, ge=1)  # held-out windows of seq_len
    eval_samples: int = pydantic.Field(default=8, ge=1)  # NELBO time draws per window
    n_samples: int = pydantic.Field(default=4, ge=1)  # held-out prompts
    prompt_bytes: int = pydantic.Field(default=32, ge=1)
    gen_tokens: int = pydantic.Field(default=64, ge=1)  # every block size must divide it
    freecache_block: int = pydantic.Field(default=16, ge=1)  # FreeCache / AR-guided blocks
    # CtrlDiff block-size policy on the smallest-block BD3 model (0 updates: skipped);
    # reward = -(AR NLL per new byte, nats) - policy_lam * (network calls per new byte)
    policy_updates: int = pydantic.Field(default=40, ge=0)
    policy_sizes: list[int] = pydantic.Field(default_factory=lambda: [2, 4, 8, 16], min_length=1)
    policy_lam: float = pydantic.Field(default=0.5, ge=0)
    temperature: float = pydantic.Field(default=1.0, ge=0)  # 0 = argmax tokens
    seed: int = 0
    progress_bar: bool = True
    # models this small run fastest on one thread (more threads only contend)
    threads: int = pydantic.Field(default=1, ge=0)

    @pydantic.model_validator(mode="after")
    def _check(self) -> DiffusionTextConfig:
        for what, n in (("seq_len", self.seq_len), ("gen_tokens", self.gen_tokens)):
            bad = [L for L in self.block_sizes if L < 1 or n % L]
            if bad:
                raise ValueError(f"block_sizes {bad} do not divide {what}={n}")
        if self.gen_tokens % self.freecache_block:
            raise ValueError(
                f"freecache_block={self.freecache_block} does not divide "
                f"gen_tokens={self.gen_tokens}"
            )
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide dim={self.dim}")
        return self

    def runs(self) -> list[str]:
        return ["ar", "mdlm", *(f"bd3-{L}" for L in self.block_sizes)]

    def arch(self) -> TransformerConfig:
        # max_seq_len: BD3 training runs 2 seq_len positions; sampling prompt + gen_tokens
        longest = max(2 * self.seq_len, self.prompt_bytes + self.gen_tokens)
        return TransformerConfig(
            vocab_size=MASK + 1,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            max_seq_len=longest,
        )


def load_models(out_dir: Path, runs: list[str]) -> dict[str, Transformer]:
    return {run: Transformer.from_pretrained(out_dir / run).eval() for run in runs}


def prompts_from(held: torch.Tensor, n: int, length: int, seed: int) -> torch.Tensor:
    """``n`` held-out prompts of ``length`` bytes, each starting a line: (n, length)."""
    g = torch.Generator().manual_seed(seed)
    newlines = (held[: held.numel() - length - 1] == 10).nonzero()[:, 0] + 1
    picks = newlines[torch.randint(0, newlines.numel(), (n,), generator=g)]
    return torch.stack([held[s : s + length] for s in picks.tolist()])


def methods(config: DiffusionTextConfig) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(row name, model run, strategy, keyword arguments) of each sampler compared."""
    rows: list[tuple[str, str, str, dict[str, Any]]] = [("ar sample", "ar", "sample", {})]
    rows.append(("mdlm", "mdlm", "mdlm", {"steps": config.gen_tokens}))
    for L in config.block_sizes:
        rows.append((f"bd3-{L}", f"bd3-{L}", "block-diffusion", {"block_size": L}))
    fc = config.freecache_block
    rows.append((f"mdlm freecache (block {fc})", "mdlm", "freecache", {"block_size": fc}))
    rows.append((f"mdlm ar-guided (block {fc})", "mdlm", "ar-guided-diffusion", {"block_size": fc}))
    return rows


def ar_quality(ar: Transformer) -> Any:
    """``quality(prompts (b, P), new (b, N)) -> (b,)``: minus the AR model's NLL per new
    byte given the prompt, in nats."""

    def quality(prompts: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        full = torch.cat([prompts, new], 1)
        return -(ar_nll(ar, full) - ar_nll(ar, prompts)) / new.shape[1]

    return quality


@torch.no_grad()
def policy_table(
    models: dict[str, Transformer],
    train: torch.Tensor,
    prompts: torch.Tensor,
    config: DiffusionTextConfig,
    progress: Progress,
) -> tuple[Table, dict[str, float], list[tuple[float, float]]]:
    """Train a :class:`~ar_diffusion.ctrldiff.BlockSizePolicy` on the smallest-block BD3
    model and compare it with every fixed size on held-out ``prompts``."""
    from ar_diffusion.ctrldiff import BlockSizePolicy, sample_with_policy, train_block_policy

    run = f"bd3-{min(config.block_sizes)}"
    model, quality = models[run], ar_quality(models["ar"])
    N, lam = config.gen_tokens, config.policy_lam
    policy = BlockSizePolicy(model.cfg.dim, config.policy_sizes)
    train_prompts = prompts_from(train, 64, config.prompt_bytes, config.seed)
    progress(f"training the block-size policy on {run}: {config.policy_updates} updates")
    with torch.enable_grad():
        history = train_block_policy(
            model,
            policy,
            train_prompts,
            N,
            quality,
            lam=lam,
            updates=config.policy_updates,
            seed=config.seed,
            temperature=config.temperature,
        )
    gen_cfg = GenerationConfig(max_new_tokens=N, temperature=config.temperature, seed=config.seed)
    body, metrics = [], {}
    settings: list[tuple[str, dict[str, Any]]] = [
        (f"fixed {L}", {"block_size": L}) for L in config.policy_sizes if N % L == 0
    ]
    settings.append(("policy", {"policy": policy}))
    for name, kwargs in settings:
        res = generate(model, prompts, gen_cfg, strategy="ctrldiff", **kwargs)
        new = res.sequences[:, prompts.shape[1] :]
        q = float(quality(prompts, new).mean())
        # per row: a fixed size runs the rows as one batch, the policy one row at a time
        rows = prompts.shape[0] if "policy" in kwargs else 1
        calls = res.stats.target_forward_passes / (N * rows)
        body.append([name, round(calls, 3), round(-q, 3), round(q - lam * calls, 3)])
        metrics[f"ctrldiff_{name.replace(' ', '_')}_reward"] = q - lam * calls
    _, eps = sample_with_policy(
        model, prompts, N, policy, explore=False, gen=torch.Generator().manual_seed(0)
    )
    sizes = [s for ep in eps for s in ep.sizes]
    table = Table(
        f"CtrlDiff block-size policy on {run}",
        ["block sizes", "network calls / byte", "AR NLL / byte (nats)", "reward"],
        body,
        note=(
            f"reward = -(AR NLL per new byte) - {lam} x (network calls per new byte); policy "
            f"over {config.policy_sizes} trained by REINFORCE for {config.policy_updates} "
            f"updates of 8 training prompts; the policy's mean block size on these prompts: "
            f"{sum(sizes) / max(1, len(sizes)):.1f}"
        ),
    )
    return table, metrics, [(float(i + 1), r) for i, r in enumerate(history)]


def decode(tokens: torch.Tensor) -> str:
    return bytes(tokens.clamp(max=255).tolist()).decode("utf-8", "replace")


@torch.no_grad()
def sample_all(
    models: dict[str, Transformer],
    prompts: torch.Tensor,
    config: DiffusionTextConfig,
    progress: Progress,
) -> tuple[Table, list[str], dict[str, float]]:
    """Run every sampler of :func:`methods` on ``prompts``: the table, text samples (the
    first prompt's continuation by each) and metrics."""
    ar = models["ar"]
    N, P = config.gen_tokens, prompts.shape[1]
    gen = GenerationConfig(max_new_tokens=N, temperature=config.temperature, seed=config.seed)
    body: list[list[Any]] = []
    samples: list[str] = []
    metrics: dict[str, float] = {}
    for name, run, strategy, kwargs in methods(config):
        progress(f"sampling: {name}")
        extra: dict[str, Any] = {"guide": ar} if strategy == "ar-guided-diffusion" else {}
        start = time.perf_counter()
        res = generate(models[run], prompts, gen, strategy=strategy, **kwargs, **extra)
        seconds = time.perf_counter() - start
        new = res.sequences[:, P:]
        nll = float((ar_nll(ar, res.sequences) - ar_nll(ar, prompts)).sum()) / new.numel()
        calls = res.stats.target_forward_passes / N
        guide = res.stats.draft_forward_passes / N if strategy == "ar-guided-diffusion" else 0.0
        tok_s = new.numel() / seconds
        body.append(
            [name, round(calls, 3), round(guide, 3), round(tok_s, 1), round(math.exp(nll), 2)]
        )
        key = name.split(" (")[0].replace(" ", "_")
        metrics |= {
            f"{key}_calls_per_token": calls,
            f"{key}_guide_calls_per_token": guide,
            f"{key}_tokens_per_s": tok_s,
            f"{key}_gen_ppl": math.exp(nll),
        }
        samples.append(f"[{name}] {decode(prompts[0])!r} -> {decode(new[0])!r}")
    table = Table(
        "sampling",
        ["method", "network calls / token", "guide calls / token", "tokens / s", "gen. perplexity"],
        body,
        note=(
            f"{prompts.shape[0]} held-out prompts of {P} bytes, {N} new bytes each, temperature "
            f"{config.temperature} (ar-guided is the AR model's greedy decoding); calls per "
            f"token per row (a call serves the whole batch); generative perplexity: the AR "
            f"model's, per byte, given the prompt; 2-core CPU, one thread"
        ),
    )
    return table, samples, metrics


class DiffusionTextRecipe(RecipeBase):
    name = "diffusion-text"
    description = "MDLM vs BD3-LM vs AR on stdlib code bytes: bits/byte, samplers, calls"
    config_class = DiffusionTextConfig
    in_demo = True

    def demo_config(self) -> DiffusionTextConfig:
        return DiffusionTextConfig(
            max_bytes=200_000,
            seq_len=64,
            steps=60,
            batch_size=16,
            dim=64,
            eval_windows=16,
            eval_samples=2,
            n_samples=2,
            prompt_bytes=16,
            gen_tokens=32,
            policy_updates=0,  # the policy's episodes run one row at a time: not in the demo
        )

    def _run(self, config: DiffusionTextConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        progress(f"reading up to {config.max_bytes} bytes of the standard library per side")
        train, held = stdlib_bytes(config.max_bytes)
        curves: dict[str, list[tuple[float, float]]] = {}
        bpb_rows: list[list[Any]] = []
        bpb_of: dict[str, float] = {}
        metrics: dict[str, float] = {}
        models: dict[str, Transformer] = {}
        for run in config.runs():
            torch.manual_seed(config.seed)
            model = Transformer(config.arch())
            train_config = TrainConfig(
                steps=config.steps,
                batch_size=config.batch_size,
                lr=config.lr,
                warmup_steps=max(1, config.steps // 10),
                progress=config.progress_bar,
                seed=config.seed,
            )
            progress(f"training {run}: {config.steps} updates")
            start = time.perf_counter()
            losses = Trainer(
                model, loss_fn(run), windows(train, config.seq_len), train_config
            ).train()
            seconds = time.perf_counter() - start
            model.eval()
            model.save_pretrained(out_dir / run)
            bpb = held_out_bpb(
                model, run, held, config.eval_windows, config.seq_len, config.eval_samples
            )
            bound = "exact NLL" if run == "ar" else "NELBO (upper bound)"
            bpb_rows.append([run, round(bpb, 3), bound, round(seconds, 1)])
            metrics[f"{run}_bits_per_byte"] = bpb
            bpb_of[run] = bpb
            curves[f"{run} train loss (bits/byte)"] = [
                (float(i + 1), loss / math.log(2)) for i, loss in enumerate(losses)
            ]
            models[run] = model
        prompts = prompts_from(held, config.n_samples, config.prompt_bytes, config.seed)
        table, samples, sample_metrics = sample_all(models, prompts, config, progress)
        tables = [table]
        if config.policy_updates:
            ptable, pmetrics, pcurve = policy_table(models, train, prompts, config, progress)
            tables.append(ptable)
            sample_metrics |= pmetrics
            curves["block-size policy mean reward"] = pcurve
        order = " < ".join(sorted(bpb_of, key=bpb_of.__getitem__))
        return RecipeResult(
            title="diffusion-text: MDLM vs BD3-LM vs AR on stdlib bytes",
            summary=(
                f"{config.steps} updates per model ({config.dim}-dim, {config.n_layers} "
                f"layers, windows of {config.seq_len} bytes); held-out bits per byte: {order}"
            ),
            tables=[
                Table(
                    "held-out bits per byte",
                    ["model", "bits / byte", "estimate", "train s"],
                    bpb_rows,
                    note=(
                        f"{config.eval_windows} held-out windows; diffusion: mean of "
                        f"{config.eval_samples} seeded NELBO draws"
                    ),
                ),
                *tables,
            ],
            curves=curves,
            samples=samples,
            metrics={k: round(v, 5) for k, v in (metrics | sample_metrics).items()},
        )

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        checkpoint_dir = Path(checkpoint_dir)
        config: DiffusionTextConfig = self.read_config(checkpoint_dir)
        progress(f"loading the models of {checkpoint_dir}")
        models = load_models(checkpoint_dir, config.runs())
        _, held = stdlib_bytes(config.max_bytes)
        prompts = prompts_from(held, n, config.prompt_bytes, config.seed + 1)
        table, samples, metrics = sample_all(models, prompts, config, progress)
        return RecipeResult(
            title="diffusion-text samples",
            summary=f"{n} held-out prompts continued by every sampler",
            tables=[table],
            samples=samples,
            metrics={k: round(v, 5) for k, v in metrics.items()},
        )


recipe = DiffusionTextRecipe()
