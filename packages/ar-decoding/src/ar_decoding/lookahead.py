"""Lookahead decoding: lossless greedy decoding; one forward holds a Jacobi lookahead
branch and verifies pooled n-grams (strategy ``lookahead``).

Fu et al., "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding"
(2024, arXiv:2402.02057). The Jacobi trajectory (:mod:`ar_decoding.jacobi`, Santilli et
al. 2023) is kept as a 2-D window; n-grams along it fill a pool; pooled n-grams that
start with the last token are verified in the same forward. Returns exactly the greedy
output (ties broken like ``argmax``: the first index).

Context n-grams (``context=K``, on by default): besides the trajectory's n-grams, each
row's own text - the prompt and every token emitted so far - is indexed: the ``m``
tokens after each position are kept under the 1..K tokens that end there. Candidates
come first from the longest suffix of the row that has been seen before (most recent
continuation first, as prompt lookup decoding does: Saxena 2023), then from the
trajectory pool keyed by ``last``. Code repeats identifiers and whole lines, so these are the candidates
that get accepted most; the trajectory supplies what the context does not hold. When a
row's last K tokens occurred before, its first candidate copies ``copy_len`` tokens (a
3-token match was right 85% of the times on byte-level code). ``context=0`` is the
paper's method.

One step (one forward under ``ar_core.masks.table``). The cache holds the committed
context except ``last`` (the newest token). Block of T = 1 + (n-1) W + m_0 + .. + m_{G-1}
slots after the committed context P (relative slot: RoPE position), m_g = candidate g's
length (``candidate_len``; the first one ``copy_len`` in a step where a row has a long
match), G = this step's candidate count (at most ``pool_size``; fewer when no row has
that many, which makes the block cheaper):

    slot 0                    last                    position P
    lookahead (l, j)          level l, column j       position P + 1 + l + j
      slot 1 + l W + j        (l < n-1, j < W)
    candidate (g, i)          token i of candidate g  position P + 1 + i
      slot 1 + (n-1)W + m_0 + .. + m_{g-1} + i   (g < G, i < m_g)

Mask inside the block (:func:`lookahead_local_mask`; every slot also sees the whole
committed context and slot 0):

* lookahead (l, j) sees level 0 columns <= j and levels 1..l of column j - the keys at
  positions P + 1 .. P + 1 + l + j, i.e. a contiguous causal context (Fu et al. Fig. 2);
* candidate (g, i) sees candidate g's tokens 0..i (a causal chain; candidates never see
  each other or the lookahead branch);
* slot 0 sees itself.

After the forward, the outputs of the last level become the newest level (the oldest is
dropped); for each column j the n-gram (level 0..n-2 of column j, output of the last
level at column j) goes to the row's pool keyed by its first token. Candidates are
verified like Jacobi guesses; the longest accepted one wins. Its cache entries sit at the
candidate slots, not right after slot 0, so ``cache.move_entries`` moves them there
(their keys already carry RoPE positions P + 1 + i and attended exactly to the context,
``last`` and the candidate's previous tokens) before the ``a + 1`` entries are committed.
Candidates shorter than their slot count are padded with their last token (a padded
token is verified like any other, so a wrong one only ends the accepted run).

Cost on a CPU: with ``ar.prepack``'s layouts a linear over 1-6 rows costs about what
one row costs and 7-9 rows ~1.4x (oneDNN's row tile), so the default block is 6 slots
(``last``, a 1-slot lookahead branch, one 4-token candidate): a compiled 6-slot pass
costs ~1.2 greedy steps, and the step must accept more tokens than it costs passes
(docs/packages/ar-decoding.md).

Finished rows (EOS or N tokens) keep running in the batch; their cache is cropped to 0
(``Rows.retire_finished``) so they never overflow it, and their outputs are ignored.

Notation: B rows, W window, n n-gram size, G verified candidates, m candidate length,
L copy length, K context key length, V vocabulary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from ar_core.errors import ConfigError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Rows,
    Streamer,
    TokenPicker,
    cache_budget,
    check_eos,
    positive_int,
    reject_repetition_penalty,
)
from ar_core.protocols import CausalLM
from ar_decoding.draft import accepted_tokens, first_step, passes

__all__ = [
    "ContextPool",
    "NgramPool",
    "lookahead",
    "lookahead_local_mask",
    "lookahead_positions",
]


def _lengths(ngram: int, candidates: int, candidate_len: int | Sequence[int] | None) -> list[int]:
    if candidate_len is None:
        return [ngram - 1] * candidates
    if isinstance(candidate_len, int):
        return [candidate_len] * candidates
    lengths = [int(x) for x in candidate_len]
    if len(lengths) != candidates:
        raise ConfigError(f"{candidates} candidates but {len(lengths)} candidate lengths")
    return lengths


def lookahead_local_mask(
    window: int, ngram: int, candidates: int, candidate_len: int | Sequence[int] | None = None
) -> Tensor:
    """Visibility inside the lookahead block, (S, S) bool with S = 1 + (n-1) W + sum of the
    candidates' lengths (``candidate_len``: one for all, one per candidate, default n - 1):
    ``out[i, j]`` = slot i may attend to slot j (see the module docstring)."""
    W, levels = window, ngram - 1
    lengths = _lengths(ngram, candidates, candidate_len)
    S = 1 + levels * W + sum(lengths)
    vis = torch.zeros(S, S, dtype=torch.bool)
    vis[:, 0] = True  # everyone sees `last`
    for level in range(levels):
        for col in range(W):
            q = 1 + level * W + col
            vis[q, 1 : 1 + col + 1] = True  # level 0, columns 0..col
            for above in range(1, level + 1):
                vis[q, 1 + above * W + col] = True  # the same column, levels 1..level
    first = 1 + levels * W
    for m in lengths:
        for i in range(m):
            vis[first + i, first : first + i + 1] = True
        first += m
    return vis


def lookahead_positions(
    window: int, ngram: int, candidates: int, candidate_len: int | Sequence[int] | None = None
) -> Tensor:
    """RoPE position of each block slot relative to ``last``: (S,) long."""
    levels = ngram - 1
    level = torch.arange(levels)[:, None]
    col = torch.arange(window)[None, :]
    look = (1 + level + col).flatten()  # (levels * W,)
    cand = [1 + torch.arange(m) for m in _lengths(ngram, candidates, candidate_len)]
    return torch.cat([torch.zeros(1, dtype=torch.long), look, *cand])


def _remember(bucket: OrderedDict[tuple[int, ...], None], gram: tuple[int, ...], cap: int) -> None:
    bucket.pop(gram, None)
    bucket[gram] = None  # most recent last
    if len(bucket) > cap:
        bucket.popitem(last=False)


class NgramPool:
    """Per row: first token -> the ``capacity`` most recent distinct continuations."""

    def __init__(self, batch: int, capacity: int) -> None:
        self.capacity = capacity
        self.rows: list[dict[int, OrderedDict[tuple[int, ...], None]]] = [{} for _ in range(batch)]

    def add(self, grams: Tensor) -> None:
        """``grams`` (B, M, n): M n-grams per row."""
        for pool, row in zip(self.rows, grams.tolist()):
            for gram in row:
                _remember(pool.setdefault(gram[0], OrderedDict()), tuple(gram[1:]), self.capacity)

    def lookup(self, row: int, token: int) -> list[tuple[int, ...]]:
        """Row ``row``'s continuations of ``token``, most recent first."""
        return list(reversed(self.rows[row].get(token, {}).keys()))

    def candidates(self, last: Tensor, count: int, length: int) -> Tensor:
        """(B, count, length) continuations of each row's ``last`` token, most recent
        first; missing ones are filled with ``last`` repeated (verified like any other)."""
        out = []
        for b, token in enumerate(last.tolist()):
            found = self.lookup(b, token)[:count]
            found += [(token,) * length] * (count - len(found))
            out.append(found)
        return torch.tensor(out, dtype=torch.long, device=last.device)


