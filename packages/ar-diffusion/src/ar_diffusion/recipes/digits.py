"""Recipe ``diffusion-digits``: continuous-token AR/diffusion hybrids on 8x8 digits.

data (scikit-learn's 8x8 digits through :func:`ar_vision.data.load_digits`, pixels scaled
to [-1, 1], cut into 16 tokens of 2x2 patches) -> class-conditional generators trained
for the same number of updates on the same number of images per update:

* **ACDiT** (:mod:`ar_diffusion.acdit`) with block sizes 1, 4 and 16: 16 blocks of one
  token (token-level AR with a per-token flow), 4 blocks of 4 tokens, one block of all 16
  (a plain diffusion transformer); ``steps`` Euler steps per block, every finished block
  committed to the KV cache;
* **ARFlow** (:mod:`ar_diffusion.arflow`): sequences of ``arflow_images`` same-class images
  at sorted noise levels, sampled in that many recurrent steps;
* **flow matching**: a plain class-conditional velocity MLP over the 64 pixels, ``steps``
  Euler steps;

-> samples per class -> class accuracy with ar-vision's metrics classifier, the Fréchet
distance on its features to the test images (floor: test vs train), network calls and
milliseconds per image -> a table, one sample grid per generator, the loss curves.

ar-vision is an optional dependency (``pip install 'ar-diffusion[vision]'``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_diffusion.acdit import ACDiT
from ar_diffusion.arflow import ARFlow, class_sequences
from ar_diffusion.heads.base import timestep_embedding
from ar_diffusion.transition import ResMLP

Method = Literal["acdit-1", "acdit-4", "acdit-16", "arflow", "fm"]
LABELS = {
    "acdit-1": "ACDiT (block 1)",
    "acdit-4": "ACDiT (block 4)",
    "acdit-16": "ACDiT (block 16)",
    "arflow": "ARFlow",
    "fm": "flow matching",
}
NUM_CLASSES, SIDE, PATCH = 10, 8, 2
TOKENS, TOKEN_DIM = (SIDE // PATCH) ** 2, PATCH * PATCH


class DiffusionDigitsConfig(pydantic.BaseModel):
    """Settings of ``diffusion-digits``; the defaults train in several minutes on 2 cores."""

    model_config = pydantic.ConfigDict(extra="forbid")

    methods: list[Method] = ["acdit-1", "acdit-4", "acdit-16", "arflow", "fm"]
    steps: list[int] = [2, 8]  # Euler steps per block (ACDiT) or in all (flow matching)
    arflow_images: int = pydantic.Field(default=8, ge=1)  # ARFlow: sequence length = calls
    arflow_chunk: int = pydantic.Field(default=1, ge=1)  # images per retention chunk
    updates: int = pydantic.Field(default=1500, ge=1)  # optimizer updates per generator
    batch_size: int = pydantic.Field(default=64, ge=2)  # images per update (all methods)
    lr: float = pydantic.Field(default=2e-3, gt=0)  # one-cycle peak
    width: int = pydantic.Field(default=64, ge=8)  # transformer width (ACDiT, ARFlow)
    layers: int = pydantic.Field(default=3, ge=1)
    heads: int = pydantic.Field(default=2, ge=1)
    fm_width: int = pydantic.Field(default=256, ge=8)  # the flow-matching MLP
    fm_depth: int = pydantic.Field(default=3, ge=1)
    samples_per_class: int = pydantic.Field(default=20, ge=1)
    seed: int = 0  # data split, model init, batches, samples
    progress_bar: bool = True
    threads: int = pydantic.Field(default=1, ge=0)

    @pydantic.field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or any(s < 1 for s in v):
            raise ValueError(f"steps must be a non-empty list of integers >= 1, got {v}")
        return v

    @pydantic.field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"methods must be a non-empty list without repeats, got {v}")
        return v

    @pydantic.model_validator(mode="after")
    def _arflow(self) -> DiffusionDigitsConfig:
        if self.arflow_images % self.arflow_chunk:
            raise ValueError(
                f"arflow_images={self.arflow_images} must be a multiple of arflow_chunk="
                f"{self.arflow_chunk} (a pair layout needs an even count)"
            )
        if "arflow" in self.methods and self.batch_size < self.arflow_images:
            raise ValueError(
                f"batch_size={self.batch_size} holds fewer images than one ARFlow sequence "
                f"(arflow_images={self.arflow_images})"
            )
        return self


# -- the plain baseline and layouts ------------------------------------------------------


class PixelFlow(nn.Module):
    """Class-conditional flow matching over the 64 pixels: a residual MLP of
    (x_t, time features, one-hot class) -> velocity."""

    def __init__(self, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.net = ResMLP(SIDE * SIDE + 32 + NUM_CLASSES, width, depth)
        self.out = nn.Linear(width, SIDE * SIDE)

    def velocity(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """x (B, 64), t (B,), labels (B,) -> (B, 64)."""
        onehot = nn.functional.one_hot(labels, NUM_CLASSES).float()
        feats = torch.cat([x, timestep_embedding(t, 32), onehot], dim=-1)
        out: Tensor = self.out(self.net(feats))
        return out

    def loss(self, x1: Tensor, labels: Tensor) -> Tensor:
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return ((self.velocity(xt, t, labels) - (x1 - x0)) ** 2).mean()

    @torch.no_grad()
    def sample(self, labels: Tensor, steps: int, generator: torch.Generator) -> Tensor:
        x = torch.randn(labels.shape[0], SIDE * SIDE, generator=generator)
        for s in range(steps):
            t = torch.full((labels.shape[0],), s / steps)
            x = x + self.velocity(x, t, labels) / steps
        return x


def to_patches(images: Tensor) -> Tensor:
    """(B, 1, 8, 8) -> (B, 16, 4): 2x2 patches in raster order."""
    B = images.shape[0]
    x = images.reshape(B, SIDE // PATCH, PATCH, SIDE // PATCH, PATCH).permute(0, 1, 3, 2, 4)
    return x.reshape(B, TOKENS, TOKEN_DIM)


def from_patches(tokens: Tensor) -> Tensor:
    """(B, 16, 4) -> (B, 1, 8, 8)."""
    B, g = tokens.shape[0], SIDE // PATCH
    x = tokens.reshape(B, g, g, PATCH, PATCH).permute(0, 1, 3, 2, 4)
    return x.reshape(B, 1, SIDE, SIDE)


Generator = ACDiT | ARFlow | PixelFlow


def build(method: str, config: DiffusionDigitsConfig) -> Generator:
    torch.manual_seed(config.seed)
    w, layers, heads = config.width, config.layers, config.heads
    if method.startswith("acdit-"):
        block = int(method.split("-")[1])
        return ACDiT(
            TOKEN_DIM, TOKENS, block, width=w, layers=layers, heads=heads, num_classes=NUM_CLASSES
        )
    if method == "arflow":
        return ARFlow(
            SIDE,
            1,
            PATCH,
            config.arflow_images,
            NUM_CLASSES,
            width=w,
            layers=layers,
            heads=heads,
            images_per_chunk=config.arflow_chunk,
        )
    return PixelFlow(config.fm_width, config.fm_depth)


def loss_of(
    model: Generator,
    x: Tensor,
    y: Tensor,
    config: DiffusionDigitsConfig,
    gen: torch.Generator,
) -> Tensor:
    """One batch of ``batch_size`` images: ARFlow draws batch_size / n same-class
    sequences of n images, the others batch_size rows."""
    if isinstance(model, ARFlow):
        seq, labels = class_sequences(
            x, y, model.n_images, config.batch_size // model.n_images, gen
        )
        return model.loss(seq, labels)
    rows = torch.randint(0, x.shape[0], (config.batch_size,), generator=gen)
    if isinstance(model, ACDiT):
        return model.loss(to_patches(x[rows]), y[rows])
    return model.loss(x[rows].flatten(1), y[rows])


def train(
    model: Generator, x: Tensor, y: Tensor, config: DiffusionDigitsConfig, label: str
) -> list[tuple[float, float]]:
    """Adam with a one-cycle learning rate; the loss curve."""
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.updates)
    curve: list[tuple[float, float]] = []
    model.train()
    bar = tqdm(range(config.updates), desc=label, disable=not config.progress_bar, leave=False)
    for i in bar:
        loss = loss_of(model, x, y, config, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if i % 25 == 0 or i == config.updates - 1:
            curve.append((float(i), loss.item()))
    model.eval()
    return curve


@torch.no_grad()
def draw(model: Generator, labels: Tensor, steps: int, seed: int) -> tuple[Tensor, int]:
    """Images (B, 1, 8, 8) in [0, 1] for ``labels`` and the network calls per image."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model, ACDiT):
        tokens, calls = model.sample(labels.shape[0], steps, generator=gen, labels=labels)
        x = from_patches(tokens)
    elif isinstance(model, ARFlow):
        out = model.sample(labels, generator=gen)
        x, calls = out.images, out.calls
    else:
        x, calls = model.sample(labels, steps, gen).reshape(-1, 1, SIDE, SIDE), steps
    return ((x + 1) / 2).clamp(0, 1), calls


