"""Recipe ``core-anyorder``: one two-stream step model, trained on random orders, generates
in any order it is given.

Task ``arith``: sequences ``c, x_1, x_2, ...`` with ``x_{i+1} = (x_i + c) mod vocab_size``
and ``c`` in ``1..max_stride``. The prompt (``c`` and ``x_1``) is the first, given step;
every other position is then determined, so a generated sequence is either exactly right
or wrong. Training draws a fresh random order of the remaining positions for every row
(any-order AR, XLNet's permutation objective, Yang et al. 2019, arXiv:1906.08237);
evaluation generates in each ordering of ``orderings`` (``reverse`` is right to left;
every other name is looked up in ``ar_core.registry.orderings``) and reports the
exact-match accuracy and the network calls per sequence.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import pydantic
import torch

from ar_core import registry
from ar_core.model import Transformer, TransformerConfig
from ar_core.ordering import Plan
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_core.steps import TwoStreamStepModel, generate_steps, query_stream_loss
from ar_core.trainer import TrainConfig, Trainer, read_metrics

PROMPT = 2  # c and x_1


class AnyOrderConfig(pydantic.BaseModel):
    """Settings of ``core-anyorder``; the defaults train in a few minutes on 2 CPU cores."""

    model_config = pydantic.ConfigDict(extra="forbid")

    task: Literal["arith"] = "arith"  # the only task so far (see the module docstring)
    vocab_size: int = pydantic.Field(16, ge=4)  # small enough to learn on a CPU in minutes
    length: int = pydantic.Field(10, ge=PROMPT + 1, le=64)  # positions per sequence
    max_stride: int = pydantic.Field(5, ge=1)  # c in 1..max_stride; larger is harder
    steps: int = pydantic.Field(800, ge=1)  # optimizer updates
    batch_size: int = pydantic.Field(64, ge=1)
    lr: float = pydantic.Field(3e-3, gt=0)  # high, fine for a 2-layer model with warm-up
    dim: int = pydantic.Field(64, ge=8)  # model width
    n_layers: int = pydantic.Field(2, ge=1)  # 2 layers: one to gather the prompt, one to read it
    n_heads: int = pydantic.Field(4, ge=1)
    orderings: list[str] = ["raster", "reverse", "random", "block"]
    eval_sequences: int = pydantic.Field(256, ge=1)  # prompts per ordering
    temperature: float = pydantic.Field(0.0, ge=0)  # 0: exact match of the model's mode
    seed: int = 0  # model init, data order, random orderings, eval prompts
    progress_bar: bool = True  # the Trainer's tqdm bar
    # a model this small runs fastest on one thread (more threads only contend); 0 = torch's
    threads: int = pydantic.Field(1, ge=0)

    @pydantic.model_validator(mode="after")
    def _check(self) -> AnyOrderConfig:
        if self.max_stride >= self.vocab_size:
            raise ValueError(
                f"max_stride ({self.max_stride}) must be below vocab_size ({self.vocab_size})"
            )
        return self


# -- data ------------------------------------------------------------------------------------


def arith_sequences(
    generator: torch.Generator, batch_size: int, length: int, vocab_size: int, max_stride: int
) -> torch.Tensor:
    """(B, length) sequences ``c, x_1, x_1 + c, x_1 + 2c, ...`` (mod vocab_size)."""
    c = torch.randint(1, max_stride + 1, (batch_size, 1), generator=generator)  # (B, 1)
    x1 = torch.randint(0, vocab_size, (batch_size, 1), generator=generator)  # (B, 1)
    return torch.cat([c, (x1 + c * torch.arange(length - 1)) % vocab_size], dim=1)  # (B, L)


def prompt_slot_steps(length: int) -> torch.Tensor:
    """Step of each slot when the prompt is step 0 and then one position a step: (L,)."""
    return torch.cat([torch.zeros(PROMPT, dtype=torch.long), torch.arange(1, length - PROMPT + 1)])


class ArithData:
    """``data(generator, batch_size) -> (tokens, order, slot_steps)`` for the Trainer: the
    prompt first, then a fresh random order of the other positions for every row."""

    def __init__(self, length: int, vocab_size: int, max_stride: int) -> None:
        self.length, self.vocab_size, self.max_stride = length, vocab_size, max_stride
        self.slot_steps = prompt_slot_steps(length)

    def __call__(
        self, generator: torch.Generator, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L = self.length
        tokens = arith_sequences(generator, batch_size, L, self.vocab_size, self.max_stride)
        rest = torch.argsort(torch.rand(batch_size, L - PROMPT, generator=generator), dim=1)
        prompt = torch.arange(PROMPT).expand(batch_size, PROMPT)
        order = torch.cat([prompt, rest + PROMPT], dim=1)  # (B, L)
        return tokens, order, self.slot_steps.expand(batch_size, L)


def two_stream_loss(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """The Trainer's ``loss_fn``: the query-stream cross-entropy (every row shares the steps)."""
    tokens, order, slot_steps = batch
    return query_stream_loss(model(tokens, order, slot_steps[0]), tokens, order)


# -- orderings ---------------------------------------------------------------------------------