class ContextPool:
    """Per row: the row's own tokens (prompt and output) and, under each key of 1..``key``
    tokens, the ``capacity`` most recent positions that followed that key. A position's
    continuation is the ``length`` tokens from it on; one that runs into the end of the
    text repeats the text since that position (the continuation of a loop is the loop)."""

    def __init__(self, rows: list[list[int]], key: int, length: int, capacity: int) -> None:
        self.key, self.length, self.capacity = key, length, capacity
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.tables: list[dict[tuple[int, ...], OrderedDict[int, None]]] = [{} for _ in rows]
        self._next = [1] * len(rows)  # per row: the next position to index
        for b, tokens in enumerate(rows):
            self.extend(b, tokens)

    def extend(self, row: int, new: list[int]) -> None:
        """Append ``new`` tokens to row ``row`` and index the positions they complete."""
        toks, table = self.tokens[row], self.tables[row]
        toks.extend(new)
        c = self._next[row]
        while c < len(toks):  # position c follows the keys toks[c - k : c]
            for k in range(1, min(self.key, c) + 1):
                bucket = table.setdefault(tuple(toks[c - k : c]), OrderedDict())
                bucket[c] = None  # positions only grow: most recent last
                if len(bucket) > self.capacity:
                    bucket.popitem(last=False)
            c += 1
        self._next[row] = c

    def matched(self, row: int) -> int:
        """The longest suffix of row ``row`` (at most ``key`` tokens) seen before: 0..key."""
        toks, table = self.tokens[row], self.tables[row]
        for k in range(min(self.key, len(toks)), 0, -1):
            if tuple(toks[-k:]) in table:
                return k
        return 0

    def continuation(self, row: int, c: int) -> tuple[int, ...]:
        """The ``length`` tokens from position ``c`` on, repeated past the end."""
        toks = self.tokens[row]
        out = toks[c : c + self.length]
        period = len(toks) - c
        while len(out) < self.length:
            out.append(out[len(out) - period])
        return tuple(out)

    def lookup(
        self,
        row: int,
        count: int,
        shortest: int = 1,
        longest: int | None = None,
        found: list[tuple[int, ...]] | None = None,
    ) -> list[tuple[int, ...]]:
        """Up to ``count`` distinct continuations of row ``row``'s text: its longest suffix
        (of ``longest`` (default ``key``) down to ``shortest`` tokens) seen before first,
        most recent first within a key; appended to ``found`` (those count, and are not
        repeated)."""
        toks, table = self.tokens[row], self.tables[row]
        found = [] if found is None else found
        top = self.key if longest is None else longest
        for k in range(min(top, len(toks)), shortest - 1, -1):
            if len(found) >= count:
                break
            for c in reversed(table.get(tuple(toks[-k:]), {}).keys()):
                gram = self.continuation(row, c)
                if gram not in found:
                    found.append(gram)
                    if len(found) == count:
                        break
        return found