# -- the recipe ------------------------------------------------------------------------------


def _vision() -> Any:
    try:
        from ar_vision import data, metrics
    except ImportError:
        raise ConfigError(
            "diffusion-digits needs ar-vision (its digits and metrics classifier): "
            "pip install 'ar-diffusion[vision]'"
        ) from None
    return data, metrics


class DiffusionDigitsRecipe(RecipeBase):
    name = "diffusion-digits"
    description = "ACDiT (blocks 1/4/16), ARFlow and flow matching on 8x8 digits"
    config_class = DiffusionDigitsConfig
    in_demo = False  # minutes of CPU for samples that look like digits; see the docs page

    def demo_config(self) -> DiffusionDigitsConfig:
        return DiffusionDigitsConfig(
            updates=300, steps=[4], samples_per_class=10, progress_bar=False
        )

    def _run(
        self, config: DiffusionDigitsConfig, out_dir: Path, progress: Progress
    ) -> RecipeResult:
        data, metrics = _vision()
        out_dir.mkdir(parents=True, exist_ok=True)
        train_x, train_y = data.load_digits(8, "train", config.seed)
        test_x, test_y = data.load_digits(8, "test", config.seed)
        x = train_x * 2 - 1  # the generators work in [-1, 1]
        metrics.digits_classifier()  # trained and cached on first use
        labels = torch.arange(NUM_CLASSES).repeat_interleave(config.samples_per_class)
        floor = metrics.frechet_distance(test_x, train_x)
        rows: list[list[object]] = [
            [
                "test images",
                "-",
                "-",
                0,
                round(metrics.class_accuracy(test_x, test_y), 3),
                round(floor, 3),
                0.0,
            ]
        ]
        m: dict[str, float] = {"frechet_test_vs_train": floor}
        curves: dict[str, list[tuple[float, float]]] = {}
        images: list[tuple[str, Path]] = []
        for method in config.methods:
            label = LABELS[method]
            progress(f"training {label} ({config.updates} updates)")
            model = build(method, config)
            start = time.perf_counter()
            curves[f"{label} loss"] = train(model, x, train_y, config, label)
            m[f"{method}_train_seconds"] = time.perf_counter() - start
            torch.save(model.state_dict(), out_dir / f"{method}.pt")
            block = method.split("-")[1] if method.startswith("acdit") else "-"
            step_list = [config.arflow_images] if method == "arflow" else config.steps
            for steps in step_list:
                start = time.perf_counter()
                imgs, calls = draw(model, labels, steps, config.seed + 100 + steps)
                ms = 1000 * (time.perf_counter() - start) / labels.numel()
                acc = metrics.class_accuracy(imgs, labels)
                fd = metrics.frechet_distance(imgs, test_x)
                per_block = f"{steps} / block" if method.startswith("acdit") else str(steps)
                rows.append(
                    [label, block, per_block, calls, round(acc, 3), round(fd, 3), round(ms, 3)]
                )
                key = f"{method}_S{steps}"
                m.update(
                    {
                        f"{key}_accuracy": acc,
                        f"{key}_frechet": fd,
                        f"{key}_calls": calls,
                        f"{key}_ms": ms,
                    }
                )
            grid = metrics.save_grid(
                _per_class(imgs, config.samples_per_class),
                out_dir / f"samples-{method}.png",
                nrow=NUM_CLASSES,
            )
            images.append((f"{label}, {calls} calls per image: one column per class 0-9", grid))
        table = Table(
            "8x8 digits: class accuracy and Fréchet distance against network calls per image",
            [
                "method",
                "block",
                "Euler steps",
                "calls / image",
                "class accuracy",
                "Fréchet",
                "ms / image",
            ],
            rows,
            note=(
                f"{labels.numel()} samples ({config.samples_per_class} per class) vs the "
                f"{test_x.shape[0]} test images; {config.updates} updates of "
                f"{config.batch_size} images per generator; seed {config.seed}; "
                f"ARFlow: {config.arflow_images} images per sequence = steps"
            ),
        )
        return RecipeResult(
            title="diffusion-digits: ACDiT, ARFlow and flow matching on 8x8 digits",
            summary=_summary(rows),
            tables=[table],
            images=images,
            curves=curves,
            metrics={k: round(float(v), 5) for k, v in m.items()},
        )


def _per_class(images: Tensor, per_class: int, show: int = 8) -> Tensor:
    """Up to ``show`` samples per class laid out so that each grid column is one class."""
    k = min(show, per_class)
    by_class = images.reshape(NUM_CLASSES, per_class, *images.shape[1:])[:, :k]  # (10, k, ...)
    return by_class.transpose(0, 1).reshape(NUM_CLASSES * k, *images.shape[1:])


def _summary(rows: list[list[Any]]) -> str:
    best = max(rows[1:], key=lambda r: (r[4], -r[5]))
    return (
        f"best class accuracy {best[4]:.3f} by {best[0]} at {best[3]} calls per image "
        f"(Fréchet {best[5]:.3f}; test images {rows[0][4]:.3f}, floor {rows[0][5]:.3f})"
    )


recipe = DiffusionDigitsRecipe()
