"""Recipe ``text-seal``: question -> passage retrieval by constrained n-gram generation.

The corpus is on every machine: first paragraphs of the standard library's docstrings
(:func:`ar_text.seal.stdlib_docstrings`). Queries are synthetic
(:func:`ar_text.seal.make_query`: a window of a passage's words, lower-cased, some dropped);
a small byte-level Transformer learns ``query SEP passage-substring EOS`` from training
queries, and is evaluated on fresh queries (another seed) of the same passages.

Three retrievers on the same evaluation queries:

* **SEAL** – beam search constrained by the FM-index, intersective scoring;
* **unconstrained + lookup** – the same model and beam without the constraint; the same
  scoring looks the generated n-grams up (those absent from the corpus score nothing);
* **BM25** – ``rank_bm25.BM25Okapi`` over lower-cased words, the baseline users know.

hit@1 / hit@10 count ties against the gold passage.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydantic
import torch
import torch.nn.functional as F

from ar_core.model import Transformer, TransformerConfig
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase
from ar_text.fm_index import FMIndex
from ar_text.seal import (
    BOS,
    EOS,
    SEP,
    VOCAB,
    encode,
    hit_at,
    intersective_scores,
    make_query,
    ngram_beam,
    stdlib_docstrings,
    words,
)


class SealConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    n_docs: int = pydantic.Field(100, ge=2)  # passages in the corpus
    queries_per_doc: int = pydantic.Field(8, ge=1)  # training queries per passage
    n_eval: int = pydantic.Field(100, ge=1)  # evaluation queries (fresh, one per passage)
    query_words: int = pydantic.Field(8, ge=2)
    drop: float = pydantic.Field(0.3, ge=0, lt=1)
    steps: int = pydantic.Field(600, ge=1)
    batch_size: int = pydantic.Field(32, ge=1)
    lr: float = pydantic.Field(2e-3, gt=0)
    dim: int = pydantic.Field(96, ge=8)
    n_layers: int = pydantic.Field(2, ge=1)
    n_heads: int = pydantic.Field(4, ge=1)
    beams: int = pydantic.Field(15, ge=1)  # the paper's default
    max_ngram: int = pydantic.Field(16, ge=1)  # tokens (bytes) per generated n-gram
    alpha: float = pydantic.Field(2.0, gt=0)
    beta: float = pydantic.Field(0.8, ge=0, le=1)
    seed: int = 0
    threads: int = pydantic.Field(1, ge=0)


def _examples(docs: list[str], config: SealConfig, seed: int) -> list[tuple[int, str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for d, doc in enumerate(docs):
        for _ in range(config.queries_per_doc):
            q, target = make_query(doc, rng, config.query_words, config.drop)
            out.append((d, q, target))
    return out


def _train(
    model: Transformer,
    rows: list[list[int]],
    starts: list[int],
    config: SealConfig,
    progress: Progress,
) -> list[tuple[float, float]]:
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(config.seed)
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), EOS, dtype=torch.long)
    weight = torch.zeros(len(rows), width - 1)
    for i, (r, s) in enumerate(zip(rows, starts, strict=True)):
        tokens[i, : len(r)] = torch.tensor(r)
        weight[i, s - 1 : len(r) - 1] = 1.0  # targets: the n-gram and its EOS
    curve = []
    model.train()
    warm = max(1, config.steps // 20)
    for step in range(config.steps):
        for g in opt.param_groups:
            g["lr"] = config.lr * min(1.0, (step + 1) / warm) * (1 - step / config.steps) ** 0.5
        idx = torch.randint(0, len(rows), (config.batch_size,), generator=gen)
        batch, w = tokens[idx], weight[idx]
        used = int((batch != EOS).sum(0).nonzero().max()) + 2
        batch, w = batch[:, :used], w[:, : used - 1]
        logits = model(batch).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1), reduction="none")
        loss = (nll * w.reshape(-1)).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, config.steps // 50) == 0 or step == config.steps - 1:
            curve.append((float(step), loss.item()))
        if step % max(1, config.steps // 5) == 0:
            progress(f"step {step}/{config.steps}: loss {loss.item():.3f}")
    model.eval()
    return curve


class SealRecipe(RecipeBase):
    name = "text-seal"
    description = "SEAL: passage retrieval by FM-index-constrained n-gram generation vs BM25"
    config_class = SealConfig
    in_demo = False  # training alone takes minutes on 2 CPU cores

    def demo_config(self) -> SealConfig:
        return SealConfig(n_docs=40, n_eval=40, steps=200, dim=64, n_layers=2, beams=5)

    def _run(self, config: SealConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        from rank_bm25 import BM25Okapi

        torch.manual_seed(config.seed)
        docs = stdlib_docstrings(config.n_docs, seed=config.seed)
        progress(f"{len(docs)} passages (stdlib docstrings); building the FM-index")
        t0 = time.perf_counter()
        fm = FMIndex([encode(d) for d in docs])
        index_s = time.perf_counter() - t0
        train = _examples(docs, config, config.seed)
        rows = [[BOS, *encode(q), SEP, *encode(t), EOS] for _, q, t in train]
        starts = [len(encode(q)) + 2 for _, q, _ in train]
        width = max(len(r) for r in rows) + config.max_ngram + 2
        model = Transformer(
            TransformerConfig(
                vocab_size=VOCAB,
                dim=config.dim,
                n_layers=config.n_layers,
                n_heads=config.n_heads,
                max_seq_len=width,
            )
        )
        t0 = time.perf_counter()
        curve = _train(model, rows, starts, config, progress)
        train_s = time.perf_counter() - t0

        rng = np.random.default_rng(config.seed + 10_000)  # fresh queries
        pick = rng.permutation(len(docs))[: config.n_eval]
        evals = [
            (int(d), make_query(docs[d], rng, config.query_words, config.drop)[0]) for d in pick
        ]
        bm25 = BM25Okapi([words(d) for d in docs])
        hits = {m: np.zeros((len(evals), 2)) for m in ("seal", "free", "bm25")}
        in_corpus = {"seal": [0, 0], "free": [0, 0]}
        seconds = {"seal": 0.0, "free": 0.0, "bm25": 0.0}
        samples = []
        for i, (gold, query) in enumerate(evals):
            prompt = [BOS, *encode(query), SEP]
            for method, index in (("seal", fm), ("free", None)):
                t0 = time.perf_counter()
                gen = ngram_beam(
                    model, prompt, fm=index, beams=config.beams, max_len=config.max_ngram
                )
                scores = intersective_scores(fm, gen, config.alpha, config.beta)
                seconds[method] += time.perf_counter() - t0
                in_corpus[method][0] += sum(fm.count(g.tokens) > 0 for g in gen)
                in_corpus[method][1] += len(gen)
                hits[method][i] = [hit_at(scores, gold, 1), hit_at(scores, gold, 10)]
                if i < 3:
                    best = (
                        bytes(t for t in gen[0].tokens if t < 256).decode(errors="replace")
                        if gen
                        else ""
                    )
                    samples.append(
                        f"[{method}] q: {query!r} -> {best!r} (gold: {docs[gold][:60]!r})"
                    )
            t0 = time.perf_counter()
            bm = np.asarray(bm25.get_scores(words(query)))
            seconds["bm25"] += time.perf_counter() - t0
            hits["bm25"][i] = [hit_at(bm, gold, 1), hit_at(bm, gold, 10)]
            if i % max(1, len(evals) // 5) == 0:
                progress(f"evaluated {i + 1}/{len(evals)} queries")

        names = {
            "seal": "SEAL (FM-index constrained)",
            "free": "unconstrained + lookup",
            "bm25": "BM25 (rank_bm25)",
        }
        table_rows: list[list[object]] = []
        metrics: dict[str, float] = {}
        for m in ("seal", "free", "bm25"):
            h1, h10 = hits[m].mean(0)
            frac = in_corpus[m][0] / max(1, in_corpus[m][1]) if m in in_corpus else 1.0
            table_rows.append(
                [
                    names[m],
                    round(float(h1), 3),
                    round(float(h10), 3),
                    round(frac, 3),
                    round(1000 * seconds[m] / len(evals), 1),
                ]
            )
            metrics[f"{m}_hit1"] = round(float(h1), 4)
            metrics[f"{m}_hit10"] = round(float(h10), 4)
            if m in in_corpus:
                metrics[f"{m}_ngrams_in_corpus"] = round(frac, 4)
        metrics["train_seconds"] = round(train_s, 1)
        return RecipeResult(
            title="text-seal: retrieval by generating corpus n-grams",
            summary=(
                f"{len(docs)} passages, {len(evals)} fresh queries; hit@10 SEAL "
                f"{metrics['seal_hit10']:.3f}, unconstrained {metrics['free_hit10']:.3f}, "
                f"BM25 {metrics['bm25_hit10']:.3f}"
            ),
            tables=[
                Table(
                    "retrieval (ties counted against the gold passage)",
                    ["retriever", "hit@1", "hit@10", "generated n-grams in corpus", "ms / query"],
                    table_rows,
                    note=(
                        f"model {config.n_layers} x {config.dim}, {config.steps} steps "
                        f"({train_s:.0f} s); beam {config.beams}, n-grams <= {config.max_ngram} "
                        f"bytes, alpha {config.alpha}, beta {config.beta}; FM-index over "
                        f"{fm.n_tokens} bytes built in {index_s:.2f} s"
                    ),
                )
            ],
            curves={"train loss": curve},
            samples=samples,
            metrics=metrics,
        )


recipe = SealRecipe()
