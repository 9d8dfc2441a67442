"""Hyperfitting: fine-tune a pretrained LM to near-zero loss on a tiny set, then measure.

Carlsson et al., "The Hyperfitting Phenomenon: Sharpening and Stabilizing LLMs for
Open-Ended Text Generation", ICLR 2025 (arXiv:2412.04318 – id from memory, unverified).
The paper fine-tunes pretrained LLMs on 2000 samples x 256 tokens for 30 epochs (Adam,
lr 5e-6, no dropout, no weight decay) until the training loss is near zero; greedy
continuations of 32-token contexts then repeat themselves far less (type-token ratio of
the last 96 generated tokens rises), next-token distributions get sharp (low entropy),
and held-out perplexity gets *worse*. A citation blocker shows that the model does not
just copy its training data: it forbids any continuation that would complete an n-gram of
length >= k seen in training.

This file holds the recipe as functions, linear top to bottom:

    pretrain (a small Transformer, a few hundred steps on the stdlib code corpus)
    -> training windows (n_samples x sample_tokens) -> measure -> hyperfit -> measure

* metrics: :func:`type_token_ratio`, :func:`continuation_ttr` (greedy continuations of
  ``context_tokens``-token contexts, TTR of the last ``ttr_window`` new tokens),
  :func:`next_token_entropy` and :func:`held_out_stats` (mean entropy, perplexity);
* the citation blocker: :class:`NgramBlocker`, an index of training k-grams by their first
  k - 1 tokens; ``blocker.allowed_next(row)`` is the callback of ar-decoding's
  ``constrained`` strategy (``generate(..., strategy="constrained", allowed_next=...)``,
  install ``ar-text[decoding]``). Blocking k-grams blocks every longer n-gram too, since
  each n-gram with n >= k contains a k-gram.

Boundary of the blocker: the callback sees the whole row (prompt, then new tokens), so a
new token is blocked whenever the k tokens ending at it (prompt tokens included) form a
training k-gram. Every k-gram that *ends at a generated token* is therefore novel; k-grams
lying wholly inside the prompt are given, not generated, and are not checked.

Defaults are scaled down for 1 CPU thread (documented per field against the paper).

Notation: N rows, T tokens per row, B batch rows, V vocabulary, k the blocked n-gram length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.trainer import TrainConfig, Trainer
from ar_text.data import PackedBatches, pack, packed_lm_loss, stdlib_corpus
from ar_text.tokenizers import ByteTokenizer

BOS = "<|bos|>"


class HyperfitConfig(pydantic.BaseModel):
    """The small experiment; each default names the paper's value it scales down."""

    model_config = pydantic.ConfigDict(extra="forbid")

    # -- the "pretrained" model (the paper starts from released LLMs; we train one briefly)
    corpus_bytes: int = pydantic.Field(400_000, ge=1000)  # stdlib sources read for pretraining
    seq_len: int = pydantic.Field(128, ge=16)  # model context; paper: 256-token samples
    dim: int = pydantic.Field(96, ge=8)
    n_layers: int = pydantic.Field(3, ge=1)
    n_heads: int = pydantic.Field(4, ge=1)
    pretrain_steps: int = pydantic.Field(300, ge=1)  # enough to beat unigram byte statistics
    pretrain_lr: float = pydantic.Field(3e-3, gt=0)  # as the text-code recipe
    batch_size: int = pydantic.Field(16, ge=1)
    # -- hyperfitting
    n_samples: int = pydantic.Field(32, ge=1)  # paper: 2000
    sample_tokens: int = pydantic.Field(128, ge=2)  # paper: 256; at most seq_len
    epochs: int = pydantic.Field(100, ge=1)  # paper: 30; a tiny model needs more passes
    # paper: 5e-6 for 1B+ parameter LLMs; a ~0.3M parameter model needs a far larger step
    hyperfit_lr: float = pydantic.Field(1e-3, gt=0)
    # -- evaluation
    context_tokens: int = pydantic.Field(32, ge=1)  # paper: 32
    continuation_tokens: int = pydantic.Field(96, ge=1)  # paper: 256 generated
    ttr_window: int = pydantic.Field(96, ge=1)  # paper: TTR of the last 96 tokens
    n_contexts: int = pydantic.Field(16, ge=1)  # held-out contexts continued greedily
    held_out_rows: int = pydantic.Field(16, ge=1)  # held-out rows for entropy / perplexity
    seed: int = 0
    progress_bar: bool = False  # the Trainer's tqdm bars (pretraining, hyperfitting)

    @pydantic.model_validator(mode="after")
    def _check(self) -> HyperfitConfig:
        if self.sample_tokens > self.seq_len:
            raise ValueError(
                f"sample_tokens ({self.sample_tokens}) exceeds seq_len ({self.seq_len})"
            )
        if self.context_tokens + self.continuation_tokens > self.seq_len:
            raise ValueError(
                f"context_tokens + continuation_tokens ({self.context_tokens} + "
                f"{self.continuation_tokens}) exceeds the model context seq_len ({self.seq_len})"
            )
        if self.ttr_window > self.continuation_tokens:
            raise ValueError(
                f"ttr_window ({self.ttr_window}) exceeds continuation_tokens "
                f"({self.continuation_tokens})"
            )
        return self


