"""Recipe ``text-causal``: a tiny LM learns causal statements and answers rephrasings.

A random DAG over made-up variable names (:func:`ar_text.causal.synthetic_world`); every
edge is stated in several phrasings (:data:`ar_text.causal.CAUSE_TEMPLATES`), but for each
edge ``held_out`` of its phrasings are never trained on; unrelated pairs are stated as
"a and b are unrelated.". A byte-level Transformer learns the statements (full LM loss).

Evaluation:

* **held-out rephrasings** – for every (edge, held-out phrasing): does the model give
  the true direction a higher log-likelihood than the reversed one? Chance is 1/2; the
  one-sided exact binomial test against 1/2 is reported (level 0.01).
* **DAG assembly** – every pair asked "causes / caused by / unrelated" in the first
  phrasing, the answers assembled into a DAG: pair accuracy, SHD, edge precision/recall,
  against the same for a model with the same architecture and no training.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pydantic
import torch
import torch.nn.functional as F

from ar_core.model import Transformer, TransformerConfig
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_text.causal import (
    CAUSE_TEMPLATES,
    NONE_TEMPLATES,
    assemble_dag,
    direction_accuracy,
    edge_precision_recall,
    option_logprobs,
    pairwise_direction,
    shd,
    synthetic_world,
)

BOS, EOS, VOCAB = 256, 257, 258


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided exact test's p-value."""
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


class CausalConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    n_vars: int = pydantic.Field(12, ge=3)
    edge_prob: float = pydantic.Field(0.3, gt=0, le=1)
    held_out: int = pydantic.Field(2, ge=1)  # phrasings per edge never trained on
    steps: int = pydantic.Field(600, ge=1)
    batch_size: int = pydantic.Field(32, ge=1)
    lr: float = pydantic.Field(3e-3, gt=0)
    dim: int = pydantic.Field(64, ge=8)
    n_layers: int = pydantic.Field(2, ge=1)
    n_heads: int = pydantic.Field(4, ge=1)
    level: float = pydantic.Field(0.01, gt=0, lt=1)  # binomial test level
    seed: int = 0
    threads: int = pydantic.Field(1, ge=0)

    @pydantic.model_validator(mode="after")
    def _check(self) -> CausalConfig:
        if self.held_out >= len(CAUSE_TEMPLATES):
            raise ValueError(
                f"held_out ({self.held_out}) must leave at least one trained phrasing of "
                f"{len(CAUSE_TEMPLATES)}: at most {len(CAUSE_TEMPLATES) - 1}"
            )
        return self


