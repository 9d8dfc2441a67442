"""Recipe ``vision-images``: your own images (or digits at 32 px) at 16, 32 or 64 pixels.

``ar train vision-images --set data=FOLDER image_size=32 channels=3``: every image under
FOLDER (Pillow reads it; non-square ones are centre-cropped, all are resized to
``image_size``) -> a tokenizer sized from the config -> the class-conditional step model
of ``vision-digits`` (:mod:`ar_vision.model`, sized by ``model_size``) under the chosen
ordering -> samples -> the same report: a grid, a table, the loss curve.

* Classes: a folder with class sub-folders trains class-conditionally (one class per
  sub-folder, CFG with a null class); a folder of images alone trains unconditionally
  (one class, no guidance). Images both directly in FOLDER and in sub-folders are an error.
* ``data=digits`` (the default) is scikit-learn's digits upsampled (bilinear) to
  ``image_size``, repeated over 3 channels when ``channels=3``: nothing is downloaded.
* Tokenizers are sized from the config: ``pixel`` (``levels`` grey levels, C*S*S
  tokens), ``vqvae`` (one code per ``downsample`` x ``downsample`` patch: (S/d)^2 tokens),
  ``msrvq``/``nfig`` (scales 1, 2, 4, ... up to the latent side S/d; NFIG's bands are the
  default cutoffs s_k / (S/d)), ``ctf`` (a ``vqvae`` plus ``n_coarse`` k-means clusters).
* Metrics: class accuracy with an MLP classifier trained here, at ``image_size`` on the
  training split (for digits at 32 px: on digits upsampled to 32 px), its test accuracy
  reported beside it; a Fréchet distance and improved precision / recall (k=3) on its
  features; a network-free Fréchet distance on the pixels pooled to 8x8 (also for
  unconditional data); NLL in bits per dim against the factorised baseline.

The train/test split is stratified per class (20% test, :func:`ar_vision.data.split_indices`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch

from ar_core.errors import CheckpointError, ConfigError, InputError
from ar_core.ordering import Plan
from ar_core.recipes import Progress, RecipeResult, Table, atomic_write_text
from ar_core.recipes.base import RecipeBase
from ar_core.steps import StepOutput
from ar_core.trainer import read_metrics
from ar_vision.model import ClassConditionalStepModel, build_step_model
from ar_vision.recipes.digits import (
    TokenData,
    load_tokenizer,
    sequence_nll,
    train_step_model,
)
from ar_vision.recipes.digits import sample_images as digits_sample_images
from ar_vision.representation import Representation, factorised_nll

TokenizerName = Literal["pixel", "vqvae", "msrvq", "nfig", "ctf"]
CLASSES_FILE = "classes.json"
DIGITS = "digits"


class VisionImagesConfig(pydantic.BaseModel):
    """Settings of ``vision-images``; the defaults train on digits at 32 px on a CPU."""

    model_config = pydantic.ConfigDict(extra="forbid")

    data: str = DIGITS  # "digits" (scikit-learn's, upsampled) or a folder of images
    image_size: Literal[16, 32, 64] = 32
    channels: Literal[1, 3] = 1  # 1: grey ("L"), 3: RGB
    resize: bool = True  # False: an image of another size is an error naming it
    skip_bad: bool = False  # True: skip unreadable files with a warning naming each
    ordering: str = "raster"  # any registered ordering that fits the tokenizer's layout
    tokenizer: TokenizerName = "vqvae"
    downsample: Literal[4, 8] = 4  # VQ patch: 32 px -> 8x8 = 64 tokens (8: 4x4 = 16)
    codebook_size: int = pydantic.Field(default=64, ge=2)
    code_dim: int = pydantic.Field(default=16, ge=1)
    tokenizer_hidden: int = pydantic.Field(default=32, ge=1)  # conv channels of the VQ nets
    levels: int = pydantic.Field(default=17, ge=2)  # grey levels of the pixel tokenizer
    phi: bool = False  # msrvq/nfig: VAR's refinement convolution after each upsampling
    tokenizer_steps: int = pydantic.Field(default=300, ge=0)
    tokenizer_batch_size: int = pydantic.Field(default=64, ge=1)
    n_coarse: int = pydantic.Field(default=8, ge=2)  # CTF clusters of the codebook
    steps: int = pydantic.Field(default=600, ge=1)  # optimizer updates of the step model
    batch_size: int = pydantic.Field(default=64, ge=1)
    lr: float = pydantic.Field(default=3e-3, gt=0)
    model_size: Literal["tiny", "small", "base"] = "tiny"  # ar_vision.model.PRESETS
    # the queries of a step see each other: CTF's fine stage as one bidirectional step
    # (ar_vision.bidirectional); False: the causal two-stream model
    bidirectional_steps: bool = False
    label_dropout: float = pydantic.Field(default=0.1, ge=0, lt=1)  # null-class rows for CFG
    cfg_scale: float = pydantic.Field(default=2.0, ge=0)  # 1.0 = no guidance
    cfg_schedule: Literal["constant", "linear"] = "constant"
    top_k: int | None = pydantic.Field(default=None, ge=1)
    top_p: float | None = pydantic.Field(default=None, gt=0, le=1)
    samples_per_class: int = pydantic.Field(default=10, ge=1)  # unconditional: x 8 samples
    classifier_steps: int = pydantic.Field(default=400, ge=1)  # the metrics classifier
    seed: int = 0  # data split, tokenizer, model init, data order, samples
    progress_bar: bool = True
    threads: int = pydantic.Field(default=1, ge=0)


@dataclass
class Dataset:
    """Images (N, C, S, S) in [0, 1] with labels; ``classes`` names them (one name and
    ``conditional`` False for a folder without class sub-folders)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    conditional: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_data(config: VisionImagesConfig) -> Dataset:
    """The config's images at ``image_size`` with ``channels``, split 80/20 per class."""
    from ar_vision.data import ImageFolder, load_digits, resize, split_indices

    size, c = config.image_size, config.channels
    if config.data == DIGITS:
        x, y = load_digits(8, "all")
        x = resize(x, size, "bilinear").expand(-1, c, -1, -1).contiguous()
        classes, conditional = [str(i) for i in range(10)], True
    else:
        folder = ImageFolder(
            config.data, size, grayscale=c == 1, resize=config.resize, skip_bad=config.skip_bad
        )
        if len(folder.classes) > 1 and "." in folder.classes:
            raise InputError(
                f"{folder.root} holds images both directly in it and in sub-folders: put "
                f"every image in a class sub-folder (class-conditional) or none (unconditional)"
            )
        x, y = folder.load_all()
        classes, conditional = folder.classes, len(folder.classes) > 1
    train_idx, test_idx = split_indices(y.numpy(), config.seed)
    if len(train_idx) == 0:
        raise InputError(f"{config.data}: no images left to train on after the 20% test split")
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Dataset(x[tr], y[tr], x[te], y[te], classes, conditional)


