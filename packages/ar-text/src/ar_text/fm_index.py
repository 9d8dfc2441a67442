"""An FM-index over a corpus of token sequences, built on ``pydivsufsort``.

The index of SEAL (Bevilacqua et al., "Autoregressive Search Engines: Generating Substrings
as Document Identifiers", 2022, arXiv:2204.10628; the FM-index of Ferragina & Manzini
2000). Documents are joined by a separator symbol and the whole text is stored
**reversed**: an n-gram ``p`` occurs in the corpus exactly when ``reversed(p)`` occurs in
the reversed text, and one step of backward search on the reversed text prepends a symbol
to ``reversed(p)`` – it appends one to ``p``. So a decoder that extends an n-gram token
by token narrows one suffix-array range per token (:meth:`FMIndex.extend`), and the
tokens allowed next are the distinct Burrows–Wheeler symbols in that range
(:meth:`FMIndex.continuations`).

* ``count(p)``  – occurrences of ``p`` (never across a document boundary);
* ``locate(p)`` – ``(document, offset)`` of every occurrence, sorted;
* ``continuations(p)`` – the sorted tokens ``t`` such that ``p + [t]`` occurs.

``occ(c, i)`` (how many ``c`` in ``bwt[:i]``) is a binary search in the sorted positions
of ``c`` in the BWT: O(n) memory for any alphabet size, O(log n) per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydivsufsort import divsufsort

from ar_core.errors import InputError

__all__ = ["FMIndex"]


def _check_tokens(tokens: Sequence[int], what: str) -> list[int]:
    if isinstance(tokens, str | bytes):
        raise InputError(f"{what} must be a sequence of token ids (ints), got {type(tokens)}")
    out = [int(t) for t in tokens]
    if any(t < 0 for t in out):
        raise InputError(f"{what} holds a negative token id ({min(out)}); ids must be >= 0")
    return out


class FMIndex:
    """FM-index of ``documents`` (lists of non-negative token ids).

    ``FMIndex(docs)``; the separator is ``max id + 1`` (never inside a document), so no
    n-gram found crosses two documents.
    """

    def __init__(self, documents: Sequence[Sequence[int]]) -> None:
        if not isinstance(documents, Sequence) or isinstance(documents, str | bytes):
            raise InputError("documents must be a list of token-id lists")
        if len(documents) == 0:
            raise InputError("FMIndex needs at least one document, got none")
        docs = [_check_tokens(d, f"document {i}") for i, d in enumerate(documents)]
        if all(len(d) == 0 for d in docs):
            raise InputError("every document is empty; FMIndex needs at least one token")
        self.n_docs = len(docs)
        self.sep = max(max(d) for d in docs if d) + 1
        self.doc_lengths = np.array([len(d) for d in docs], dtype=np.int64)
        # forward text: sep d0 sep d1 sep ... d_{k-1} sep. The reversed text then ends with
        # the separator, so every suffix that starts with a real token has a successor
        # suffix and C[c] + occ(c, i) is exact without a sentinel
        self.doc_starts = 1 + np.concatenate([[0], np.cumsum(self.doc_lengths + 1)[:-1]])
        forward = np.full(int((self.doc_lengths + 1).sum()) + 1, self.sep, dtype=np.int64)
        for start, d in zip(self.doc_starts, docs, strict=True):
            forward[start : start + len(d)] = d
        self.n = len(forward)
        self.n_tokens = int(self.doc_lengths.sum())  # corpus size N (no separators)
        text = forward[::-1].copy()  # reversed text: appending to p == prepending to rev(p)
        self.sa = np.asarray(divsufsort(text), dtype=np.int64)
        prev = self.sa - 1
        self.bwt = np.where(prev >= 0, text[np.maximum(prev, 0)], -1)  # -1: text start
        counts = np.bincount(text, minlength=self.sep + 1)
        self.C = np.concatenate([[0], np.cumsum(counts)])  # C[c] = #symbols < c
        order = np.argsort(self.bwt, kind="stable")
        sorted_bwt = self.bwt[order]
        self._occ: dict[int, np.ndarray] = {}
        bounds = np.searchsorted(sorted_bwt, np.arange(-1, self.sep + 2))
        for c in range(self.sep + 1):
            lo, hi = bounds[c + 1], bounds[c + 2]
            if hi > lo:
                self._occ[c] = np.sort(order[lo:hi])
        self._vocab = np.flatnonzero(counts[: self.sep] > 0)

    # -- backward search on the reversed text --------------------------------------------

    def full_range(self) -> tuple[int, int]:
        """The suffix-array range of the empty n-gram: every suffix."""
        return 0, self.n

    def extend(self, rng: tuple[int, int], token: int) -> tuple[int, int]:
        """The range of ``p + [token]`` from the range of ``p`` (empty when it never occurs)."""
        lo, hi = rng
        t = int(token)
        if t < 0 or t >= self.sep or t not in self._occ:
            return 0, 0
        pos = self._occ[t]
        base = int(self.C[t])
        return (
            base + int(np.searchsorted(pos, lo)),
            base + int(np.searchsorted(pos, hi)),
        )

    def range_of(self, ngram: Sequence[int]) -> tuple[int, int]:
        rng = self.full_range()
        for t in _check_tokens(ngram, "ngram"):
            rng = self.extend(rng, t)
            if rng[1] <= rng[0]:
                return 0, 0
        return rng

    def count(self, ngram: Sequence[int]) -> int:
        """Occurrences of ``ngram`` in the corpus (the empty n-gram counts every token)."""
        toks = _check_tokens(ngram, "ngram")
        if not toks:
            return self.n_tokens
        lo, hi = self.range_of(toks)
        return max(0, hi - lo)

    def locate(self, ngram: Sequence[int]) -> list[tuple[int, int]]:
        """``(document, offset)`` of every occurrence of a non-empty ``ngram``, sorted."""
        toks = _check_tokens(ngram, "ngram")
        if not toks:
            raise InputError("locate needs a non-empty ngram (the empty one occurs everywhere)")
        lo, hi = self.range_of(toks)
        if hi <= lo:
            return []
        # a match of rev(p) at reversed position s ends p at forward position n - 1 - s
        starts = self.n - self.sa[lo:hi] - len(toks)
        docs = np.searchsorted(self.doc_starts, starts, side="right") - 1
        return sorted(
            (int(d), int(s - self.doc_starts[d])) for d, s in zip(docs, starts, strict=True)
        )

    def documents_of(self, ngram: Sequence[int]) -> np.ndarray:
        """The sorted distinct documents that contain ``ngram``."""
        return np.unique(np.array([d for d, _ in self.locate(ngram)], dtype=np.int64))

    def continuations_in(self, rng: tuple[int, int]) -> np.ndarray:
        """Sorted tokens that extend the n-gram whose range is ``rng`` (no separator)."""
        lo, hi = rng
        if hi <= lo:
            return np.zeros(0, dtype=np.int64)
        if (lo, hi) == self.full_range():
            return self._vocab.copy()
        found = np.unique(self.bwt[lo:hi])
        return found[(found >= 0) & (found < self.sep)]

    def continuations(self, ngram: Sequence[int]) -> list[int]:
        """The sorted tokens ``t`` such that ``ngram + [t]`` occurs in a document."""
        return [int(t) for t in self.continuations_in(self.range_of(ngram))]
