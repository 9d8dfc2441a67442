"""SEAL: retrieval by generating corpus n-grams under an FM-index constraint.

Bevilacqua et al., "Autoregressive Search Engines: Generating Substrings as Document
Identifiers" (NeurIPS 2022, arXiv:2204.10628). A language model reads a query and
generates n-grams; decoding is constrained so that every generated n-gram occurs in the
corpus (the allowed next tokens are the FM-index continuations of the n-gram so far,
:mod:`ar_text.fm_index`), and documents are scored from the n-grams they contain.

* :func:`ngram_beam` – beam search over n-grams of at most ``max_len`` tokens after a
  prompt; with ``fm`` the step mask comes from ar-decoding's ``constrained`` strategy
  machinery (``ar_decoding.constrained.allowed_mask``), without it the beam is
  unconstrained (the "generate, then look up" baseline). :func:`constrained_greedy` runs
  ar-decoding's ``constrained`` strategy itself through ``ar_core.generate``.
* :func:`ngram_weight` – ``w(n) = max(0, log[P(n|q)(1 - P(n)) / (P(n)(1 - P(n|q)))])^alpha``
  with ``P(n) = (count(n) + 5) / (N + 5)`` (N corpus tokens) and ``P(n|q)`` the model's
  probability of the n-gram's tokens.
* :func:`intersective_scores` – per document, the n-grams it contains in decreasing
  weight, each counted ``w(n) * cover(n)`` with the overlap discount
  ``cover(n) = 1 - beta + beta * |set(n) minus tokens of heavier n-grams| / |set(n)|``.
* :func:`hit_at` – hit@k with ties counted against the gold document (a document
  scored like many others gains nothing from its index).

Token conventions: the n-gram model here works on UTF-8 bytes (ids 0..255) plus ``BOS``,
``EOS`` and ``SEP`` (query / n-gram separator); the FM-index holds the documents' bytes.
Defaults follow the paper: beam 15, alpha 2.0, beta 0.8.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_text.fm_index import FMIndex

__all__ = [
    "BOS",
    "EOS",
    "SEP",
    "VOCAB",
    "Generated",
    "constrained_greedy",
    "encode",
    "hit_at",
    "intersective_scores",
    "make_query",
    "ngram_beam",
    "ngram_weight",
    "stdlib_docstrings",
    "words",
]

BOS, EOS, SEP = 256, 257, 258
VOCAB = 259


def encode(text: str) -> list[int]:
    """UTF-8 bytes of ``text`` as token ids."""
    if not isinstance(text, str):
        raise InputError(f"encode expects a str, got {type(text).__name__}")
    return list(text.encode("utf-8"))


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words (BM25's tokens and the queries' words)."""
    return re.findall(r"[a-z0-9_]+", text.lower())


# -- corpus and queries -------------------------------------------------------------------


def stdlib_docstrings(
    max_docs: int, min_chars: int = 60, max_chars: int = 240, seed: int = 0
) -> list[str]:
    """Up to ``max_docs`` distinct first paragraphs of docstrings of the standard library
    (modules, classes, functions), whitespace collapsed; a deterministic sample."""
    if max_docs < 1:
        raise ConfigError(f"max_docs must be >= 1, got {max_docs}")
    if not 1 <= min_chars <= max_chars:
        raise ConfigError(f"need 1 <= min_chars <= max_chars, got {min_chars}, {max_chars}")
    root = Path(sys.modules["os"].__file__ or "").parent
    paths = sorted(p for p in root.glob("*.py") if p.is_file())
    paths += sorted(p for p in root.glob("*/*.py") if "site-packages" not in p.parts)
    if not paths:
        raise ConfigError(f"found no *.py files under the standard library folder {root}")
    # a deterministic shuffle of the files, read until 4 x max_docs candidates are found
    paths.sort(key=lambda p: hashlib.sha1(p.name.encode() + str(seed).encode()).digest())
    seen: set[str] = set()
    found: list[str] = []
    for path in paths:
        if len(found) >= 4 * max_docs:
            break
        try:
            with warnings.catch_warnings():  # old escape sequences in some stdlib files
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            text = " ".join(doc.split("\n\n")[0].split())
            if min_chars <= len(text) <= max_chars and text.isascii() and text not in seen:
                seen.add(text)
                found.append(text)
    if not found:
        raise ConfigError("found no docstrings in the standard library")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(found))[:max_docs]
    return [found[i] for i in sorted(order)]