def split_statements(
    world: nx.DiGraph, held_out: int, seed: int
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Training statements and the held-out ``(cause, effect, template)`` rephrasings."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c, e in world.edges:
        order = rng.permutation(len(CAUSE_TEMPLATES))
        for rank, t in enumerate(order):
            template = CAUSE_TEMPLATES[int(t)]
            if rank < held_out:
                test.append((c, e, template))
            else:
                train.append(template.format(c=c, e=e))
    for a, b in itertools.combinations(list(world.nodes), 2):
        if not world.has_edge(a, b) and not world.has_edge(b, a):
            train.append(NONE_TEMPLATES[0].format(a=a, b=b))
    return train, test


def train_lm(
    texts: list[str], config: CausalConfig, progress: Progress
) -> tuple[Transformer, list[tuple[float, float]]]:
    torch.manual_seed(config.seed)
    rows = [[BOS, *encode(t), EOS] for t in texts]
    width = max(len(r) for r in rows)
    model = Transformer(
        TransformerConfig(
            vocab_size=VOCAB,
            dim=config.dim,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            max_seq_len=width + 8,
        )
    )
    tokens = torch.full((len(rows), width), EOS, dtype=torch.long)
    weight = torch.zeros(len(rows), width - 1)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
        weight[i, : len(r) - 1] = 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(config.seed)
    warm = max(1, config.steps // 20)
    curve = []
    model.train()
    for step in range(config.steps):
        for g in opt.param_groups:
            g["lr"] = config.lr * min(1.0, (step + 1) / warm) * (1 - step / config.steps) ** 0.5
        idx = torch.randint(0, len(rows), (config.batch_size,), generator=gen)
        batch, w = tokens[idx], weight[idx]
        logits = model(batch).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1), reduction="none")
        loss = (nll * w.reshape(-1)).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, config.steps // 50) == 0 or step == config.steps - 1:
            curve.append((float(step), loss.item()))
        if step % max(1, config.steps // 5) == 0:
            progress(f"step {step}/{config.steps}: loss {loss.item():.3f}")
    model.eval()
    return model, curve


def evaluate(
    model: Any, world: nx.DiGraph, test: list[tuple[str, str, str]], seed: int
) -> dict[str, Any]:
    """Held-out rephrasing accuracy and DAG assembly metrics for one model."""
    right = 0
    for c, e, template in test:
        lp = option_logprobs(
            model, encode, [BOS], [template.format(c=c, e=e), template.format(c=e, e=c)]
        )
        right += lp[0] > lp[1]
    rng = np.random.default_rng(seed)
    answers = []
    for a, b in itertools.combinations(list(world.nodes), 2):
        if rng.random() < 0.5:
            a, b = b, a
        answers.append(pairwise_direction(model, encode, a, b, prompt=[BOS]))
    dag = assemble_dag(list(world.nodes), answers)
    precision, recall = edge_precision_recall(world, dag)
    return {
        "right": right,
        "n": len(test),
        "pair_accuracy": direction_accuracy(world, answers),
        "shd": shd(world, dag),
        "precision": precision,
        "recall": recall,
    }


def run_experiment(config: CausalConfig, progress: Progress) -> dict[str, Any]:
    world = synthetic_world(config.n_vars, config.edge_prob, config.seed)
    train, test = split_statements(world, config.held_out, config.seed)
    progress(
        f"{world.number_of_nodes()} variables, {world.number_of_edges()} edges; "
        f"{len(train)} training statements, {len(test)} held-out rephrasings"
    )
    t0 = time.perf_counter()
    model, curve = train_lm(train, config, progress)
    seconds = time.perf_counter() - t0
    trained = evaluate(model, world, test, config.seed)
    torch.manual_seed(config.seed + 1)
    untrained_model = Transformer(model.cfg).eval()
    untrained = evaluate(untrained_model, world, test, config.seed)
    trained["p_value"] = binomial_sf(trained["right"], trained["n"], 0.5)
    untrained["p_value"] = binomial_sf(untrained["right"], untrained["n"], 0.5)
    return {
        "world": world,
        "trained": trained,
        "untrained": untrained,
        "curve": curve,
        "train_seconds": seconds,
        "n_train": len(train),
    }


class CausalRecipe(RecipeBase):
    name = "text-causal"
    description = "causal direction by option log-likelihood; a tiny LM answers rephrasings"
    config_class = CausalConfig
    in_demo = False  # see docs/packages/ar-text.md for its time

    def demo_config(self) -> CausalConfig:
        return CausalConfig(n_vars=8, steps=300)

    def _run(self, config: CausalConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        r = run_experiment(config, progress)
        rows: list[list[object]] = []
        for name in ("trained", "untrained"):
            m = r[name]
            rows.append(
                [
                    f"{name} LM",
                    f"{m['right']}/{m['n']} = {m['right'] / m['n']:.3f}",
                    f"{m['p_value']:.2g}",
                    round(m["pair_accuracy"], 3),
                    m["shd"],
                    round(m["precision"], 3),
                    round(m["recall"], 3),
                ]
            )
        t = r["trained"]
        world = r["world"]
        return RecipeResult(
            title="text-causal: causal direction by option log-likelihood",
            summary=(
                f"held-out rephrasings {t['right']}/{t['n']} right (one-sided binomial p = "
                f"{t['p_value']:.2g} vs 1/2, level {config.level}); DAG SHD {t['shd']} over "
                f"{world.number_of_edges()} true edges"
            ),
            tables=[
                Table(
                    "held-out rephrasings and DAG assembly",
                    [
                        "model",
                        "rephrasings right",
                        "binomial p",
                        "pair accuracy (3-way)",
                        "SHD",
                        "edge precision",
                        "edge recall",
                    ],
                    rows,
                    note=(
                        f"{config.n_vars} variables, {world.number_of_edges()} edges, "
                        f"{config.held_out} of {len(CAUSE_TEMPLATES)} phrasings held out per "
                        f"edge; {r['n_train']} training statements, {config.steps} steps "
                        f"({r['train_seconds']:.0f} s), seed {config.seed}"
                    ),
                )
            ],
            curves={"train loss": r["curve"]},
            metrics={
                "heldout_accuracy": round(t["right"] / t["n"], 4),
                "heldout_p_value": t["p_value"],
                "pair_accuracy": round(t["pair_accuracy"], 4),
                "shd": float(t["shd"]),
                "edge_precision": round(t["precision"], 4),
                "edge_recall": round(t["recall"], 4),
                "untrained_heldout_accuracy": round(
                    r["untrained"]["right"] / r["untrained"]["n"], 4
                ),
            },
        )


recipe = CausalRecipe()