# -- metrics ------------------------------------------------------------------------------------


def type_token_ratio(tokens: Sequence[int]) -> float:
    """Distinct tokens / tokens (1.0 = no token repeats); an empty sequence is an error."""
    if len(tokens) == 0:
        raise InputError("type_token_ratio needs at least one token")
    return len(set(tokens)) / len(tokens)


def next_token_entropy(logits: Tensor) -> Tensor:
    """(..., V) logits -> (...) entropy in nats of each next-token distribution."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).nan_to_num(0.0)  # 0 * log 0 = 0 for -inf logits


@torch.no_grad()
def held_out_stats(model: nn.Module, rows: Tensor, batch_size: int = 16) -> tuple[float, float]:
    """(mean next-token entropy in nats, perplexity) over every target of ``rows`` (N, T).

    Each row is scored on its own (positions 0..T-1, causal); targets are tokens 1..T-1.
    """
    model.eval()
    ent_sum, nll_sum, count = 0.0, 0.0, 0
    for i in range(0, rows.shape[0], batch_size):
        x = rows[i : i + batch_size]  # (B, T)
        logits = model(x).logits[:, :-1].float()  # (B, T - 1, V)
        ent_sum += float(next_token_entropy(logits).sum())
        nll_sum += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
        count += x.shape[0] * (x.shape[1] - 1)
    return ent_sum / count, math.exp(nll_sum / count)


@torch.no_grad()
def continuation_ttr(
    model: Transformer, contexts: Tensor, new_tokens: int, window: int
) -> tuple[float, Tensor]:
    """Greedy-continue each context (B, C) by ``new_tokens``; (mean TTR of the last
    ``window`` new tokens of each row, the new tokens (B, new_tokens))."""
    if window > new_tokens:
        raise ConfigError(f"window ({window}) exceeds new_tokens ({new_tokens})")
    model.eval()
    out = generate(model, contexts, GenerationConfig(max_new_tokens=new_tokens, temperature=0))
    new = out.sequences[:, contexts.shape[1] : contexts.shape[1] + new_tokens]  # (B, new_tokens)
    ttrs = [type_token_ratio(row[-window:]) for row in new.tolist()]
    return sum(ttrs) / len(ttrs), new


# -- the citation blocker -----------------------------------------------------------------------


class NgramBlocker:
    """Forbids every token that would complete a training k-gram.

    ``index[prefix]`` is the set of tokens that follow the (k - 1)-token ``prefix`` somewhere
    in the training sequences; ``allowed_next(row)`` returns all ids except those that
    follow the row's last k - 1 tokens (everything, while the row is shorter than k - 1).
    """

    def __init__(self, sequences: Iterable[Sequence[int]], k: int, vocab_size: int) -> None:
        if k < 2:
            raise ConfigError(f"NgramBlocker needs k >= 2 (k = 1 would forbid tokens), got {k}")
        self.k = k
        self.vocab_size = vocab_size
        self.index: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            seq = list(seq)
            for i in range(len(seq) - k + 1):
                self.index.setdefault(tuple(seq[i : i + k - 1]), set()).add(seq[i + k - 1])

    def kgrams(self) -> set[tuple[int, ...]]:
        """Every indexed k-gram (for checks)."""
        return {(*prefix, t) for prefix, nexts in self.index.items() for t in nexts}

    def blocked_next(self, row: Sequence[int]) -> set[int]:
        """The tokens that would complete a training k-gram after ``row``."""
        if len(row) < self.k - 1:
            return set()
        return self.index.get(tuple(row[len(row) - self.k + 1 :]), set())

    def allowed_next(self, row: Tensor) -> Tensor:
        """The ``constrained`` strategy's callback: row (L,) long -> allowed ids (M,) long."""
        blocked = self.blocked_next(row.tolist())
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        if blocked:
            keep[torch.tensor(sorted(blocked), dtype=torch.long)] = False
        return keep.nonzero().flatten()


