"""Recipe ``text-stargraph``: an insertion LM (ILM) vs a left-to-right AR model on
star-graph path finding (Bachmann & Nagarajan 2024; Patel et al. 2025), end to end.

One linear pipeline over :mod:`ar_text.stargraph`, as ``ar bench stargraph_compare``
(:mod:`ar_text.benchmarks.stargraph_compare`) runs it: train each model in stages up to
every evaluation step, measure the exact-match path accuracy on held-out graphs (generator
seed 12345; greedy decoding, the ILM taking the argmax gap then the argmax token), and
report

* a table: final path accuracy, its binomial standard error, the ``1 / degree`` chance
  line (where a teacher-forced AR model that learned the Clever-Hans shortcut sits) and
  the training seconds of each model;
* the accuracy at every evaluation step (a table and one curve per model);
* a few held-out graphs drawn as their arms, with the true path, AR's path and the ILM's
  path and the order in which the ILM inserted its nodes.

``run`` writes ``ar/`` (``Transformer.save_pretrained``) and ``ilm/`` (``config.json``, the
inner Transformer's config, and ``model.safetensors``, the whole InsertionModel including
its stop head); ``sample`` reloads them, validated, and decodes the first ``n`` held-out
graphs again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
from torch import Tensor

from ar_core.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_weights,
    read_config,
    save_model,
)
from ar_core.errors import CheckpointError, ConfigError
from ar_core.model import Transformer
from ar_core.recipes import Progress, RecipeResult, Table, torch_threads
from ar_core.recipes.base import RecipeBase
from ar_core.trainer import Trainer
from ar_text.insertion import InsertionModel
from ar_text.stargraph import (
    StarGraph,
    ar_greedy_paths,
    ar_path_accuracy,
    ar_trainer,
    ilm_greedy_paths,
    ilm_path_accuracy,
    ilm_trainer,
)

TEST_SEED = 12345  # the held-out graphs' generator seed (as ar_text.benchmarks.stargraph_compare)
AR_DIR = "ar"
ILM_DIR = "ilm"
ModelName = Literal["ar", "ilm"]
FIX = "re-run `ar train text-stargraph --out DIR` to write it again"


class StarGraphConfig(pydantic.BaseModel):
    """Settings of ``text-stargraph``; the defaults are the benchmark's degree-3 / arm-2 run
    (about 50 s per 1000 updates per model on one CPU thread)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    degree: int = pydantic.Field(3, ge=2)  # arms at the centre; AR's chance is 1 / degree
    arm_len: int = pydantic.Field(2, ge=1)  # nodes per arm; the path has arm_len + 1 nodes
    steps: int = pydantic.Field(3000, ge=1)  # optimizer updates per model (cosine over them)
    lr: float = pydantic.Field(1e-3, gt=0)
    batch_size: int = pydantic.Field(64, ge=1)
    seed: int = 0  # model init and training graphs (the held-out graphs use seed 12345)
    n_test: int = pydantic.Field(500, ge=1)  # held-out graphs per evaluation
    eval_every: int = pydantic.Field(500, ge=0)  # accuracy-curve spacing; 0 = only at the end
    models: list[ModelName] = ["ar", "ilm"]  # which to train; `--set models=ilm` works
    n_show: int = pydantic.Field(3, ge=0)  # held-out graphs shown with every model's path
    progress_bar: bool = True  # the Trainer's tqdm bar
    # a model this small runs fastest on one thread (more threads only contend); 0 = torch's
    threads: int = pydantic.Field(1, ge=0)

    @pydantic.field_validator("models", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        # `--set models=ilm` or `--set models=ar,ilm` arrive as one string
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @pydantic.field_validator("models")
    @classmethod
    def _models(cls, v: list[ModelName]) -> list[ModelName]:
        if not v:
            raise ValueError("name at least one model: 'ar', 'ilm' or both ('ar,ilm')")
        if len(set(v)) != len(v):
            raise ValueError(f"each model at most once, got {v}")
        return v

    @pydantic.field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v == TEST_SEED:
            raise ValueError(
                f"seed {TEST_SEED} draws the held-out graphs; training on it would train on "
                f"the test set, pick another seed"
            )
        return v

    def task(self) -> StarGraph:
        return StarGraph(degree=self.degree, arm_len=self.arm_len)

    def eval_steps(self) -> list[int]:
        """Steps at which the accuracy is measured: every ``eval_every`` and the last."""
        every = range(self.eval_every, self.steps, self.eval_every) if self.eval_every else []
        return sorted({*every, self.steps})


def held_out_graphs(task: StarGraph, n: int) -> Tensor:
    """The first ``n`` held-out graphs (B, T); the first ``k`` are the same for any n >= k."""
    return task.sample(torch.Generator().manual_seed(TEST_SEED), n)


def std_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` graphs (as the benchmark)."""
    return math.sqrt(max(acc * (1 - acc), 1e-12) / n)


def accuracy(name: ModelName, model: torch.nn.Module, task: StarGraph, test: Tensor) -> float:
    """Exact-match path accuracy, exactly as :mod:`ar_text.stargraph` (and the benchmark)
    measures it; leaves ``model`` in eval mode."""
    if name == "ar":
        assert isinstance(model, Transformer)
        return ar_path_accuracy(model, task, test)
    assert isinstance(model, InsertionModel)
    return ilm_path_accuracy(model, task, test, torch.Generator().manual_seed(0))


# -- decoding for the shown graphs ----------------------------------------------------------


def ar_paths(model: Transformer, task: StarGraph, test: Tensor) -> list[list[int]]:
    """Greedy paths of the AR model (the decoding of :func:`ar_path_accuracy`)."""
    return ar_greedy_paths(model, task, test).tolist()


def ilm_paths(
    model: InsertionModel, task: StarGraph, test: Tensor
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Greedy ILM paths (the decoding of :func:`ilm_path_accuracy`) and, per graph, the
    partial paths after each insertion (read off the states the sampler scored)."""
    model.eval()
    B, P = test.shape[0], task.prompt_len
    states: list[tuple[Tensor, Tensor]] = []

    def scorer(tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        states.append((tokens.clone(), lengths.clone()))
        out: tuple[Tensor, Tensor] = model(tokens, lengths)
        return out

    seq, lens = ilm_greedy_paths(scorer, task, test, torch.Generator().manual_seed(0))
    paths = [seq[b, 1 + P : int(lens[b])].tolist() for b in range(B)]
    # the path part of every state the sampler scored, then the final one; a row that
    # stopped keeps its state, so dropping repeats leaves one state per insertion
    snapshots = [*states, (seq, lens)]
    built: list[list[list[int]]] = [[] for _ in range(B)]
    for tokens, lengths in snapshots:
        for b in range(B):
            state = tokens[b, 1 + P : int(lengths[b])].tolist()
            if state and (not built[b] or built[b][-1] != state):
                built[b].append(state)
    return paths, built


def graph_arms(task: StarGraph, row: Tensor) -> tuple[int, int, list[list[int]]]:
    """(start, goal, arms) of one graph row; each arm listed from the centre outwards."""
    prompt = row[: task.prompt_len].tolist()
    edges = prompt[: 2 * task.degree * task.arm_len]
    child: dict[int, list[int]] = {}
    for u, v in zip(edges[::2], edges[1::2], strict=True):
        child.setdefault(u, []).append(v)
    start, goal = prompt[-3], prompt[-2]
    arms = []
    for first in sorted(child.get(start, [])):
        arm = [first]
        while arm[-1] in child:
            arm.append(child[arm[-1]][0])
        arms.append(arm)
    return start, goal, arms


def render(
    task: StarGraph,
    row: Tensor,
    index: int,
    paths: dict[str, list[int]],
    ilm_build: list[list[int]] | None,
) -> str:
    """One held-out graph and each model's path, a few readable lines."""
    start, goal, arms = graph_arms(task, row)
    edges = row[: 2 * task.degree * task.arm_len].tolist()
    truth = row[task.prompt_len :].tolist()
    lines = [
        f"graph {index}: start {start}, goal {goal}",
        "  arms:  " + "   ".join("-".join(map(str, [start, *arm])) for arm in arms),
        "  edges: " + " ".join(f"{u}>{v}" for u, v in zip(edges[::2], edges[1::2], strict=True)),
        f"  {'true':5s}  {' '.join(map(str, truth))}",
    ]
    for name, path in paths.items():
        mark = "right" if path == truth else "wrong"
        line = f"  {name:5s}  {' '.join(map(str, path)) or '(empty)'}   {mark}"
        if name == "ilm" and ilm_build:
            line += "   built as " + " | ".join(" ".join(map(str, p)) for p in ilm_build)
        lines.append(line)
    return "\n".join(lines)


def shown_graphs(
    task: StarGraph, models: dict[str, torch.nn.Module], test: Tensor
) -> tuple[list[str], dict[str, float]]:
    """The rendered graphs of ``test`` and each model's exact-match rate on them."""
    paths: dict[str, list[list[int]]] = {}
    if test.shape[0] == 0:
        return [], {}
    build: list[list[list[int]]] | None = None
    for name, model in models.items():
        if name == "ar":
            assert isinstance(model, Transformer)
            paths[name] = ar_paths(model, task, test)
        else:
            assert isinstance(model, InsertionModel)
            paths[name], build = ilm_paths(model, task, test)
    truth = test[:, task.prompt_len :].tolist()
    shown = [
        render(
            task,
            test[i],
            i,
            {name: p[i] for name, p in paths.items()},
            None if build is None else build[i],
        )
        for i in range(test.shape[0])
    ]
    rates = {
        name: sum(a == t for a, t in zip(p, truth, strict=True)) / max(1, len(truth))
        for name, p in paths.items()
    }
    return shown, rates


# -- checkpoints ------------------------------------------------------------------------------


def save_ilm(model: InsertionModel, folder: Path) -> None:
    """``folder/config.json`` (the inner Transformer's config) and ``folder/model.safetensors``
    (every weight, the stop head included), written as one atomic folder."""
    save_model(model, folder)


def _check_shape(folder: Path, task: StarGraph, vocab: int, seq_len: int, want_len: int) -> None:
    if vocab != task.vocab_size or seq_len < want_len:
        raise CheckpointError(
            f"{folder / CONFIG_NAME}: vocab_size {vocab}, max_seq_len {seq_len} do not fit "
            f"degree {task.degree}, arm_len {task.arm_len} (vocab_size {task.vocab_size}, "
            f"max_seq_len >= {want_len}) in recipe.json; {FIX}"
        )


def load_ilm(folder: Path, task: StarGraph) -> InsertionModel:
    """The InsertionModel ``save_ilm`` wrote, validated: a missing, corrupted or mismatched
    file is a ``CheckpointError`` naming it."""
    try:
        cfg = read_config(folder)
        _check_shape(
            folder, task, cfg.vocab_size, cfg.max_seq_len, 1 + task.prompt_len + task.path_len
        )
        model = InsertionModel(Transformer(cfg))
        load_weights(model, folder / WEIGHTS_NAME)
    except CheckpointError as exc:
        if FIX in str(exc):
            raise
        raise CheckpointError(f"ILM checkpoint {folder}: {exc}; {FIX}") from None
    return model.eval()


def load_ar(folder: Path, task: StarGraph) -> Transformer:
    """The AR Transformer ``run`` wrote, validated like :func:`load_ilm`."""
    try:
        model = Transformer.from_pretrained(folder)
        _check_shape(
            folder,
            task,
            model.cfg.vocab_size,
            model.cfg.max_seq_len,
            task.prompt_len + task.path_len,
        )
    except CheckpointError as exc:
        if FIX in str(exc):
            raise
        raise CheckpointError(f"AR checkpoint {folder}: {exc}; {FIX}") from None
    return model.eval()


# -- the recipe --------------------------------------------------------------------------------


TRAINERS: dict[str, Callable[..., Trainer]] = {"ar": ar_trainer, "ilm": ilm_trainer}


class StarGraphRecipe(RecipeBase):
    name = "text-stargraph"
    description = "star-graph planning: an insertion LM vs a left-to-right AR model"
    config_class = StarGraphConfig
    in_demo = False

    def demo_config(self) -> StarGraphConfig:
        # 500 updates per model: too few for the ILM, which needs 2000-3000 here (see
        # ar_text.stargraph), so the demo shows AR's plateau at 1 / degree, reached within a
        # few hundred updates, and the ILM still climbing from zero; not ILM > AR. Measured
        # on one thread of a busy 2-core machine: 58 s in all (AR 24 s, ILM 27 s of
        # training). Path accuracy on 300 graphs: AR 0.243 at step 100, 0.337 at 200,
        # 0.333 +- 0.027 at 500 (chance 0.333); ILM 0.003, 0.013, ..., 0.073 +- 0.015 at 500.
        # The defaults (3000 updates), run through this recipe: 304 s, AR 0.338 +- 0.021,
        # ILM 0.856 +- 0.016 (ILM passes AR between steps 1000 and 1500), as the benchmark.
        return StarGraphConfig(steps=500, eval_every=100, n_test=300, n_show=2)

    def _run(self, config: StarGraphConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        task = config.task()
        test = held_out_graphs(task, config.n_test)
        steps = config.eval_steps()
        curves: dict[str, list[tuple[float, float]]] = {}
        final: dict[str, tuple[float, float, float]] = {}  # name -> (acc, train s, loss)
        models: dict[str, torch.nn.Module] = {}
        for name in config.models:
            trainer = TRAINERS[name](
                task,
                steps=config.steps,
                batch_size=config.batch_size,
                lr=config.lr,
                seed=config.seed,
            )
            trainer.config.progress = config.progress_bar
            progress(
                f"training {name.upper()} for {config.steps} steps (degree {task.degree}, "
                f"arm_len {task.arm_len}), path accuracy on {config.n_test} held-out graphs "
                f"at steps {', '.join(map(str, steps))}"
            )
            seconds = 0.0
            curves[f"{name} path accuracy"] = []
            acc = 0.0
            for step in steps:
                start = time.perf_counter()
                trainer.train(until=step)
                seconds += time.perf_counter() - start
                acc = accuracy(name, trainer.model, task, test)
                trainer.model.train()
                curves[f"{name} path accuracy"].append((float(step), acc))
                loss = trainer.history[-1]["loss"] if trainer.history else float("nan")
                progress(
                    f"{name} step {step}: path accuracy {acc:.3f} +- "
                    f"{std_error(acc, config.n_test):.3f}, loss {loss:.4f}, {seconds:.0f} s"
                )
            loss = trainer.history[-1]["loss"] if trainer.history else float("nan")
            final[name] = (acc, seconds, loss)
            models[name] = trainer.model.eval()
        for kind, model in models.items():
            if kind == "ar":
                assert isinstance(model, Transformer)
                model.save_pretrained(out_dir / AR_DIR)
            else:
                assert isinstance(model, InsertionModel)
                save_ilm(model, out_dir / ILM_DIR)
        progress(f"wrote {', '.join(n + '/' for n in models)} under {out_dir}")
        shown, _ = shown_graphs(task, models, test[: config.n_show])
        chance = 1 / task.degree
        rows: list[list[object]] = [
            [
                name,
                config.steps,
                round(acc, 4),
                round(std_error(acc, config.n_test), 4),
                round(chance, 4),
                round(loss, 4),
                round(sec, 1),
            ]
            for name, (acc, sec, loss) in final.items()
        ]
        by_step: list[list[object]] = [
            [int(step), *(round(curves[f"{n} path accuracy"][i][1], 4) for n in config.models)]
            for i, step in enumerate(steps)
        ]
        summary = ", ".join(f"{n.upper()} {a:.3f}" for n, (a, _, _) in final.items())
        return RecipeResult(
            title=(
                f"text-stargraph: path finding on degree-{task.degree}, arm-{task.arm_len} "
                f"star graphs"
            ),
            summary=(
                f"after {config.steps} updates: path accuracy {summary} on {config.n_test} "
                f"held-out graphs (chance for a model that guesses the arm: {chance:.3f})"
            ),
            tables=[
                Table(
                    "held-out path accuracy (exact match, greedy)",
                    ["model", "steps", "path accuracy", "+- s.e.", "1/degree", "loss", "train s"],
                    rows,
                    note=(
                        f"{config.n_test} held-out graphs (seed {TEST_SEED}); s.e. = binomial "
                        f"sqrt(p (1 - p) / n); loss = the last logged training loss; train s "
                        f"excludes evaluation; {config.threads or torch.get_num_threads()} "
                        f"torch thread(s)"
                    ),
                ),
                Table(
                    "path accuracy by training step",
                    ["step", *config.models],
                    by_step,
                ),
            ],
            curves=curves,
            samples=shown,
            metrics={
                **{f"{n}_accuracy": round(a, 4) for n, (a, _, _) in final.items()},
                **{f"{n}_train_seconds": round(s, 1) for n, (_, s, _) in final.items()},
                "chance": round(chance, 4),
            },
        )

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        if n < 1:
            raise ConfigError(f"n must be >= 1 (held-out graphs to decode), got {n}")
        checkpoint_dir = Path(checkpoint_dir)
        config: StarGraphConfig = self.read_config(checkpoint_dir)
        task = config.task()
        with torch_threads(config.threads):
            models: dict[str, torch.nn.Module] = {}
            for name in config.models:
                if name == "ar":
                    models[name] = load_ar(checkpoint_dir / AR_DIR, task)
                else:
                    models[name] = load_ilm(checkpoint_dir / ILM_DIR, task)
            test = held_out_graphs(task, n)
            progress(f"decoding {test.shape[0]} held-out graphs with {', '.join(models)}")
            shown, rates = shown_graphs(task, models, test)
        return RecipeResult(
            title="text-stargraph samples",
            tables=[
                Table(
                    f"path accuracy on the first {test.shape[0]} held-out graphs",
                    ["model", "right", "of"],
                    [[k, round(r * test.shape[0]), test.shape[0]] for k, r in rates.items()],
                )
            ],
            samples=shown,
        )


recipe = StarGraphRecipe()