def prompted_plan(name: str, length: int, generator: torch.Generator) -> Plan:
    """The prompt as step 0, then the other positions in the ordering ``name``."""
    rest = length - PROMPT
    if name == "reverse":
        steps = [[PROMPT + i] for i in reversed(range(rest))]
    else:
        plan = registry.orderings.get(name)().plan((rest,), generator=generator)
        steps = [(s + PROMPT).tolist() for s in plan.steps]
    return Plan([list(range(PROMPT)), *steps], (length,))


def build_model(config: AnyOrderConfig) -> TwoStreamStepModel:
    torch.manual_seed(config.seed)
    cfg = TransformerConfig(
        vocab_size=config.vocab_size + 2,
        dim=config.dim,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        max_seq_len=2 * (config.length + 1),
    )
    return TwoStreamStepModel(Transformer(cfg), config.vocab_size)


def evaluate(
    model: TwoStreamStepModel, config: AnyOrderConfig, *, every: bool = False
) -> tuple[list[list[object]], list[str]]:
    """Rows (ordering, exact match, calls per sequence) and one generated sequence per
    ordering (``every``: all of them)."""
    gen = torch.Generator().manual_seed(config.seed + 1000)
    prompts = arith_sequences(
        gen, config.eval_sequences, config.length, config.vocab_size, config.max_stride
    )
    rows: list[list[object]] = []
    shown: list[str] = []
    model.eval()
    for i, name in enumerate(config.orderings):
        plan = prompted_plan(name, config.length, gen)
        out = generate_steps(
            model,
            plan,
            batch_size=config.eval_sequences,
            prompt=prompts,
            given_steps=1,
            temperature=config.temperature,
            generator=gen,
        )
        exact = (out.tokens == prompts.to(out.tokens.device)).all(dim=1).float().mean().item()
        rows.append([name, round(exact, 4), out.calls])
        picked = out.tokens if every else out.tokens[i % config.eval_sequences][None]
        for row in picked:
            shown.append(f"{name:>8}: " + " ".join(str(int(t)) for t in row))
    return rows, shown


# -- the recipe ----------------------------------------------------------------------------------


class AnyOrderRecipe(RecipeBase):
    name = "core-anyorder"
    description = "two-stream step model: train on random orders, generate in any order"
    config_class = AnyOrderConfig
    in_demo = True

    def demo_config(self) -> AnyOrderConfig:
        # 8 positions and strides 1..3 learn to 100% in ~400 updates (~20 s on 2 cores)
        return AnyOrderConfig(length=8, max_stride=3, steps=400, eval_sequences=128)

    def _run(self, config: AnyOrderConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        for name in config.orderings:  # fail before training, not after
            if name != "reverse":
                registry.orderings.get(name)
        model = build_model(config)
        data = ArithData(config.length, config.vocab_size, config.max_stride)
        train_config = TrainConfig(
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            weight_decay=0.0,  # memorising a small table: decay only slows it
            warmup_steps=max(1, config.steps // 10),
            out_dir=out_dir / "train",
            seed=config.seed,
            log_every=max(1, config.steps // 50),
            progress=config.progress_bar,
        )
        progress(f"training {config.steps} steps on random orders")
        start = time.perf_counter()
        Trainer(model, two_stream_loss, data, train_config).train()
        train_seconds = time.perf_counter() - start
        model.save_pretrained(out_dir / "model")

        progress("generating in every ordering")
        rows, shown = evaluate(model, config)
        curve = [(float(r["step"]), float(r["loss"])) for r in read_metrics(out_dir / "train")]
        floor = _prompt_entropy(config) / config.length
        return RecipeResult(
            title="core-anyorder: any-order generation with a two-stream step model",
            summary=(
                f"task {config.task}: {config.length} positions, vocab {config.vocab_size}, "
                f"strides 1..{config.max_stride}; trained {config.steps} steps in "
                f"{train_seconds:.1f} s on random orders"
            ),
            tables=[
                Table(
                    "exact match per ordering",
                    ["ordering", "exact match", "network calls / sequence"],
                    rows,
                    note=(
                        f"{config.eval_sequences} prompts (c, x_1), seed {config.seed}, "
                        f"temperature {config.temperature}; calls include the prompt prefill"
                    ),
                )
            ],
            curves={"train loss": curve},
            samples=shown,
            metrics={
                "loss_floor": round(floor, 4),  # the prompt positions cannot be predicted
                **{f"exact_match/{r[0]}": float(r[1]) for r in rows},  # type: ignore[arg-type]
            },
        )

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        config = self.read_config(checkpoint_dir, eval_sequences=n)
        progress(f"loading {checkpoint_dir / 'model'}")
        model = TwoStreamStepModel.from_pretrained(Path(checkpoint_dir) / "model")
        rows, shown = evaluate(model, config, every=True)
        return RecipeResult(
            title="core-anyorder samples",
            tables=[Table("exact match per ordering", ["ordering", "exact match", "calls"], rows)],
            samples=shown,
        )


def _prompt_entropy(config: AnyOrderConfig) -> float:
    """Nats of the prompt (c uniform in 1..max_stride, x_1 uniform): the loss floor x L."""
    return math.log(config.max_stride) + math.log(config.vocab_size)


recipe = AnyOrderRecipe()