def _candidates(
    context: ContextPool | None,
    pool: NgramPool,
    last: list[int],
    live: list[bool],
    count: int,
    length: int,
) -> tuple[list[list[tuple[int, ...]]], list[bool]]:
    """Per row, up to ``count`` distinct candidates of ``length`` tokens: the context's
    continuations of the row's suffixes of 2 or more tokens, then the trajectory pool's
    continuations of ``last`` (padded with their last token), then the context's
    continuations of ``last`` alone (measured on byte-level code: a 2-3 token key is right
    far more often than the trajectory, the trajectory more often than one token). When a
    row's last ``context.key`` tokens were seen before (``strong``), its first candidate
    keeps the context pool's full length."""
    out, strong = [], []
    for b, token in enumerate(last):
        found: list[tuple[int, ...]] = []
        long = False
        if live[b]:
            if context is not None:
                context.lookup(b, count, shortest=2, found=found)
                long = bool(found) and context.matched(b) == context.key
                found = [g[:length] if i or not long else g for i, g in enumerate(found)]
                found = [g for i, g in enumerate(found) if g not in found[:i]]
            if len(found) < count:
                for gram in pool.lookup(b, token):
                    gram = (gram + gram[-1:] * (length - len(gram)))[:length]
                    if gram not in found:
                        found.append(gram)
                        if len(found) == count:
                            break
            if context is not None and len(found) < count:
                more = context.lookup(b, count, shortest=1, longest=1)
                for gram in more:
                    if gram[:length] not in found and len(found) < count:
                        found.append(gram[:length])
        out.append(found)
        strong.append(long)
    return out, strong