def training_kgrams(sequences: Iterable[Sequence[int]], k: int) -> set[tuple[int, ...]]:
    """Brute force: every k-gram of the sequences (the reference for the index)."""
    return {tuple(s[i : i + k]) for s in map(list, sequences) for i in range(len(s) - k + 1)}


# -- training -----------------------------------------------------------------------------------


def build_model(config: HyperfitConfig, vocab_size: int) -> Transformer:
    torch.manual_seed(config.seed)
    return Transformer(
        TransformerConfig(
            vocab_size=vocab_size,
            dim=config.dim,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            max_seq_len=config.seq_len,
        )
    )


def pretrain(
    model: Transformer, docs: list[list[int]], config: HyperfitConfig, pad_id: int
) -> list[float]:
    """A short ordinary pre-training run on packed documents; returns the step losses."""
    packed = pack(docs, config.seq_len, pad_id=pad_id)
    train = TrainConfig(
        steps=config.pretrain_steps,
        batch_size=config.batch_size,
        lr=config.pretrain_lr,
        warmup_steps=max(1, config.pretrain_steps // 20),
        seed=config.seed,
        progress=config.progress_bar,
        device="cpu",
    )
    return Trainer(model, packed_lm_loss, PackedBatches(packed), train).train()


def _row_lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    """Mean next-token cross-entropy of rows (B, T), each row one sample from position 0."""
    logits = model(batch).logits[:, :-1]  # (B, T - 1, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


@dataclass
class RowBatches:
    """``train_data(generator, batch_size)`` over fixed rows (N, T): drawn with replacement."""

    rows: Tensor

    def __call__(self, generator: torch.Generator, batch_size: int) -> Tensor:
        pick = torch.randint(0, self.rows.shape[0], (batch_size,), generator=generator)  # (B,)
        return self.rows[pick]  # (B, T)


def hyperfit(
    model: Transformer,
    samples: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> list[float]:
    """Fine-tune on ``samples`` (N, T) for ``epochs`` passes (``epochs * N / batch_size``
    updates of rows drawn with replacement) at a constant ``lr``, no weight decay, no
    warm-up (the paper's setting); returns the step losses."""
    steps = max(1, math.ceil(epochs * samples.shape[0] / batch_size))
    train = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.0,
        warmup_steps=0,
        min_lr_ratio=1.0,  # constant learning rate
        seed=seed,
        progress=progress,
        device="cpu",
    )
    return Trainer(model, _row_lm_loss, RowBatches(samples), train).train()


def windows(docs: list[list[int]], n: int, length: int) -> Tensor:
    """``n`` rows (n, length): consecutive non-overlapping ``length``-token chunks of the
    documents, in order (a document's tail shorter than ``length`` is dropped)."""
    rows = [d[i : i + length] for d in docs for i in range(0, len(d) - length + 1, length)]
    if len(rows) < n:
        raise InputError(f"the documents hold {len(rows)} chunks of {length} tokens, need {n}")
    return torch.tensor(rows[:n], dtype=torch.long)


@dataclass
class HyperfitReport:
    """Before / after numbers of one run (entropy in nats, TTR in [0, 1])."""

    train_loss_before: float
    train_loss_after: float
    entropy_before: float
    entropy_after: float
    perplexity_before: float
    perplexity_after: float
    ttr_before: float
    ttr_after: float
    pretrain_steps: int
    hyperfit_steps: int
    pretrain_seconds: float
    hyperfit_seconds: float
    pretrain_losses: list[float] = field(default_factory=list)  # one per update
    hyperfit_losses: list[float] = field(default_factory=list)
    # greedy continuations (n_contexts, continuation_tokens) of the held-out contexts
    continuations_before: list[list[int]] = field(default_factory=list)
    continuations_after: list[list[int]] = field(default_factory=list)


@torch.no_grad()
def _mean_row_loss(model: nn.Module, rows: Tensor) -> float:
    model.eval()
    return float(_row_lm_loss(model, rows))


def experiment_data(config: HyperfitConfig) -> tuple[Tensor, Tensor, Tensor, list[list[int]]]:
    """The experiment's data, a pure function of ``config`` (and the installed stdlib):
    (training samples (n_samples, sample_tokens), held-out rows (held_out_rows,
    sample_tokens), held-out contexts (n_contexts, context_tokens), pretraining documents
    each starting with BOS)."""
    corpus = stdlib_corpus(max_bytes=config.corpus_bytes, held_out_fraction=0.2)
    tok = ByteTokenizer()
    bos = tok.token_id(BOS)
    train_docs = [[bos, *tok.encode(d)] for d in corpus.train]
    held_docs = [tok.encode(d) for d in corpus.held_out]
    try:
        samples = windows([d[1:] for d in train_docs], config.n_samples, config.sample_tokens)
        held = windows(held_docs, config.held_out_rows + config.n_contexts, config.sample_tokens)
    except InputError as exc:
        raise InputError(
            f"{exc} (corpus_bytes={config.corpus_bytes}); raise corpus_bytes or lower "
            f"n_samples / held_out_rows / n_contexts / sample_tokens"
        ) from None
    held_rows, contexts = held[: config.held_out_rows], held[config.held_out_rows :]
    return samples, held_rows, contexts[:, : config.context_tokens], train_docs


def run_experiment(
    config: HyperfitConfig, progress: Callable[[str], None] | None = None
) -> tuple[HyperfitReport, Transformer, Tensor]:
    """The whole pipeline on the stdlib corpus with bytes: pretrain, measure, hyperfit,
    measure. Returns the report, the hyperfitted model and its training samples (N, T)."""
    say = progress or (lambda _msg: None)
    tok = ByteTokenizer()
    samples, held_rows, contexts, train_docs = experiment_data(config)
    model = build_model(config, tok.vocab_size)
    say(f"pretraining {config.pretrain_steps} steps on {len(train_docs)} stdlib files")
    start = time.perf_counter()
    pretrain_losses = pretrain(model, train_docs, config, pad_id=tok.token_id("<|pad|>"))
    pretrain_seconds = time.perf_counter() - start

    def measure() -> tuple[float, float, float, float, Tensor]:
        ent, ppl = held_out_stats(model, held_rows)
        ttr, new = continuation_ttr(model, contexts, config.continuation_tokens, config.ttr_window)
        return _mean_row_loss(model, samples), ent, ppl, ttr, new

    say("measuring the pretrained model")
    loss0, ent0, ppl0, ttr0, new0 = measure()
    say(
        f"hyperfitting {config.epochs} epochs on {config.n_samples} x {config.sample_tokens} tokens"
    )
    start = time.perf_counter()
    losses = hyperfit(
        model,
        samples,
        epochs=config.epochs,
        lr=config.hyperfit_lr,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=config.progress_bar,
    )
    hyperfit_seconds = time.perf_counter() - start
    say("measuring the hyperfitted model")
    loss1, ent1, ppl1, ttr1, new1 = measure()
    report = HyperfitReport(
        train_loss_before=loss0,
        train_loss_after=loss1,
        entropy_before=ent0,
        entropy_after=ent1,
        perplexity_before=ppl0,
        perplexity_after=ppl1,
        ttr_before=ttr0,
        ttr_after=ttr1,
        pretrain_steps=config.pretrain_steps,
        hyperfit_steps=len(losses),
        pretrain_seconds=pretrain_seconds,
        hyperfit_seconds=hyperfit_seconds,
        pretrain_losses=pretrain_losses,
        hyperfit_losses=losses,
        continuations_before=new0.tolist(),
        continuations_after=new1.tolist(),
    )
    return report, model, samples
