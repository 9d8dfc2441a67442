"""Recipe ``text-sets``: Order Matters' sorting experiment (:mod:`ar_text.sets`).

Sorting N numbers given in random order, the target the ascending order of their
positions: a Read-Process-Write set encoder against an LSTM encoder over the shuffled
input, both with the same pointer decoder, the same data (seed) and the same updates.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydantic
import torch

from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_text.sets import LSTMPointer, ReadProcessWrite, sorting_accuracy, train_sorter


class SetsConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    n: int = pydantic.Field(5, ge=2)  # numbers per set
    steps: int = pydantic.Field(400, ge=1)
    batch_size: int = pydantic.Field(64, ge=1)
    lr: float = pydantic.Field(3e-3, gt=0)
    hidden: int = pydantic.Field(32, ge=1)
    process_steps: int = pydantic.Field(5, ge=1)
    eval_rows: int = pydantic.Field(2000, ge=1)
    seed: int = 0
    threads: int = pydantic.Field(1, ge=0)


class SetsRecipe(RecipeBase):
    name = "text-sets"
    description = "Order Matters: Read-Process-Write vs an LSTM encoder at sorting N numbers"
    config_class = SetsConfig
    in_demo = False  # ~12 s of CPU, over the demo's remaining budget on a loaded machine

    def demo_config(self) -> SetsConfig:
        return SetsConfig(steps=200)

    def _run(self, config: SetsConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        rows: list[list[object]] = []
        curves: dict[str, list[tuple[float, float]]] = {}
        metrics: dict[str, float] = {}
        for key, label in (("rpw", "Read-Process-Write"), ("lstm", "LSTM encoder")):
            torch.manual_seed(config.seed)
            model: ReadProcessWrite | LSTMPointer = (
                ReadProcessWrite(hidden=config.hidden, process_steps=config.process_steps)
                if key == "rpw"
                else LSTMPointer(hidden=config.hidden)
            )
            progress(f"training {label}: {config.steps} updates")
            t0 = time.perf_counter()
            losses = train_sorter(
                model, config.n, config.steps, config.batch_size, config.lr, config.seed
            )
            seconds = time.perf_counter() - t0
            exact, positions = sorting_accuracy(
                model, config.n, config.eval_rows, seed=config.seed + 123
            )
            rows.append([label, round(exact, 4), round(positions, 4), round(seconds, 1)])
            curves[f"{label} loss"] = [(float(i), v) for i, v in enumerate(losses)]
            metrics[f"{key}_exact"] = round(exact, 4)
            metrics[f"{key}_positions"] = round(positions, 4)
        return RecipeResult(
            title=f"text-sets: sorting {config.n} numbers given in random order",
            summary=(
                f"rows sorted exactly: Read-Process-Write {metrics['rpw_exact']:.3f}, "
                f"LSTM encoder {metrics['lstm_exact']:.3f}"
            ),
            tables=[
                Table(
                    "sorting (greedy pointer decoding, fresh rows)",
                    ["encoder", "rows sorted exactly", "positions right", "training seconds"],
                    rows,
                    note=(
                        f"N = {config.n}, {config.steps} updates of {config.batch_size}, "
                        f"hidden {config.hidden}, {config.process_steps} process steps, "
                        f"{config.eval_rows} evaluation rows, seed {config.seed}"
                    ),
                )
            ],
            curves=curves,
            metrics=metrics,
        )


recipe = SetsRecipe()
