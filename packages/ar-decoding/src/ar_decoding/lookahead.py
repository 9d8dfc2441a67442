"""Lookahead decoding: lossless greedy decoding; one forward holds a Jacobi lookahead
branch and verifies pooled n-grams (strategy ``lookahead``).

Fu et al., "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding"
(2024, arXiv:2402.02057). The Jacobi trajectory (:mod:`ar_decoding.jacobi`, Santilli et
al. 2023) is kept as a 2-D window; n-grams along it fill a pool; pooled n-grams that
start with the last token are verified in the same forward. Returns exactly the greedy
output (ties broken like ``argmax``: the first index).

One step (one forward under ``ar_core.masks.table``). The cache holds the committed
context except ``last`` (the newest token). Block of T = 1 + (n-1)(W + G) slots after the
committed context P (relative slot: RoPE position):

    slot 0                    last                    position P
    lookahead (l, j)          level l, column j       position P + 1 + l + j
      slot 1 + l W + j        (l < n-1, j < W)
    candidate (g, i)          token i of candidate g  position P + 1 + i
      slot 1 + (n-1)W + g(n-1) + i   (g < G, i < n-1)

Mask inside the block (:func:`lookahead_local_mask`; every slot also sees the whole
committed context and slot 0):

* lookahead (l, j) sees level 0 columns <= j and levels 1..l of column j – the keys at
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

Finished rows (EOS or N tokens) keep running in the batch; their cache is cropped to 0
(``Rows.retire_finished``) so they never overflow it, and their outputs are ignored.

Notation: B rows, W window, n n-gram size, G verified candidates, V vocabulary.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from ar_core import masks
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
from ar_decoding.draft import accepted_tokens, first_step
from ar_decoding.verify import accept_greedy

__all__ = ["NgramPool", "lookahead", "lookahead_local_mask", "lookahead_positions"]


def lookahead_local_mask(window: int, ngram: int, candidates: int) -> Tensor:
    """Visibility inside the lookahead block, (S, S) bool with S = 1 + (n-1)(W + G):
    ``out[i, j]`` = slot i may attend to slot j (see the module docstring)."""
    W, levels, G = window, ngram - 1, candidates
    S = 1 + levels * (window + G)
    vis = torch.zeros(S, S, dtype=torch.bool)
    vis[:, 0] = True  # everyone sees `last`
    for level in range(levels):
        for col in range(W):
            q = 1 + level * W + col
            vis[q, 1 : 1 + col + 1] = True  # level 0, columns 0..col
            for above in range(1, level + 1):
                vis[q, 1 + above * W + col] = True  # the same column, levels 1..level
    base = 1 + levels * W
    for g in range(G):
        first = base + g * levels
        for i in range(levels):
            vis[first + i, first : first + i + 1] = True
    return vis


def lookahead_positions(window: int, ngram: int, candidates: int) -> Tensor:
    """RoPE position of each block slot relative to ``last``: (S,) long."""
    levels = ngram - 1
    level = torch.arange(levels)[:, None]
    col = torch.arange(window)[None, :]
    look = (1 + level + col).flatten()  # (levels * W,)
    cand = (1 + torch.arange(levels)).repeat(candidates)  # (G * levels,)
    return torch.cat([torch.zeros(1, dtype=torch.long), look, cand])


class NgramPool:
    """Per row: first token -> the ``capacity`` most recent distinct continuations."""

    def __init__(self, batch: int, capacity: int) -> None:
        self.capacity = capacity
        self.rows: list[dict[int, OrderedDict[tuple[int, ...], None]]] = [{} for _ in range(batch)]

    def add(self, grams: Tensor) -> None:
        """``grams`` (B, M, n): M n-grams per row."""
        for pool, row in zip(self.rows, grams.tolist()):
            for gram in row:
                bucket = pool.setdefault(gram[0], OrderedDict())
                bucket.pop(tuple(gram[1:]), None)
                bucket[tuple(gram[1:])] = None  # most recent last
                if len(bucket) > self.capacity:
                    bucket.popitem(last=False)

    def candidates(self, last: Tensor, count: int, length: int) -> Tensor:
        """(B, count, length) continuations of each row's ``last`` token, most recent
        first; missing ones are filled with ``last`` repeated (verified like any other)."""
        out = []
        for pool, token in zip(self.rows, last.tolist()):
            found = list(reversed(pool.get(token, {}).keys()))[:count]
            found += [(token,) * length] * (count - len(found))
            out.append(found)
        return torch.tensor(out, dtype=torch.long, device=last.device)


def lookahead(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    window: int = 8,
    ngram: int = 4,
    pool_size: int = 8,
) -> GenerationResult:
    """Strategy ``lookahead``: greedy output; one forward per step holds the Jacobi
    lookahead branch (``window`` columns x ``ngram - 1`` levels) and ``pool_size``
    candidate n-grams (Fu et al. use W=15, N=5, G=W on GPUs; these defaults keep a CPU
    step small). ``pool_size`` is also the number of n-grams kept per first token."""
    reject_repetition_penalty(config, "lookahead")
    W = positive_int(window, "window", "lookahead")
    n = positive_int(ngram, "ngram", "lookahead", minimum=2)
    G = positive_int(pool_size, "pool_size", "lookahead")
    check_eos(config, model.vocab_size)
    B = input_ids.shape[0]
    levels = n - 1
    local = lookahead_local_mask(W, n, G)  # (S, S)
    S = local.shape[0]
    rel_pos = lookahead_positions(W, n, G).to(input_ids.device)  # (S,)
    cache_len = cache_budget(
        model,
        input_ids,
        prompt_lengths,
        config.max_new_tokens,
        extra=S - 1,
        fix="lower window, ngram, pool_size or max_new_tokens",
    )
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=0)
    if rows.all_finished():  # max_new_tokens = 0
        return rows.finish()
    pool = NgramPool(B, G)
    cand_base = 1 + levels * W
    batch = torch.arange(B, device=input_ids.device)
    steps = torch.arange(levels, device=input_ids.device)
    with torch.no_grad():
        (cache,) = first_step([model], rows, TokenPicker(config, do_sample=False), cache_len)
        last = rows.last()  # (B,) the argmax after each prompt
        # initial trajectory: the prompt's tokens, cycled (Fu et al. start from random)
        levels_tok = _initial_levels(input_ids, prompt_lengths, levels, W)  # (B, n-1, W)
        while not rows.all_finished():
            rows.retire_finished(cache)
            cands = pool.candidates(last, G, levels)  # (B, G, n-1)
            tokens = torch.cat(
                [last[:, None], levels_tok.flatten(1), cands.flatten(1)], dim=1
            )  # (B, S)
            P = cache.lengths.clone()  # (B,)
            logits = model(
                tokens,
                positions=P[:, None] + rel_pos,
                cache=cache,
                mask=masks.table(local, start=P, name="lookahead"),
                commit=False,
            ).logits  # (B, S, V)
            rows.stats.target_forward_passes += 1
            rows.watch(logits)
            # verification: each candidate continues `last`
            cand_logits = logits[:, cand_base:].reshape(B, G, levels, -1)  # (B, G, n-1, V)
            first = logits[:, :1, None].expand(B, G, 1, -1)  # (B, G, 1, V)
            target = torch.cat([first, cand_logits], dim=2).flatten(0, 1)  # (B G, n, V)
            n_acc, nxt = accept_greedy(cands.flatten(0, 1), target)  # (B G,)
            n_acc, nxt = n_acc.view(B, G), nxt.view(B, G)
            best = n_acc.argmax(-1)  # (B,) first longest
            n_best, last_new = n_acc[batch, best], nxt[batch, best]  # (B,)
            accepted = accepted_tokens(cands[batch, best], n_best, last_new)  # (B, n)
            rows.emit(accepted, n_best + 1)
            # move the winner's cache entries right after `last`, then commit
            src = P[:, None] + cand_base + best[:, None] * levels + steps  # (B, n-1)
            cache.move_entries(src, P[:, None] + 1 + steps)
            cache.commit(n_best + 1)
            last = last_new
            # lookahead branch: harvest n-grams, shift the levels
            look_pred = logits[:, 1:cand_base].argmax(-1).view(B, levels, W)  # (B, n-1, W)
            newest = look_pred[:, -1]  # (B, W)
            grams = torch.cat([levels_tok, newest[:, None]], dim=1)  # (B, n, W)
            pool.add(grams.transpose(1, 2))  # (B, W, n)
            levels_tok = torch.cat([levels_tok[:, 1:], newest[:, None]], dim=1)
    return rows.finish()


def _initial_levels(input_ids: Tensor, prompt_lengths: Tensor, levels: int, W: int) -> Tensor:
    """(B, n-1, W): each row's prompt tokens, cycled, as the first trajectory."""
    k = torch.arange(levels * W, device=input_ids.device)[None, :]  # (1, (n-1) W)
    index = k % prompt_lengths[:, None]  # (B, (n-1) W)
    return input_ids.gather(1, index).view(-1, levels, W)