def scales_for(latent_side: int) -> list[int]:
    """Multi-scale schedule 1, 2, 4, ... up to ``latent_side`` (the last scale is the side)."""
    scales = [1]
    while scales[-1] * 2 < latent_side:
        scales.append(scales[-1] * 2)
    if scales[-1] != latent_side:
        scales.append(latent_side)
    return scales


def build_tokenizer(config: VisionImagesConfig) -> Any:
    """An unfitted tokenizer sized for ``image_size``, ``channels`` and ``downsample``."""
    from ar_vision import tokenizers

    size, c, d, seed = config.image_size, config.channels, config.downsample, config.seed
    if config.tokenizer == "pixel":
        return tokenizers.PixelTokenizer(levels=config.levels, image_size=size, channels=c)
    vq = {
        "patch": d,
        "codebook_size": config.codebook_size,
        "dim": config.code_dim,
        "hidden": config.tokenizer_hidden,
        "channels": c,
        "seed": seed,
    }
    if config.tokenizer in ("msrvq", "nfig"):
        cls = tokenizers.MultiScaleRVQ if config.tokenizer == "msrvq" else tokenizers.FrequencyRVQ
        return cls(scales=scales_for(size // d), phi=config.phi, **vq)
    base = tokenizers.VQVAE(image_size=size, **vq)
    if config.tokenizer == "vqvae":
        return base
    return tokenizers.CoarseFineCodebook(base, n_coarse=config.n_coarse, seed=seed)


def check_ordering(config: VisionImagesConfig, rep: Representation) -> Plan:
    """The plan of ``config.ordering`` over ``rep``, or a ConfigError when it does not fit."""
    if config.ordering == "coarse-to-fine" and not rep.coarse_fine:
        raise ConfigError(
            f"ordering 'coarse-to-fine' needs the coarse + fine layout of tokenizer=ctf; "
            f"tokenizer={config.tokenizer} has none (set tokenizer=ctf)"
        )
    return rep.plan(config.ordering)


@dataclass
class Evaluation:
    rep: Representation
    model: ClassConditionalStepModel
    plan: Plan
    data: Dataset
    images: torch.Tensor
    labels: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[float, float]] = field(default_factory=list)


def sample_labels(data_classes: int, conditional: bool, per_class: int) -> torch.Tensor:
    if conditional:
        return torch.arange(data_classes).repeat_interleave(per_class)
    return torch.zeros(8 * per_class, dtype=torch.long)


def sample_images(
    model: ClassConditionalStepModel,
    plan: Plan,
    labels: torch.Tensor,
    config: VisionImagesConfig,
    conditional: bool,
    rep: Representation,
) -> tuple[StepOutput, float]:
    """Sample ``labels`` (B,) with the config's CFG (none when unconditional) and filters."""
    return digits_sample_images(
        model, rep, plan, labels, config, cfg_scale=config.cfg_scale if conditional else 1.0
    )


def train_and_evaluate(config: VisionImagesConfig, out_dir: Path, progress: Progress) -> Evaluation:
    """Load, fit the tokenizer, train, sample and measure (the recipe's body)."""
    from ar_vision import metrics

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(config)
    rep = Representation.of(tokenizer)
    plan = check_ordering(config, rep)  # fail on a bad ordering before any loading
    progress(f"loading {config.data} at {config.image_size} px, {config.channels} channel(s)")
    data = load_data(config)
    gen = torch.Generator().manual_seed(config.seed)
    if config.tokenizer != "pixel":
        progress(f"fitting tokenizer {config.tokenizer} ({config.tokenizer_steps} steps)")
    start = time.perf_counter()
    tok_metrics = tokenizer.fit(
        data.train_x,
        steps=config.tokenizer_steps,
        batch_size=config.tokenizer_batch_size,
        lr=3e-3,
        generator=gen,
    )
    tokenizer_seconds = time.perf_counter() - start
    tokenizer.save(out_dir / "tokenizer")
    meta = {"classes": data.classes, "conditional": data.conditional}
    atomic_write_text(out_dir / CLASSES_FILE, json.dumps(meta))
    train_t, test_t = rep.encode(data.train_x), rep.encode(data.test_x)

    model = build_step_model(
        vocab_size=rep.vocab_size,
        num_classes=data.num_classes,
        num_positions=rep.num_tokens,
        size=config.model_size,
        seed=config.seed,
        own_step_queries=config.bidirectional_steps,
    )
    dropout = config.label_dropout if data.conditional else 0.0
    token_data = TokenData(train_t, train_y := data.train_y, dropout, data.num_classes)
    train_seconds = train_step_model(model, rep, plan, token_data, config, out_dir, progress)

    progress("evaluating NLL and sampling")
    labels = sample_labels(data.num_classes, data.conditional, config.samples_per_class)
    out, seconds = sample_images(model, plan, labels, config, data.conditional, rep)
    images = rep.decode(out.tokens).clamp(0, 1)
    # the test split may be tiny for a small folder: compare with the training images then
    reference = data.test_x if data.test_x.shape[0] >= 8 else data.train_x
    dims = config.channels * config.image_size**2
    m: dict[str, float] = {
        "pixel_frechet_distance": metrics.pixel_frechet(images, reference),
        "network_calls_per_image": float(out.calls),
        "seconds_per_image": seconds / labels.numel(),
        "train_seconds": train_seconds,
        "tokenizer_seconds": tokenizer_seconds,
        "num_train_images": float(data.train_x.shape[0]),
        **{f"tokenizer_{k}": float(v) for k, v in tok_metrics.items() if k in ("mse", "psnr")},
    }
    if test_t.shape[0]:
        nll = sequence_nll(model, rep, plan, test_t, data.test_y)
        baseline = factorised_nll(train_t, test_t, rep.vocab_size)
        m["nll_nats_per_token"] = nll
        m["bits_per_dim"] = metrics.bits_per_dim(nll * rep.num_tokens, dims)
        m["factorised_bits_per_dim"] = metrics.bits_per_dim(baseline * rep.num_tokens, dims)
        if rep.coarse_fine:  # CTF: coarse perplexity against the full codes'
            coarse, fine = coarse_fine_nll(model, rep, plan, test_t, data.test_y)
            m["coarse_perplexity"] = math.exp(coarse)
            m["fine_given_coarse_perplexity"] = math.exp(fine)
            m["full_perplexity"] = math.exp(coarse + fine)
    if data.conditional:
        progress(f"training the {config.image_size}-px metrics classifier")
        clf = metrics.train_image_classifier(
            data.train_x, train_y, data.num_classes, steps=config.classifier_steps, seed=0
        )
        feats_real, feats_fake = clf.features(reference), clf.features(images)
        m["class_accuracy"] = metrics.accuracy_of(clf, images, labels)
        if data.test_x.shape[0]:
            m["classifier_test_accuracy"] = metrics.accuracy_of(clf, data.test_x, data.test_y)
        m["frechet_distance"] = metrics.frechet_from_features(feats_fake, feats_real)
        if min(feats_real.shape[0], feats_fake.shape[0]) > 3:
            precision, recall = metrics.precision_recall(feats_real, feats_fake)
            m["precision"], m["recall"] = precision, recall
    curve = [(float(r["step"]), float(r["loss"])) for r in read_metrics(out_dir / "train")]
    return Evaluation(rep, model, plan, data, images, labels, m, curve)


@torch.no_grad()
def coarse_fine_nll(
    model: ClassConditionalStepModel,
    rep: Representation,
    plan: Plan,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
) -> tuple[float, float]:
    """CTF's two stages measured apart: mean NLL (nats per image position) of the coarse
    labels, and of the fine codes given them, under the representation's constraints.
    Their sum is the NLL of the fine codes themselves (a coarse label is a function of its
    code), so ``exp(coarse)`` against ``exp(coarse + fine)`` is CTF's "coarse perplexity
    far below full" comparison."""
    from ar_core.steps import plan_slots
    from ar_vision.representation import masked_log_probs

    if not rep.coarse_fine:
        raise ConfigError("coarse_fine_nll needs the coarse + fine layout of tokenizer=ctf")
    order, slot_steps = plan_slots(plan)
    n = rep.num_tokens // 2
    coarse = fine = 0.0
    for start in range(0, tokens.shape[0], batch_size):
        x, y = tokens[start : start + batch_size], labels[start : start + batch_size]
        logits = model(x, y, order, slot_steps)  # (b, 2n, V + C) in slot order
        allowed = rep.allowed(order, x) if rep.allowed is not None else None
        nll = -masked_log_probs(logits, allowed).gather(-1, x[:, order][..., None])[..., 0]
        is_coarse = order < n  # (2n,) slot holds a coarse position
        coarse += float(nll[:, is_coarse].sum())
        fine += float(nll[:, ~is_coarse].sum())
    count = tokens.shape[0] * n
    return coarse / count, fine / count


def _fmt(m: dict[str, float], key: str, digits: int = 3) -> float | str:
    return round(m[key], digits) if key in m else "-"


def result_table(name: str, m: dict[str, float], note: str) -> Table:
    columns = [
        "run",
        "calls / image",
        "ms / image",
        "class accuracy",
        "Fréchet (classifier)",
        "precision",
        "recall",
        "Fréchet (pixels 8x8)",
        "bits / dim",
        "factorised bits / dim",
    ]
    row = [
        name,
        int(m["network_calls_per_image"]),
        round(1000 * m["seconds_per_image"], 2),
        _fmt(m, "class_accuracy"),
        _fmt(m, "frechet_distance", 2),
        _fmt(m, "precision"),
        _fmt(m, "recall"),
        _fmt(m, "pixel_frechet_distance", 3),
        _fmt(m, "bits_per_dim"),
        _fmt(m, "factorised_bits_per_dim"),
    ]
    return Table("image generation", columns, [row], note=note)


def save_samples(
    images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path
) -> Path:
    from ar_vision.metrics import save_grid

    nrow = max(1, min(16, labels.numel() // max(1, len(classes))))
    names = [classes[int(c)] for c in labels] if len(classes) > 1 else None
    return save_grid(images, path, nrow=nrow, labels=names)


def read_classes(checkpoint_dir: Path) -> tuple[list[str], bool]:
    file = checkpoint_dir / CLASSES_FILE
    try:
        meta = json.loads(file.read_text())
        return [str(c) for c in meta["classes"]], bool(meta["conditional"])
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; re-run ar train vision-images") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{file} is corrupted ({exc}); re-run ar train vision-images"
        ) from None


class VisionImagesRecipe(RecipeBase):
    name = "vision-images"
    description = "your own images (or digits at 32 px): 16-64 px, grey or RGB, any ordering"
    config_class = VisionImagesConfig
    in_demo = False

    def demo_config(self) -> VisionImagesConfig:
        return VisionImagesConfig(downsample=8, tokenizer_steps=150, steps=300, samples_per_class=4)

    def _run(self, config: VisionImagesConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        ev = train_and_evaluate(config, out_dir, progress)
        grid = save_samples(ev.images, ev.labels, ev.data.classes, out_dir / "samples.png")
        name = f"{config.ordering} / {config.tokenizer}"
        m = ev.metrics
        kind = (
            f"{ev.data.num_classes} classes, CFG {config.cfg_scale}"
            if ev.data.conditional
            else "unconditional"
        )
        accuracy = (
            f"; samples recognised as their class {100 * m['class_accuracy']:.1f}% of the time"
            if "class_accuracy" in m
            else ""
        )
        note = (
            f"{ev.labels.numel()} samples of {config.data} at {config.image_size} px "
            f"({config.channels} channel(s), {kind}), seed {config.seed}"
        )
        if "classifier_test_accuracy" in m:
            note += (
                f"; the {config.image_size}-px classifier's own test accuracy "
                f"{m['classifier_test_accuracy']:.3f}"
            )
        return RecipeResult(
            title=f"vision-images: {name} at {config.image_size} px",
            summary=(
                f"{config.ordering} over {ev.rep.num_tokens} {config.tokenizer} tokens: "
                f"{int(m['network_calls_per_image'])} network calls per image{accuracy}; "
                f"trained {config.steps} updates in {m['train_seconds']:.1f} s"
            ),
            tables=[result_table(name, m, note)],
            images=[(f"samples ({name})", grid)],
            curves={"train loss": ev.curve},
            metrics={k: round(v, 5) for k, v in m.items()},
        )

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        checkpoint_dir = Path(checkpoint_dir)
        config: VisionImagesConfig = self.read_config(checkpoint_dir)
        classes, conditional = read_classes(checkpoint_dir)
        progress(f"loading {checkpoint_dir / 'model'}")
        rep = Representation.of(load_tokenizer(config.tokenizer, checkpoint_dir / "tokenizer"))
        model = ClassConditionalStepModel.from_pretrained(checkpoint_dir / "model").eval()
        plan = check_ordering(config, rep)
        labels = torch.arange(n) % len(classes)
        out, seconds = sample_images(model, plan, labels, config, conditional, rep)
        images = rep.decode(out.tokens).clamp(0, 1)
        grid = save_samples(images, labels, classes, checkpoint_dir / "samples_more.png")
        return RecipeResult(
            title="vision-images samples",
            summary=(
                f"{n} samples, {out.calls} network calls and {1000 * seconds / n:.1f} ms per image"
            ),
            images=[("samples", grid)],
            metrics={"network_calls_per_image": float(out.calls)},
        )


recipe = VisionImagesRecipe()
