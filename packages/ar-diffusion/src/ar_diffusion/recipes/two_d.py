"""Recipe ``diffusion-2d``: Transition Matching against Euler flow matching on 2-D mixtures.

data (8 Gaussians, two moons or a checkerboard; :mod:`ar_diffusion.toy2d`) -> four
generators of :mod:`ar_diffusion.transition` trained on it (DTM, ARTM, FHTM and Euler
flow matching; the MLP backbone of DTM, ARTM and FM is the same size) -> samples at
2, 4, 8 and 32 transitions -> sliced Wasserstein-1 and squared MMD to fresh data, the
backbone and flow-head calls per sample, milliseconds per sample -> a table and a
scatter plot (one row per method, one column per step count, the data last).

Shaul et al., "Transition Matching" (2025, arXiv:2506.23589): at few backbone calls a
stochastic transition (DTM) stays close to the data where Euler's deterministic step
averages modes.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
import torch
from torch import Tensor

from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_diffusion.toy2d import mmd2, sample_2d, sliced_wasserstein
from ar_diffusion.transition import ARTM, DTM, FHTM, EulerFlowMatching, TMSample

Method = Literal["dtm", "artm", "fhtm", "fm"]
Generator = DTM | ARTM | FHTM | EulerFlowMatching
LABELS = {"dtm": "DTM", "artm": "ARTM", "fhtm": "FHTM", "fm": "Euler FM"}


class Diffusion2DConfig(pydantic.BaseModel):
    """Settings of ``diffusion-2d``; the defaults train in a few minutes on 2 cores."""

    model_config = pydantic.ConfigDict(extra="forbid")

    data: Literal["8gaussians", "moons", "checkerboard"] = "8gaussians"
    methods: list[Method] = ["dtm", "artm", "fhtm", "fm"]
    steps: list[int] = [2, 4, 8, 32]  # transitions (backbone steps) to sample with
    updates: int = pydantic.Field(default=1500, ge=1)  # optimizer updates per method
    batch_size: int = pydantic.Field(default=256, ge=2)
    # FHTM's batches hold this many tokens (2 (T + 1) per sequence): T = 32 rows cost
    # 17 times a T = 2 row, so a fixed row count would be dominated by the long ones
    fhtm_tokens: int = pydantic.Field(default=4096, ge=8)
    lr: float = pydantic.Field(default=5e-3, gt=0)  # one-cycle peak; small MLPs take it
    width: int = pydantic.Field(default=128, ge=8)  # MLP backbone width (DTM, ARTM, FM)
    depth: int = pydantic.Field(default=3, ge=1)  # residual blocks of the MLP backbone
    fhtm_width: int = pydantic.Field(default=64, ge=8)  # FHTM's transformer width
    fhtm_layers: int = pydantic.Field(default=2, ge=1)
    head_width: int = pydantic.Field(default=64, ge=8)  # the flow heads' AdaLN MLP
    head_steps: int = pydantic.Field(default=8, ge=1)  # Euler steps of a head per draw
    samples: int = pydantic.Field(default=2000, ge=10)  # per (method, steps) cell
    seed: int = 0
    progress_bar: bool = True
    threads: int = pydantic.Field(default=1, ge=0)  # tiny models: one thread is fastest

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


# -- pieces ----------------------------------------------------------------------------------


def build(method: str, config: Diffusion2DConfig) -> Generator:
    """An untrained generator; ARTM and FHTM train on the config's step counts."""
    w, d, hw, hs = config.width, config.depth, config.head_width, config.head_steps
    train_steps = tuple(sorted(set(config.steps)))
    if method == "dtm":
        return DTM(width=w, depth=d, head_width=hw, head_steps=hs)
    if method == "fm":
        return EulerFlowMatching(width=w, depth=d)
    if method == "artm":
        return ARTM(width=w, depth=d, head_width=hw, head_steps=hs, train_steps=train_steps)
    return FHTM(
        width=config.fhtm_width,
        layers=config.fhtm_layers,
        heads=max(1, config.fhtm_width // 32),
        head_width=hw,
        head_steps=hs,
        train_steps=train_steps,
    )


def train(model: Generator, config: Diffusion2DConfig, label: str) -> list[tuple[float, float]]:
    """Adam with a one-cycle learning rate on fresh data every update; the loss curve."""
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.updates)
    curve: list[tuple[float, float]] = []
    bar = tqdm(range(config.updates), desc=label, disable=not config.progress_bar, leave=False)
    for i in bar:
        if isinstance(model, FHTM):
            T = model.train_steps[int(torch.randint(0, len(model.train_steps), (), generator=gen))]
            rows = max(2, config.fhtm_tokens // (model.dim * (T + 1)))
            loss = model.loss(sample_2d(config.data, rows, gen), steps=T)
        else:
            loss = model.loss(sample_2d(config.data, config.batch_size, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if i % 25 == 0 or i == config.updates - 1:
            curve.append((float(i), loss.item()))
    return curve


def draw(model: Generator, n: int, steps: int, seed: int) -> tuple[TMSample, float]:
    """``n`` samples at ``steps`` transitions: (TMSample, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    out = model.sample(n, steps, generator=gen)
    return out, time.perf_counter() - start


def scatter_png(panels: list[list[Tensor]], path: Path, size: int = 120, lim: float = 3.0) -> Path:
    """A grid of 2-D scatter plots as a grayscale PNG (rows x columns of ``size`` px
    panels on [-lim, lim]^2, 4-px white gaps); written with zlib, no imaging library."""
    rows, cols, gap = len(panels), max(len(r) for r in panels), 4
    img = np.full((rows * (size + gap) + gap, cols * (size + gap) + gap), 255, dtype=np.uint8)
    for r, row in enumerate(panels):
        for c, pts in enumerate(row):
            y0, x0 = gap + r * (size + gap), gap + c * (size + gap)
            panel = img[y0 : y0 + size, x0 : x0 + size]
            panel[:] = 245
            p = pts.detach().float().numpy()
            ix = ((p[:, 0] + lim) / (2 * lim) * (size - 1)).round().astype(int)
            iy = ((lim - p[:, 1]) / (2 * lim) * (size - 1)).round().astype(int)
            keep = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
            panel[iy[keep], ix[keep]] = 0
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(img.shape[0]))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (
        img.shape[1].to_bytes(4, "big") + img.shape[0].to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    )
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


# -- the recipe ------------------------------------------------------------------------------


class Diffusion2DRecipe(RecipeBase):
    name = "diffusion-2d"
    description = "Transition Matching (DTM, ARTM, FHTM) vs Euler flow matching on 2-D mixtures"
    config_class = Diffusion2DConfig
    in_demo = True

    def demo_config(self) -> Diffusion2DConfig:
        # ~15 s of CPU (measured: 25 s at 300 updates and 1000 samples on a busy 2-core
        # machine); at these sizes DTM still halves Euler FM's distance at T = 2
        return Diffusion2DConfig(
            updates=200,
            width=64,
            depth=2,
            head_width=32,
            head_steps=4,
            fhtm_width=32,
            fhtm_tokens=1024,
            samples=600,
            progress_bar=False,
        )

    def _run(self, config: Diffusion2DConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        ref = sample_2d(config.data, config.samples, torch.Generator().manual_seed(config.seed + 7))
        floor_ref = sample_2d(
            config.data, config.samples, torch.Generator().manual_seed(config.seed + 8)
        )
        proj = torch.Generator().manual_seed(0)
        floor = sliced_wasserstein(floor_ref, ref, generator=proj)
        rows: list[list[object]] = []
        panels: list[list[Tensor]] = []
        metrics: dict[str, float] = {"sw_data_vs_data": floor}
        curves: dict[str, list[tuple[float, float]]] = {}
        for method in config.methods:
            label = LABELS[method]
            progress(f"training {label} on {config.data} ({config.updates} updates)")
            model = build(method, config)
            start = time.perf_counter()
            curves[f"{label} loss"] = train(model, config, label)
            train_s = time.perf_counter() - start
            model.eval()
            torch.save(model.state_dict(), out_dir / f"{method}.pt")
            row_panels = []
            for steps in config.steps:
                out, seconds = draw(model, config.samples, steps, config.seed + 100 + steps)
                sw = sliced_wasserstein(out.x, ref, generator=torch.Generator().manual_seed(0))
                mmd = mmd2(out.x[:1000], ref[:1000])
                rows.append(
                    [
                        label,
                        steps,
                        out.backbone_calls,
                        out.head_calls,
                        round(sw, 4),
                        round(mmd, 5),
                        round(1000 * seconds / config.samples, 4),
                    ]
                )
                metrics[f"{method}_T{steps}_sw"] = sw
                metrics[f"{method}_T{steps}_mmd"] = mmd
                row_panels.append(out.x)
            metrics[f"{method}_train_seconds"] = train_s
            panels.append([*row_panels, ref])
        picture = scatter_png(panels, out_dir / "samples.png")
        table = Table(
            f"{config.data}: distance to the data against network calls",
            ["method", "T", "backbone calls", "head calls", "sliced W1", "MMD^2", "ms / sample"],
            rows,
            note=(
                f"{config.samples} samples per cell vs {config.samples} fresh data points "
                f"(data vs data: sliced W1 {floor:.4f}); seed {config.seed}; "
                f"{config.updates} updates per method; head calls: {config.head_steps} Euler "
                f"steps per draw"
            ),
        )
        summary = self._summary(config, metrics)
        return RecipeResult(
            title=f"diffusion-2d: transition matching on {config.data}",
            summary=summary,
            tables=[table],
            images=[
                (
                    "rows: "
                    + ", ".join(LABELS[m] for m in config.methods)
                    + "; columns: T = "
                    + ", ".join(map(str, config.steps))
                    + ", then the data",
                    picture,
                )
            ],
            curves=curves,
            metrics={k: round(v, 5) for k, v in metrics.items()},
        )

    @staticmethod
    def _summary(config: Diffusion2DConfig, m: dict[str, float]) -> str:
        t = min(config.steps)
        if "dtm" in config.methods and "fm" in config.methods:
            d, f = m[f"dtm_T{t}_sw"], m[f"fm_T{t}_sw"]
            return (
                f"at T = {t} backbone calls DTM's sliced W1 is {d:.3f} against Euler flow "
                f"matching's {f:.3f} ({d / f:.2f}x); data vs data {m['sw_data_vs_data']:.3f}"
            )
        return f"{len(config.methods)} methods at T = {config.steps}"


recipe = Diffusion2DRecipe()