def make_query(
    doc: str, rng: np.random.Generator, n_words: int = 8, drop: float = 0.3
) -> tuple[str, str]:
    """A synthetic query for ``doc`` and its target n-gram.

    The query: a window of ``n_words`` words of the document, lower-cased, punctuation
    gone, each word dropped with probability ``drop`` (at least two kept). The target: the
    document's own text from the window's first word, about ``2 * n_words`` characters
    (cut at a word end) – a passage substring a good generator should produce.
    """
    if not 0 <= drop < 1:
        raise ConfigError(f"drop must be in [0, 1), got {drop}")
    if n_words < 2:
        raise ConfigError(f"n_words must be >= 2, got {n_words}")
    spans = [(m.start(), m.group()) for m in re.finditer(r"[A-Za-z0-9_]+", doc)]
    if len(spans) < 2:
        raise InputError(f"document has fewer than 2 words: {doc[:40]!r}")
    start = int(rng.integers(0, max(1, len(spans) - n_words + 1)))
    window = spans[start : start + n_words]
    keep = rng.random(len(window)) >= drop
    if keep.sum() < 2:
        keep[:2] = True
    query = " ".join(w.lower() for (_, w), k in zip(window, keep, strict=True) if k)
    begin = window[0][0]
    end = min(len(doc), begin + 2 * n_words)
    while end < len(doc) and doc[end].isalnum():
        end += 1
    return query, doc[begin:end]


# -- decoding -------------------------------------------------------------------------------


@dataclass
class Generated:
    """One generated n-gram: its tokens and ``log P(n | q)`` (sum over its tokens)."""

    tokens: tuple[int, ...]
    logprob: float


def _decoding() -> Any:
    try:
        from ar_decoding import constrained as module
    except ImportError as exc:  # pragma: no cover - ar-decoding is a dev dependency here
        raise ConfigError(
            "SEAL's constrained decoding needs ar-decoding: pip install 'ar-text[decoding]'"
        ) from exc
    return module


def _logits(model: Any, ids: Tensor) -> Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def _check_prompt(prompt: Sequence[int]) -> list[int]:
    toks = [int(t) for t in prompt]
    if not toks:
        raise InputError("prompt is empty; pass at least one token (e.g. BOS)")
    return toks


def _fm_allowed(fm: FMIndex, start: int) -> Callable[[Tensor], list[int]]:
    """allowed_next for rows whose n-gram starts at ``start``: FM continuations and EOS."""

    def allowed(row: Tensor) -> list[int]:
        ngram = row[start:].tolist()
        if ngram and ngram[-1] == EOS:
            return [EOS]
        return [*fm.continuations(ngram), EOS]

    return allowed


@torch.no_grad()
def ngram_beam(
    model: Any,
    prompt: Sequence[int],
    *,
    fm: FMIndex | None,
    beams: int = 15,
    max_len: int = 16,
    min_len: int = 1,
) -> list[Generated]:
    """Beam search of n-grams (at most ``max_len`` tokens, EOS-terminated) after ``prompt``.

    With ``fm`` every step allows only the FM-index continuations of the n-gram so far
    (plus EOS once ``min_len`` tokens are out): every returned n-gram occurs in the
    corpus. Returns the finished and the final live beams, best first, deduplicated.
    """
    if beams < 1 or max_len < 1 or not 1 <= min_len <= max_len:
        raise ConfigError(
            f"need beams >= 1 and 1 <= min_len <= max_len, got {beams}, {min_len}, {max_len}"
        )
    toks = _check_prompt(prompt)
    V = int(getattr(model, "vocab_size", VOCAB))
    if max(toks) >= V:
        raise InputError(f"prompt token {max(toks)} is outside the model's vocabulary {V}")
    start = len(toks)
    seqs = torch.tensor([toks], dtype=torch.long)
    scores = torch.zeros(1)
    finished: dict[tuple[int, ...], float] = {}
    allowed = _fm_allowed(fm, start) if fm is not None else None
    allowed_mask = _decoding().allowed_mask if fm is not None else None
    for step in range(max_len):
        logp = F.log_softmax(_logits(model, seqs)[:, -1].float(), dim=-1)  # (K, V)
        if allowed_mask is not None and allowed is not None:
            skip = torch.zeros(len(seqs), dtype=torch.bool)
            logp = logp.masked_fill(~allowed_mask(allowed, seqs, skip, V), float("-inf"))
        if step < min_len:
            logp[:, EOS] = float("-inf")
        total = (scores[:, None] + logp).flatten()
        k = min(beams, int(torch.isfinite(total).sum()))
        if k == 0:
            break
        top, index = total.topk(k)
        parent, token = index // V, index % V
        live_seqs, live_scores = [], []
        for s, p, t in zip(top.tolist(), parent.tolist(), token.tolist(), strict=True):
            if t == EOS:
                key = tuple(seqs[p, start:].tolist())
                finished[key] = max(finished.get(key, -math.inf), s - float(logp[p, EOS]))
            else:
                live_seqs.append(torch.cat([seqs[p], torch.tensor([t])]))
                live_scores.append(s)
        if not live_seqs:
            break
        seqs, scores = torch.stack(live_seqs), torch.tensor(live_scores)
    else:
        for row, s in zip(seqs.tolist(), scores.tolist(), strict=True):
            key = tuple(row[start:])
            finished[key] = max(finished.get(key, -math.inf), s)
    out = [Generated(k, v) for k, v in finished.items() if k]
    return sorted(out, key=lambda g: -g.logprob)


