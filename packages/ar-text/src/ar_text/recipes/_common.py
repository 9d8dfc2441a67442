"""What the recipes ``text-code`` and ``text-chars`` share: a small causal language model
on text (:mod:`ar_text.recipes.code`, :mod:`ar_text.recipes.chars`).

Both are one linear pipeline:

    corpus -> tokenizer -> pack documents (document mask) -> Trainer -> held-out bits per
    byte -> sample continuations of held-out prompts (KV cache, ``ar_core.generate``)

Each document starts with the BOS token, so every byte of it is a predicted target and the
held-out bits per byte are ``sum(nll) / (bytes * ln 2)`` over whole held-out documents.
``run`` writes ``model/`` (``Transformer.save_pretrained``) and ``tokenizer/`` into its
folder; ``sample`` reads them back.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import pydantic
import torch

from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.trainer import TrainConfig, Trainer, read_metrics
from ar_text.data import (
    Corpus,
    Packed,
    PackedBatches,
    pack,
    packed_lm_loss,
    packed_nll,
    target_mask,
)
from ar_text.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    load_tokenizer,
)

BOS = "<|bos|>"


class TextLMConfig(pydantic.BaseModel):
    """Settings shared by the text recipes; defaults train in a few minutes on 2 CPU cores."""

    model_config = pydantic.ConfigDict(extra="forbid")

    tokenizer: Literal["byte", "bpe"] = "byte"  # bytes need no training and never fail
    bpe_vocab_size: int = pydantic.Field(1024, ge=259)  # only for tokenizer=bpe
    held_out_fraction: float = pydantic.Field(0.1, gt=0, lt=1)
    seq_len: int = pydantic.Field(256, ge=8)  # tokens per packed row (and the model's context)
    steps: int = pydantic.Field(2000, ge=1)  # optimizer updates
    batch_size: int = pydantic.Field(16, ge=1)
    lr: float = pydantic.Field(3e-3, gt=0)  # high but stable for a ~1M-parameter model with warm-up
    dim: int = pydantic.Field(128, ge=8)  # model width
    n_layers: int = pydantic.Field(4, ge=1)
    n_heads: int = pydantic.Field(4, ge=1)
    eval_bytes: int = pydantic.Field(100_000, ge=1)  # held-out bytes scored for bits per byte
    n_samples: int = pydantic.Field(3, ge=0)  # continuations of held-out prompts to show
    prompt_chars: int = pydantic.Field(96, ge=1)  # characters of held-out text per prompt
    sample_tokens: int = pydantic.Field(128, ge=1)  # new tokens per continuation
    temperature: float = pydantic.Field(0.8, ge=0)  # below 1: fewer typos in the samples
    top_k: int | None = pydantic.Field(None, ge=1)
    seed: int = 0  # model init, data order, sampling
    progress_bar: bool = True  # the Trainer's tqdm bar
    # a model this small runs fastest on one thread (more threads only contend); 0 = torch's
    threads: int = pydantic.Field(1, ge=0)

    @pydantic.model_validator(mode="after")
    def _check(self) -> TextLMConfig:
        if self.sample_tokens > self.seq_len - 2:
            raise ValueError(
                f"sample_tokens ({self.sample_tokens}) must leave room for a prompt in the "
                f"model's context seq_len ({self.seq_len}): at most seq_len - 2"
            )
        return self


# -- pipeline pieces ----------------------------------------------------------------------------


def build_tokenizer(config: TextLMConfig, corpus: Corpus) -> ByteTokenizer | BPETokenizer:
    if config.tokenizer == "byte":
        return ByteTokenizer()
    return BPETokenizer.train(corpus.train, vocab_size=config.bpe_vocab_size)


def encode_docs(tokenizer: ByteTokenizer | BPETokenizer, docs: list[str]) -> list[list[int]]:
    """Each document as ``[BOS] + ids``: the first byte of a document is predicted too."""
    bos = tokenizer.token_id(BOS)
    return [[bos, *tokenizer.encode(d)] for d in docs]


def eval_docs(docs: list[str], max_bytes: int) -> list[str]:
    """Whole held-out documents in order while they fit in ``max_bytes`` (else the start of
    the smallest one)."""
    out: list[str] = []
    used = 0
    for d in docs:
        size = len(d.encode("utf-8", errors="surrogatepass"))
        if used + size <= max_bytes:
            out.append(d)
            used += size
    if out:
        return out
    smallest = min(docs, key=len).encode("utf-8", errors="surrogatepass")
    return [smallest[:max_bytes].decode("utf-8", errors="ignore")]  # one long document: cut it


@torch.no_grad()
def held_out_bits_per_byte(
    model: Transformer, packed: Packed, token_bytes: list[int], batch_size: int
) -> tuple[float, float, int]:
    """(mean loss in nats per token, bits per byte, bytes scored) over every row of ``packed``.

    Bits per byte divide the summed loss by the bytes of text its targets stand for (the
    first token of a row has no context and is no target, so its bytes are not counted).
    """
    model.eval()
    sizes = torch.tensor(token_bytes, dtype=torch.long)
    total, count, n_bytes = 0.0, 0, 0
    for i in range(0, len(packed), batch_size):
        rows = slice(i, i + batch_size)
        batch = (packed.tokens[rows], packed.doc_ids[rows], packed.positions[rows])
        nll, n = packed_nll(model, batch)
        total += float(nll)
        count += int(n)
        valid = target_mask(packed.doc_ids[rows])  # (B, T - 1)
        n_bytes += int((sizes[packed.tokens[rows][:, 1:]] * valid).sum())
    return total / count, total / (n_bytes * math.log(2)), n_bytes


def prompts_from(docs: list[str], n: int, chars: int) -> list[str]:
    """Up to ``n`` prompts: the ``chars`` characters before the first ``def`` line of a
    document (or its start), ending with that line's ``def `` so code follows."""
    out: list[str] = []
    for d in docs:
        if len(out) == n:
            break
        at = d.find("\ndef ")
        if at < 0:
            at = d.find("\n    def ")
        end = at + d[at + 1 :].find("def ") + 5 if at >= 0 else min(len(d), chars)
        text = d[max(0, end - chars) : end]
        if text.strip():
            out.append(text)
    return out