def lookahead(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    window: int = 1,
    ngram: int = 2,
    pool_size: int = 1,
    context: int = 3,
    candidate_len: int | None = 4,
    copy_len: int | None = None,
    compile: bool = False,
) -> GenerationResult:
    """Strategy ``lookahead``: greedy output; one forward per step holds the Jacobi
    lookahead branch (``window`` columns x ``ngram - 1`` levels; ``window=0``: none) and
    up to ``pool_size`` candidates of ``candidate_len`` tokens (None: ``ngram - 1``) from
    the row's own context (``context`` = longest key, 0 = off) and the trajectory's n-gram
    pool; when a row's last ``context`` tokens occurred before, its first candidate (a
    copy of what followed them) has ``copy_len`` tokens (None: ``candidate_len``). Fu et
    al. use W=15, N=5, G=W on GPUs; these defaults fill one 6-row CPU tile (T = 6,
    measured in docs/packages/ar-decoding.md). ``pool_size`` is also the number of n-grams kept per
    first token. ``compile``: each step's forward runs as a compiled graph
    (:class:`~ar_core.generation.ModelPass` with the step's mask table as an input; one
    graph per block size, each compiled on first use)."""
    reject_repetition_penalty(config, "lookahead")
    W = positive_int(window, "window", "lookahead", minimum=0)
    n = positive_int(ngram, "ngram", "lookahead", minimum=2)
    G = positive_int(pool_size, "pool_size", "lookahead")
    K = positive_int(context, "context", "lookahead", minimum=0)
    m = positive_int(
        n - 1 if candidate_len is None else candidate_len, "candidate_len", "lookahead"
    )
    L = positive_int(m if copy_len is None or not K else copy_len, "copy_len", "lookahead")
    L = max(L, m)
    check_eos(config, model.vocab_size)
    B = input_ids.shape[0]
    device = input_ids.device
    levels = n - 1
    S_max = 1 + levels * W + L + (G - 1) * m
    cache_len = cache_budget(
        model,
        input_ids,
        prompt_lengths,
        config.max_new_tokens,
        extra=S_max - 1,
        fix="lower window, ngram, pool_size, candidate_len, copy_len or max_new_tokens",
    )
    if streamer is not None:
        streamer = _OrdinaryTensors(streamer)
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=0)
    if rows.all_finished():  # max_new_tokens = 0
        return rows.finish()
    blocks: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = {}
    # the block sizes a step can have: 1..G candidates, the first one a long copy or not
    sizes = {1 + levels * W + first + (g - 1) * m for first in {m, L} for g in range(1, G + 1)}
    (target_pass,), slots = passes([model], cache_len, compile, tuple(sorted(sizes)))
    pool = NgramPool(B, G)
    cand_base = 1 + levels * W
    batch = torch.arange(B, device=device)
    with torch.inference_mode():  # ~5% less per-op overhead than no_grad on the CPU
        (cache,) = first_step([model], rows, TokenPicker(config, do_sample=False), slots)
        last = rows.last()  # (B,) the argmax after each prompt
        ctx = None
        if K:
            texts = [r[:length] for r, length in zip(rows.seq.tolist(), rows.length.tolist())]
            ctx = ContextPool(texts, K, L, 4 * G)
        # initial trajectory: the prompt's tokens, cycled (Fu et al. start from random)
        levels_tok = _initial_levels(input_ids, prompt_lengths, levels, W)  # (B, n-1, W)
        while not rows.all_finished():
            rows.retire_finished(cache)
            last_l = last.tolist()
            found, strong = _candidates(ctx, pool, last_l, (~rows.finished).tolist(), G, m)
            Gs = max(1, max(len(f) for f in found))  # this step's candidate count
            lengths = (L if any(strong) else m,) + (m,) * (Gs - 1)
            if lengths not in blocks:
                blocks[lengths] = _block(W, n, lengths, cand_base, device)
            local, rel_pos, slot = blocks[lengths]  # slot: (Gs, Lmax) block slot, -1 = none
            Lmax = slot.shape[1]
            cands = torch.tensor(
                [
                    [
                        _fit(f[g] if g < len(f) else (t,) * lengths[g], lengths[g], Lmax)
                        for g in range(Gs)
                    ]
                    for f, t in zip(found, last_l)
                ],
                dtype=torch.long,
                device=device,
            )  # (B, Gs, Lmax); missing ones are `last` repeated (verified like any other),
            # padding -1 (never accepted)
            tokens = torch.cat(
                [last[:, None], levels_tok.flatten(1), cands[:, slot >= 0]], dim=1
            )  # (B, S)
            P = cache.lengths.clone()  # (B,)
            logits = target_pass(
                tokens, cache, positions=P[:, None] + rel_pos, table=local
            )  # (B, S, V)
            rows.stats.target_forward_passes += 1
            rows.watch(logits)
            pred = logits.argmax(-1)  # (B, S)
            # verification: each candidate continues `last`
            cand_pred = pred[:, slot.clamp(min=0)]  # (B, Gs, Lmax)
            target = torch.cat([pred[:, None, :1].expand(B, Gs, 1), cand_pred], dim=2)
            n_acc = (cands == target[..., :Lmax]).long().cumprod(-1).sum(-1)  # (B, Gs)
            best = n_acc.argmax(-1)  # (B,) first longest
            n_best = n_acc[batch, best]  # (B,)
            last_new = target[batch, best].gather(1, n_best[:, None]).squeeze(1)  # (B,)
            accepted = accepted_tokens(cands[batch, best], n_best, last_new)  # (B, Lmax + 1)
            kept = rows.emit(accepted, n_best + 1)
            # move the winner's cache entries right after `last`, then commit
            dst = P[:, None] + 1 + torch.arange(Lmax, device=device)  # (B, Lmax)
            src_slot = slot[best]  # (B, Lmax)
            src = torch.where(src_slot >= 0, P[:, None] + src_slot, dst)
            cache.move_entries(src, dst)
            cache.commit(n_best + 1)
            last = last_new
            if ctx is not None:
                for b, (row, k) in enumerate(zip(accepted.tolist(), kept.tolist())):
                    if k:
                        ctx.extend(b, row[:k])
            if W:  # lookahead branch: harvest n-grams, shift the levels
                look_pred = pred[:, 1:cand_base].view(B, levels, W)  # (B, n-1, W)
                newest = look_pred[:, -1]  # (B, W)
                grams = torch.cat([levels_tok, newest[:, None]], dim=1)  # (B, n, W)
                pool.add(grams.transpose(1, 2))  # (B, W, n)
                levels_tok = torch.cat([levels_tok[:, 1:], newest[:, None]], dim=1)
    return rows.finish()