def constrained_greedy(
    model: Any, prompt: Sequence[int], fm: FMIndex, max_len: int = 16
) -> tuple[int, ...]:
    """One n-gram by ar-decoding's ``constrained`` strategy (greedy) through
    ``ar_core.generate``: the allowed tokens are the FM-index continuations and EOS."""
    from ar_core.generation import GenerationConfig, generate

    _decoding()  # a clear error when ar-decoding is missing
    toks = _check_prompt(prompt)
    out = generate(
        model,
        torch.tensor([toks], dtype=torch.long),
        GenerationConfig(max_new_tokens=max_len, temperature=0.0, eos_token_id=EOS),
        strategy="constrained",
        allowed_next=_fm_allowed(fm, len(toks)),
    )
    new = out.sequences[0, len(toks) :].tolist()
    return tuple(new[: new.index(EOS)] if EOS in new else new)


# -- scoring --------------------------------------------------------------------------------


def ngram_weight(logprob: float, count: int, n_tokens: int, alpha: float = 2.0) -> float:
    """SEAL's n-gram weight from ``log P(n|q)`` and the corpus count (smoothing 5)."""
    if count < 0 or n_tokens < 1:
        raise InputError(f"need count >= 0 and n_tokens >= 1, got {count}, {n_tokens}")
    if alpha <= 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}")
    p_q = min(math.exp(min(logprob, 0.0)), 1 - 1e-9)
    p_n = (count + 5) / (n_tokens + 5)
    if p_q <= 0 or p_n >= 1:
        return 0.0
    return max(0.0, math.log(p_q * (1 - p_n) / (p_n * (1 - p_q)))) ** alpha


def intersective_scores(
    fm: FMIndex, generated: Sequence[Generated], alpha: float = 2.0, beta: float = 0.8
) -> np.ndarray:
    """(n_docs,) SEAL intersective scores of the documents from the generated n-grams
    (n-grams absent from the corpus score nothing)."""
    if not 0 <= beta <= 1:
        raise ConfigError(f"beta must be in [0, 1], got {beta}")
    weighted: list[tuple[float, tuple[int, ...], np.ndarray]] = []
    for g in generated:
        if not g.tokens:
            continue
        count = fm.count(g.tokens)
        if count == 0:
            continue
        w = ngram_weight(g.logprob, count, fm.n_tokens, alpha)
        if w > 0:
            weighted.append((w, g.tokens, fm.documents_of(g.tokens)))
    weighted.sort(key=lambda x: -x[0])
    scores = np.zeros(fm.n_docs)
    covered: dict[int, set[int]] = {}
    for w, toks, docs in weighted:
        tokset = set(toks)
        for d in docs.tolist():
            seen = covered.setdefault(d, set())
            cover = 1 - beta + beta * len(tokset - seen) / len(tokset)
            scores[d] += w * cover
            seen |= tokset
    return scores


def hit_at(scores: np.ndarray, gold: int, k: int) -> bool:
    """Whether ``gold`` is in the top ``k``, counting every tie against it."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= gold < len(scores):
        raise InputError(f"gold document {gold} is outside [0, {len(scores)})")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    s = scores[gold]
    rank = int((scores > s).sum()) + int((scores == s).sum())  # ties: gold placed last
    return rank <= k