def sample_continuations(
    model: Transformer,
    tokenizer: ByteTokenizer | BPETokenizer,
    prompts: list[str],
    config: TextLMConfig,
) -> tuple[list[str], float]:
    """Continue each prompt (one batch, right-padded); returns the texts and tokens/s."""
    if not prompts:
        return [], 0.0
    bos = tokenizer.token_id(BOS)
    ids = [[bos, *tokenizer.encode(p)] for p in prompts]
    room = model.max_seq_len - config.sample_tokens
    ids = [[bos, *row[1:][-(room - 1) :]] if len(row) > room else row for row in ids]
    lengths = [len(r) for r in ids]
    width = max(lengths)
    input_ids = torch.tensor([r + [0] * (width - len(r)) for r in ids], device=model.device)
    gen = GenerationConfig(
        max_new_tokens=config.sample_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        seed=config.seed,
    )
    model.eval()
    out = generate(model, input_ids, gen, strategy="sample", prompt_lengths=lengths)
    texts = []
    for b, row in enumerate(out.sequences.tolist()):
        start = int(out.prompt_lengths[b]) if out.prompt_lengths is not None else width
        new = row[start : start + config.sample_tokens]
        texts.append(f"{prompts[b]}\u2502{tokenizer.decode(new)}")  # the bar marks the prompt end
    seconds = max(out.stats.wall_seconds, 1e-9)
    return texts, out.stats.tokens_generated / seconds


