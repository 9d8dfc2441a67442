"""Recipe ``vision-digits``: class-conditional image generation on scikit-learn's digits.

data (8x8 digits) -> tokenizer (pixels, VQ-VAE, multi-scale RVQ, frequency RVQ, CTF
codebook; fitted here) -> one class-conditional step model (:mod:`ar_vision.model`)
trained with ar-core's Trainer under the chosen ordering -> samples per class with
classifier-free guidance (:mod:`ar_vision.sampling`) -> class accuracy (the metrics
classifier), Fréchet distance to the test images, NLL in bits per dim against the
factorised baseline, network calls and seconds per image -> a grid PNG and a table.

The survey's three levels (Xiong et al. 2024, arXiv:2411.05902) are three settings:
``tokenizer=pixel, ordering=raster`` (64 calls), ``tokenizer=vqvae, ordering=raster``
(16 calls), ``tokenizer=msrvq, ordering=next-scale`` (4 calls). The default is the best
of them on digits (raster over VQ tokens; ``ar bench vision`` compares them all).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pydantic
import torch

from ar_core.ordering import Plan
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_core.sampling import LogitsProcessor, TopK, TopP
from ar_core.steps import StepOutput, plan_slots, query_stream_loss
from ar_core.trainer import TrainConfig, Trainer, read_metrics
from ar_vision.model import ClassConditionalStepModel, build_step_model, drop_labels
from ar_vision.representation import Representation, factorised_nll, masked_log_probs
from ar_vision.sampling import generate_images

NUM_CLASSES = 10
TokenizerName = Literal["pixel", "vqvae", "msrvq", "nfig", "ctf", "dar"]


class VisionDigitsConfig(pydantic.BaseModel):
    """Settings of ``vision-digits``; the defaults train in a couple of minutes on 2 cores."""

    model_config = pydantic.ConfigDict(extra="forbid")

    ordering: str = "raster"  # any registered ordering that fits the tokenizer's layout
    tokenizer: TokenizerName = "vqvae"  # 16 tokens of 64 codes: short sequences, fast
    image_size: Literal[8] = 8  # native digits; the tokenizers are sized for 8x8
    tokenizer_steps: int = pydantic.Field(default=300, ge=0)  # VQ fits reach ~20 dB PSNR in 300
    n_coarse: int = pydantic.Field(default=8, ge=2)  # CTF clusters of the 64 codes
    phi: bool = False  # msrvq/nfig: VAR's refinement convolution after each upsampling
    steps: int = pydantic.Field(default=600, ge=1)  # optimizer updates of the step model
    batch_size: int = pydantic.Field(default=64, ge=1)
    lr: float = pydantic.Field(default=3e-3, gt=0)  # high, fine for a 2-layer model with warm-up
    model_size: Literal["tiny", "small", "base"] = "tiny"  # ar_vision.model.PRESETS
    # the queries of a step see each other: CTF's fine stage as one bidirectional step
    # (ar_vision.bidirectional); False: the causal two-stream model
    bidirectional_steps: bool = False
    label_dropout: float = pydantic.Field(default=0.1, ge=0, lt=1)  # null-class rows for CFG
    cfg_scale: float = pydantic.Field(default=2.0, ge=0)  # 1.0 = no guidance
    cfg_schedule: Literal["constant", "linear"] = "constant"
    top_k: int | None = pydantic.Field(default=None, ge=1)  # None = the full distribution
    top_p: float | None = pydantic.Field(default=None, gt=0, le=1)  # None = no nucleus filter
    samples_per_class: int = pydantic.Field(default=10, ge=1)
    seed: int = 0  # data split, tokenizer, model init, data order, samples
    progress_bar: bool = True  # the Trainer's tqdm bar
    # a model this small runs fastest on one thread (more threads only contend); 0 = torch's
    threads: int = pydantic.Field(default=1, ge=0)


@dataclass
class Evaluation:
    """What :func:`train_and_evaluate` measured (``images`` (n, 1, S, S) the samples,
    ``tokens`` (n, N) theirs)."""

    rep: Representation
    model: ClassConditionalStepModel
    plan: Plan
    images: torch.Tensor
    labels: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[float, float]] = field(default_factory=list)
    tokens: torch.Tensor | None = None


# -- pieces ---------------------------------------------------------------------------------


def build_tokenizer(config: VisionDigitsConfig) -> Any:
    """An unfitted tokenizer of ar_vision.tokenizers for the config."""
    from ar_vision import tokenizers

    size = config.image_size
    if config.tokenizer == "pixel":
        return tokenizers.PixelTokenizer(levels=17, image_size=size)
    seed = config.seed
    if config.tokenizer == "vqvae":
        return tokenizers.VQVAE(image_size=size, patch=2, seed=seed)
    if config.tokenizer == "msrvq":
        return tokenizers.MultiScaleRVQ(seed=seed, phi=config.phi)
    if config.tokenizer == "nfig":
        return tokenizers.FrequencyRVQ(seed=seed, phi=config.phi)
    if config.tokenizer == "dar":  # D-AR: 4 groups of 4 codes driving a 4-stage flow
        from ar_vision.dar import DARTokenizer

        return DARTokenizer(image_size=size, seed=seed)
    base = tokenizers.VQVAE(image_size=size, patch=2, seed=seed)
    return tokenizers.CoarseFineCodebook(base, n_coarse=config.n_coarse, seed=seed)


def load_tokenizer(name: str, path: Path) -> Any:
    from ar_vision import tokenizers

    return tokenizers.tokenizer_class(name).load(path)


class TokenData:
    """``data(generator, batch_size) -> (tokens, labels)`` for the Trainer: rows drawn
    with replacement, labels replaced by the null class (``null_class``, default the
    digits' 10) with ``label_dropout``."""

    def __init__(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        label_dropout: float,
        null_class: int = NUM_CLASSES,
    ) -> None:
        self.tokens, self.labels, self.p = tokens, labels, label_dropout
        self.null_class = null_class

    def __call__(
        self, generator: torch.Generator, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, self.tokens.shape[0], (batch_size,), generator=generator)
        return self.tokens[rows], drop_labels(self.labels[rows], self.null_class, self.p, generator)


def plan_loss(
    plan: Plan,
) -> Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The Trainer's ``loss_fn``: ar-core's query-stream cross-entropy of the step model
    under one plan (it calls the model itself, so a DDP wrapper sees the forward)."""
    order, slot_steps = plan_slots(plan)

    def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, labels = batch
        rows = order.to(tokens.device).expand(tokens.shape)  # (B, N)
        logits = model(tokens, labels, rows, slot_steps)  # (B, N, V) in slot order
        return query_stream_loss(logits, tokens, rows)

    return loss_fn


@torch.no_grad()
def sequence_nll(
    model: ClassConditionalStepModel,
    rep: Representation,
    plan: Plan,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
) -> float:
    """Mean NLL (nats per token) of ``tokens`` (B, N) given ``labels`` (B,) (the null
    class: unconditional), with the representation's constraints applied."""
    order, slot_steps = plan_slots(plan)
    total = 0.0
    for start in range(0, tokens.shape[0], batch_size):
        x, y = tokens[start : start + batch_size], labels[start : start + batch_size]
        logits = model(x, y, order, slot_steps)  # (b, N, V) in slot order
        allowed = rep.allowed(order, x) if rep.allowed is not None else None
        log_p = masked_log_probs(logits, allowed)
        total += float(-log_p.gather(-1, x[:, order][..., None]).sum())
    return total / tokens.numel()


def _bits_per_dim(nats_per_token: float, rep: Representation, image_size: int) -> float:
    from ar_vision.metrics import bits_per_dim

    return bits_per_dim(nats_per_token * rep.num_tokens, image_size * image_size)


# -- the pipeline -----------------------------------------------------------------------------


def train_and_evaluate(config: VisionDigitsConfig, out_dir: Path, progress: Progress) -> Evaluation:
    """Fit the tokenizer, train the step model, sample and measure (the recipe's body;
    the benchmark calls it once per ordering)."""
    from ar_vision import metrics
    from ar_vision.data import load_digits

    out_dir.mkdir(parents=True, exist_ok=True)
    train_x, train_y = load_digits(config.image_size, "train", config.seed)
    test_x, test_y = load_digits(config.image_size, "test", config.seed)
    tokenizer = build_tokenizer(config)
    gen = torch.Generator().manual_seed(config.seed)
    rep = Representation.of(tokenizer)
    plan = rep.plan(config.ordering)  # fail on a bad ordering before any fitting
    if config.tokenizer != "pixel":
        progress(f"fitting tokenizer {config.tokenizer} ({config.tokenizer_steps} steps)")
    start = time.perf_counter()
    tok_metrics = tokenizer.fit(
        train_x, steps=config.tokenizer_steps, batch_size=128, lr=3e-3, generator=gen
    )
    tokenizer_seconds = time.perf_counter() - start
    tokenizer.save(out_dir / "tokenizer")
    train_t, test_t = rep.encode(train_x), rep.encode(test_x)  # (B, N)

    model = build_step_model(
        vocab_size=rep.vocab_size,
        num_classes=NUM_CLASSES,
        num_positions=rep.num_tokens,
        size=config.model_size,
        seed=config.seed,
        own_step_queries=config.bidirectional_steps,
    )
    data = TokenData(train_t, train_y, config.label_dropout)
    train_seconds = train_step_model(model, rep, plan, data, config, out_dir, progress)

    progress("evaluating NLL and sampling")
    # trains and caches the metrics classifier on first use; outside no_grad (class_accuracy
    # is a no_grad function and cannot train it)
    metrics.digits_classifier()
    nll = sequence_nll(model, rep, plan, test_t, test_y)
    nll_uncond = sequence_nll(model, rep, plan, test_t, torch.full_like(test_y, NUM_CLASSES))
    baseline = factorised_nll(train_t, test_t, rep.vocab_size)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(config.samples_per_class)
    out, seconds = sample_images(model, rep, plan, labels, config)
    images = rep.decode(out.tokens).clamp(0, 1)
    m = {
        "class_accuracy": metrics.class_accuracy(images, labels),
        "frechet_distance": metrics.frechet_distance(images, test_x),
        "frechet_test_vs_train": metrics.frechet_distance(test_x, train_x),  # the floor
        "nll_nats_per_token": nll,
        "nll_uncond_nats_per_token": nll_uncond,
        "factorised_nll_nats_per_token": baseline,
        "bits_per_dim": _bits_per_dim(nll, rep, config.image_size),
        "factorised_bits_per_dim": _bits_per_dim(baseline, rep, config.image_size),
        "network_calls_per_image": float(out.calls),
        "seconds_per_image": seconds / labels.numel(),
        "train_seconds": train_seconds,
        "tokenizer_seconds": tokenizer_seconds,
        **{f"tokenizer_{k}": float(v) for k, v in tok_metrics.items() if k in ("mse", "psnr")},
    }
    curve = [(float(r["step"]), float(r["loss"])) for r in read_metrics(out_dir / "train")]
    return Evaluation(rep, model, plan, images, labels, m, curve, out.tokens)


def save_dar_previews(ev: Evaluation, path: Path) -> Path:
    """D-AR's streaming previews of one sample per class: row k is the preview after
    token group k (:mod:`ar_vision.dar`), the last row the sample itself."""
    from ar_vision.metrics import save_grid

    if ev.tokens is None:
        raise ValueError("save_dar_previews needs the sampled tokens (Evaluation.tokens)")
    first = [int(torch.nonzero(ev.labels == c)[0]) for c in ev.labels.unique().tolist()]
    previews = ev.rep.tokenizer.previews(ev.tokens[first]).clamp(0, 1)  # (G, C', 1, S, S)
    labels = [f"{c} @{k}" for k in range(previews.shape[0]) for c in ev.labels[first].tolist()]
    return save_grid(previews.flatten(0, 1), path, nrow=len(first), labels=labels)


class StepModelSettings(Protocol):
    """The config fields the vision recipes share for training and sampling a step model
    (``VisionDigitsConfig`` and ``VisionImagesConfig`` both have them)."""

    @property
    def ordering(self) -> str: ...

    @property
    def tokenizer(self) -> str: ...

    @property
    def steps(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def lr(self) -> float: ...

    @property
    def seed(self) -> int: ...

    @property
    def progress_bar(self) -> bool: ...

    @property
    def cfg_scale(self) -> float: ...

    @property
    def cfg_schedule(self) -> Literal["constant", "linear"]: ...

    @property
    def top_k(self) -> int | None: ...

    @property
    def top_p(self) -> float | None: ...


def train_step_model(
    model: ClassConditionalStepModel,
    rep: Representation,
    plan: Plan,
    data: TokenData,
    config: StepModelSettings,
    out_dir: Path,
    progress: Progress,
) -> float:
    """Train ``model`` on ``data`` under ``plan`` with ar-core's Trainer (logs under
    ``out_dir/train``), save it to ``out_dir/model`` in eval mode; the training seconds."""
    train_config = TrainConfig.build(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=0.0,  # a few hundred updates on 1.4k images: decay only slows them
        warmup_steps=max(1, config.steps // 20),
        out_dir=out_dir / "train",
        seed=config.seed,
        log_every=max(1, config.steps // 50),
        progress=config.progress_bar,
    )
    progress(
        f"training {config.ordering} over {rep.num_tokens} {config.tokenizer} tokens "
        f"({plan.num_steps} steps a sample), {config.steps} updates"
    )
    start = time.perf_counter()
    Trainer(model, plan_loss(plan), data, train_config).train()
    seconds = time.perf_counter() - start
    model.eval()
    model.save_pretrained(out_dir / "model")
    return seconds


def sample_images(
    model: ClassConditionalStepModel,
    rep: Representation,
    plan: Plan,
    labels: torch.Tensor,
    config: StepModelSettings,
    *,
    cfg_scale: float | None = None,
) -> tuple[StepOutput, float]:
    """Sample ``labels`` (B,) with the config's CFG (``cfg_scale`` overrides its scale)
    and filters: (StepOutput, seconds)."""
    processors: list[LogitsProcessor] = []
    if config.top_k is not None:
        processors.append(TopK(config.top_k))
    if config.top_p is not None:
        processors.append(TopP(config.top_p))
    gen = torch.Generator().manual_seed(config.seed + 1)
    start = time.perf_counter()
    out = generate_images(
        model,
        plan,
        labels,
        cfg_scale=config.cfg_scale if cfg_scale is None else cfg_scale,
        cfg_schedule=config.cfg_schedule,
        processors=processors,
        allowed=rep.allowed,
        generator=gen,
    )
    return out, time.perf_counter() - start


def result_table(rows: list[tuple[str, dict[str, float]]], note: str = "") -> Table:
    """One row per run: ordering, calls, s/image, class accuracy, FD, bits/dim."""
    columns = [
        "run",
        "calls / image",
        "ms / image",
        "class accuracy",
        "Fréchet distance",
        "bits / dim",
        "factorised bits / dim",
    ]
    body = [
        [
            name,
            int(m["network_calls_per_image"]),
            round(1000 * m["seconds_per_image"], 2),
            round(m["class_accuracy"], 3),
            round(m["frechet_distance"], 2),
            round(m["bits_per_dim"], 3),
            round(m["factorised_bits_per_dim"], 3),
        ]
        for name, m in rows
    ]
    return Table("class-conditional digits", columns, body, note=note)


def save_samples(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int) -> Path:
    from ar_vision.metrics import save_grid

    # one row per class when it fits, else 10 columns
    nrow = per_class if per_class <= 16 else NUM_CLASSES
    return save_grid(images, path, nrow=nrow, labels=[str(int(c)) for c in labels])


# -- the recipe ------------------------------------------------------------------------------


class VisionDigitsRecipe(RecipeBase):
    name = "vision-digits"
    description = "class-conditional digits: one step model, any ordering, CFG"
    config_class = VisionDigitsConfig
    in_demo = True

    def demo_config(self) -> VisionDigitsConfig:
        # raster over 16 VQ tokens: 28 s (idle) to 75 s (busy 2 cores), 97.5% class accuracy
        return VisionDigitsConfig(tokenizer_steps=200, steps=300, samples_per_class=8)

    def _run(self, config: VisionDigitsConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        ev = train_and_evaluate(config, out_dir, progress)
        grid = save_samples(ev.images, ev.labels, out_dir / "samples.png", config.samples_per_class)
        name = f"{config.ordering} / {config.tokenizer}"
        images = [(f"samples, one row per class ({name})", grid)]
        if config.tokenizer == "dar":
            previews = save_dar_previews(ev, out_dir / "previews.png")
            images.append(("D-AR previews after each token group (class @ group)", previews))
        m = ev.metrics
        return RecipeResult(
            title=f"vision-digits: {name}",
            summary=(
                f"{config.ordering} over {ev.rep.num_tokens} {config.tokenizer} tokens: "
                f"{int(m['network_calls_per_image'])} network calls per image; samples "
                f"recognised as their class {100 * m['class_accuracy']:.1f}% of the time "
                f"(CFG {config.cfg_scale}, {config.cfg_schedule}); trained "
                f"{config.steps} updates in {m['train_seconds']:.1f} s"
            ),
            tables=[
                result_table(
                    [(name, m)],
                    note=(
                        f"{ev.labels.numel()} samples, seed {config.seed}; Fréchet distance "
                        f"on the metrics classifier's features vs the test split (test vs "
                        f"train: {m['frechet_test_vs_train']:.2f})"
                    ),
                )
            ],
            images=images,
            curves={"train loss": ev.curve},
            metrics={k: round(v, 5) for k, v in m.items()},
        )

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        from ar_vision.metrics import class_accuracy

        checkpoint_dir = Path(checkpoint_dir)
        config: VisionDigitsConfig = self.read_config(checkpoint_dir)
        progress(f"loading {checkpoint_dir / 'model'}")
        rep = Representation.of(load_tokenizer(config.tokenizer, checkpoint_dir / "tokenizer"))
        model = ClassConditionalStepModel.from_pretrained(checkpoint_dir / "model").eval()
        plan = rep.plan(config.ordering)
        labels = torch.arange(n) % NUM_CLASSES
        out, seconds = sample_images(model, rep, plan, labels, config)
        images = rep.decode(out.tokens).clamp(0, 1)
        grid = save_samples(images, labels, checkpoint_dir / "samples_more.png", NUM_CLASSES)
        accuracy = class_accuracy(images, labels)
        return RecipeResult(
            title="vision-digits samples",
            summary=(
                f"{n} samples, {out.calls} network calls and {1000 * seconds / n:.1f} ms per "
                f"image; class accuracy {accuracy:.3f}"
            ),
            images=[("samples (label above each)", grid)],
            metrics={"class_accuracy": accuracy, "network_calls_per_image": float(out.calls)},
        )


recipe = VisionDigitsRecipe()