def _fit(gram: tuple[int, ...], length: int, width: int) -> list[int]:
    """``gram`` cut or padded (with its last token) to ``length``, then -1 up to ``width``."""
    g = list(gram[:length]) + [gram[-1]] * (length - len(gram))
    return g + [-1] * (width - length)


def _block(
    W: int, n: int, lengths: tuple[int, ...], base: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """A step's layout: mask table (S, S), positions (S,), and each candidate token's block
    slot (G, max length), -1 past a candidate's length."""
    G, width = len(lengths), max(lengths)
    slot = torch.full((G, width), -1, dtype=torch.long)
    first = base
    for g, m in enumerate(lengths):
        slot[g, :m] = first + torch.arange(m)
        first += m
    return (
        lookahead_local_mask(W, n, G, lengths).to(device),
        lookahead_positions(W, n, G, lengths).to(device),
        slot.to(device),
    )


class _OrdinaryTensors:
    """Hands the streamer ordinary tensors (the loop runs under ``torch.inference_mode``,
    whose tensors refuse in-place changes outside it)."""

    def __init__(self, streamer: Streamer) -> None:
        self.streamer = streamer

    def put(self, tokens: Tensor) -> None:
        with torch.inference_mode(False):
            self.streamer.put(tokens.clone())

    def end(self) -> None:
        self.streamer.end()


def _initial_levels(input_ids: Tensor, prompt_lengths: Tensor, levels: int, W: int) -> Tensor:
    """(B, n-1, W): each row's prompt tokens, cycled, as the first trajectory."""
    k = torch.arange(levels * W, device=input_ids.device)[None, :]  # (1, (n-1) W)
    index = k % prompt_lengths[:, None]  # (B, (n-1) W)
    return input_ids.gather(1, index).view(input_ids.shape[0], levels, W)