def window_prompts(text: str, n: int, chars: int) -> list[str]:
    """``n`` prompts of ``chars`` characters, evenly spaced through ``text``."""
    step = max(1, (len(text) - chars) // max(1, n))
    return [w for i in range(n) if (w := text[i * step : i * step + chars]).strip()]


def train_and_report(
    recipe_name: str,
    config: TextLMConfig,
    corpus: Corpus,
    prompts: list[str],
    out_dir: Path,
    progress: Progress,
) -> RecipeResult:
    """The whole pipeline after the corpus is read (shared by both recipes)."""
    progress(f"tokenizer {config.tokenizer}: {len(corpus.train)} training documents")
    tokenizer = build_tokenizer(config, corpus)
    pad = tokenizer.token_id("<|pad|>")
    train_packed = pack(encode_docs(tokenizer, corpus.train), config.seq_len, pad_id=pad)
    held = eval_docs(corpus.held_out, config.eval_bytes)
    held_bytes = sum(len(d.encode("utf-8", errors="surrogatepass")) for d in held)
    held_packed = pack(encode_docs(tokenizer, held), config.seq_len, pad_id=pad)

    torch.manual_seed(config.seed)
    model = Transformer(
        TransformerConfig(
            vocab_size=tokenizer.vocab_size,
            dim=config.dim,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            max_seq_len=config.seq_len,
        )
    )
    train_config = TrainConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_steps=max(1, config.steps // 20),
        out_dir=out_dir / "train",
        seed=config.seed,
        log_every=max(1, config.steps // 100),
        progress=config.progress_bar,
    )
    progress(
        f"training {config.steps} steps on {len(train_packed)} packed rows of {config.seq_len}"
    )
    start = time.perf_counter()
    Trainer(model, packed_lm_loss, PackedBatches(train_packed), train_config).train()
    train_seconds = time.perf_counter() - start
    model.save_pretrained(out_dir / "model")
    tokenizer.save(out_dir / "tokenizer")

    progress(f"scoring {held_bytes} held-out bytes")
    loss, bpb, scored = held_out_bits_per_byte(
        model, held_packed, tokenizer.token_bytes(), config.batch_size
    )
    progress("sampling continuations of held-out prompts")
    samples, tokens_per_s = sample_continuations(model, tokenizer, prompts, config)
    curve = [(float(r["step"]), float(r["loss"])) for r in read_metrics(out_dir / "train")]
    rows: list[list[object]] = [
        ["held-out bits per byte", round(bpb, 4)],
        ["held-out loss (nats / token)", round(loss, 4)],
        ["sampling tokens / s", round(tokens_per_s, 1)],
        ["training seconds", round(train_seconds, 1)],
        ["parameters", model.num_parameters()],
        ["vocabulary", tokenizer.vocab_size],
        ["training bytes", corpus.train_bytes],
        ["held-out bytes scored", scored],
    ]
    return RecipeResult(
        title=f"{recipe_name}: a small language model ({config.tokenizer} tokens)",
        summary=(
            f"{config.n_layers} layers x {config.dim} wide, {config.steps} steps of "
            f"{config.batch_size} x {config.seq_len} tokens in {train_seconds:.1f} s; "
            f"held-out {bpb:.3f} bits per byte (8 = uniform bytes)"
        ),
        tables=[
            Table(
                "held-out evaluation",
                ["metric", "value"],
                rows,
                note=(
                    f"held-out documents: {len(held)} (never trained on); "
                    f"samples: temperature {config.temperature}, top_k {config.top_k}, "
                    f"batch {len(prompts)}, KV cache"
                ),
            )
        ],
        curves={"train loss": curve},
        samples=samples,
        metrics={
            "bits_per_byte": round(bpb, 4),
            "held_out_loss": round(loss, 4),
            "tokens_per_s": round(tokens_per_s, 1),
            "train_seconds": round(train_seconds, 2),
        },
    )


def sample_checkpoint(
    checkpoint_dir: Path, config: TextLMConfig, prompts: list[str], title: str
) -> RecipeResult:
    model = Transformer.from_pretrained(checkpoint_dir / "model")
    tokenizer = load_tokenizer(checkpoint_dir / "tokenizer")
    samples, tokens_per_s = sample_continuations(model, tokenizer, prompts, config)
    return RecipeResult(
        title=title,
        samples=samples,
        metrics={"tokens_per_s": round(tokens_per_s, 1)},
    )
