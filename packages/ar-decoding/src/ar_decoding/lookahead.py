"""Jacobi and lookahead decoding: lossless greedy decoding with several tokens per forward.

* ``jacobi`` – Santilli et al., "Accelerating Transformer Inference for Translation via
  Parallel Decoding" (2023, arXiv:2305.10427). Greedy decoding is the fixed point of
  y_i = argmax p(. | context, y_<i); iterate it on a window of guesses, one target
  forward per iteration.
* ``lookahead`` – Fu et al., "Break the Sequential Dependency of LLM Inference Using
  Lookahead Decoding" (2024, arXiv:2402.02057). The Jacobi trajectory is kept as a 2-D
  window; n-grams along it fill a pool; pooled n-grams that start with the last token
  are verified in the same forward.

Both return exactly the greedy output (ties broken like ``argmax``: the first index).

Jacobi step, per row. The cache holds the committed context except ``last`` (the newest
token). Input ``[last, g_1 .. g_W]`` (causal mask, positions after the context). Output
``y_i`` at slot i-1 is the greedy token after ``last, g_1..g_{i-1}``: ``y_1`` is always
right; ``g_i == y_i`` makes ``y_{i+1}`` right too (``ar_decoding.verify.accept_greedy``).
With ``a`` guesses accepted the row gains ``a + 1`` tokens; the cache commits the ``a + 1``
entries of ``last, g_1..g_a`` (all equal to the greedy sequence; the rest stay pending and
are overwritten); the outputs after the new last token, ``y_{a+2} ..``, are the next
guesses (the window is topped up by repeating its final guess).

Lookahead step (one forward, one custom ``MaskSpec``). Block of T = 1 + (n-1)(W + G)
slots after the committed context P (relative slot: RoPE position):

    slot 0                    last                    position P
    lookahead (l, j)          level l, column j       position P + 1 + l + j
      slot 1 + l W + j        (l < n-1, j < W)
    candidate (g, i)          token i of candidate g  position P + 1 + i
      slot 1 + (n-1)W + g(n-1) + i   (g < G, i < n-1)

Mask inside the block (every slot also sees the whole committed context and slot 0):

* lookahead (l, j) sees level 0 columns <= j and levels 1..l of column j – the keys at
  positions P + 1 .. P + 1 + l + j, i.e. a contiguous causal context (Fu et al. Fig. 2);
* candidate (g, i) sees candidate g's tokens 0..i (a causal chain; candidates never see
  each other or the lookahead branch);
* slot 0 sees itself.

After the forward, the outputs of the last level become the newest level (the oldest is
dropped); for each column j the n-gram (level 0..n-2 of column j, output of the last
level at column j) goes to the row's pool keyed by its first token. Candidates are
verified like Jacobi guesses; the longest accepted one wins. Its cache entries sit at the
candidate slots, not right after slot 0, so they are copied there (their keys already
carry RoPE positions P + 1 + i and attended exactly to the context, ``last`` and the
candidate's previous tokens) before the ``a + 1`` entries are committed. This copy needs
a cache with per-layer ``k``/``v`` buffers (B, H, S, D) (``StaticKVCache``).

Finished rows (EOS or N tokens) keep running in the batch; their cache is cropped to 0
so they never overflow it, and their outputs are ignored.

Notation: B rows, W window, n n-gram size, G verified candidates, V vocabulary.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    GenerationStats,
    Streamer,
    assemble_sequences,
)
from ar_core.generation import prefill as prefill_prompt
from ar_core.masks import MaskMod, MaskSpec
from ar_decoding.rows import (
    Rows,
    accepted_tokens,
    cache_budget,
    check_eos,
    positive_int,
    reject_repetition_penalty,
    retire_finished,
)
from ar_decoding.verify import accept_greedy

__all__ = ["jacobi", "lookahead", "lookahead_local_mask"]


def _greedy_only(config: GenerationConfig, strategy: str) -> None:
    reject_repetition_penalty(config, strategy)


# -- Jacobi -------------------------------------------------------------------------------


def jacobi(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    window: int = 8,
) -> GenerationResult:
    """Strategy ``jacobi``: greedy output, ``window`` guesses refined per forward
    (8: Santilli et al. use blocks of a few tokens; more costs compute on CPU)."""
    start = time.perf_counter()
    _greedy_only(config, "jacobi")
    window = positive_int(window, "window", "jacobi")
    check_eos(config, model.vocab_size)
    B, _ = input_ids.shape
    N = config.max_new_tokens
    cache_len = cache_budget(
        model, input_ids, prompt_lengths, N, window, "lower window or max_new_tokens"
    )
    stats = GenerationStats()
    out = Rows(input_ids, prompt_lengths, config, streamer, stats)
    with torch.no_grad():
        if N > 0:
            cache = model.new_cache(B, max_len=cache_len)
            last = prefill_prompt(model, input_ids, cache, prompt_lengths).argmax(-1)  # (B,)
            stats.target_forward_passes += 1
            out.emit(last[:, None], torch.ones_like(last))
            guesses = last[:, None].expand(B, window).clone()  # (B, W)
            while not out.all_finished():
                retire_finished(cache, out)
                tokens = torch.cat([last[:, None], guesses], dim=1)  # (B, W + 1)
                logits = model(tokens, cache=cache, commit=False).logits  # (B, W + 1, V)
                stats.target_forward_passes += 1
                n_acc, last = accept_greedy(guesses, logits)  # (B,), (B,)
                out.emit(accepted_tokens(guesses, n_acc, last), n_acc + 1)
                cache.commit(n_acc + 1)
                # outputs after the new last token are the next guesses
                pred = logits.argmax(-1)  # (B, W + 1)
                steps = torch.arange(window, device=pred.device)
                index = (n_acc[:, None] + 1 + steps).clamp(max=window)  # (B, W)
                guesses = pred.gather(1, index)
    out.end()
    sequences = assemble_sequences(input_ids, prompt_lengths, out.new_tokens, config.pad_token_id)
    stats.wall_seconds = time.perf_counter() - start
    return GenerationResult(sequences=sequences, stats=stats, prompt_lengths=prompt_lengths)


# -- lookahead ----------------------------------------------------------------------------


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


def _block_mask(local: Tensor, start: Tensor) -> MaskSpec:
    """Context before ``start[b]`` is causal; the block at ``start[b]`` follows ``local``."""
    n = local.shape[0]
    starts = start.detach().clone()

    def factory(device: torch.device) -> MaskMod:
        loc, s_all = local.to(device), starts.to(device)

        def lookahead_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            s = s_all[b]
            rq, rk = q - s, kv - s
            in_block = (rq >= 0) & (rq < n) & (rk >= 0) & (rk < n)
            block = in_block & loc[rq.clamp(0, n - 1), rk.clamp(0, n - 1)]
            return ((kv < s) & (kv <= q)) | block

        return lookahead_mod

    return MaskSpec(
        mask_mod=factory(starts.device),
        name=f"lookahead(S={n})",
        cache_key=("lookahead", n, tuple(starts.tolist()), id(local)),
        factory=factory,
    )


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


def _copy_entries(cache: Any, src: Tensor, dst: Tensor) -> None:
    """Copy cache slots ``src`` (B, m) to ``dst`` (B, m) in every layer (non-overlapping)."""
    for buffers in (cache.k, cache.v):
        for buf in buffers:  # (B, H, S, D)
            B, H, _, D = buf.shape
            m = src.shape[1]
            values = buf.gather(2, src[:, None, :, None].expand(B, H, m, D))
            buf.scatter_(2, dst[:, None, :, None].expand(B, H, m, D), values)


def lookahead(
    model: Any,
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
    start = time.perf_counter()
    _greedy_only(config, "lookahead")
    W = positive_int(window, "window", "lookahead")
    n = positive_int(ngram, "ngram", "lookahead", minimum=2)
    G = positive_int(pool_size, "pool_size", "lookahead")
    check_eos(config, model.vocab_size)
    B, _ = input_ids.shape
    N = config.max_new_tokens
    levels = n - 1
    local = lookahead_local_mask(W, n, G)  # (S, S)
    S = local.shape[0]
    rel_pos = lookahead_positions(W, n, G).to(input_ids.device)  # (S,)
    cache_len = cache_budget(
        model,
        input_ids,
        prompt_lengths,
        N,
        S - 1,
        "lower window, ngram, pool_size or max_new_tokens",
    )
    stats = GenerationStats()
    out = Rows(input_ids, prompt_lengths, config, streamer, stats)
    pool = NgramPool(B, G)
    cand_base = 1 + levels * W
    with torch.no_grad():
        if N > 0:
            cache = model.new_cache(B, max_len=cache_len)
            last = prefill_prompt(model, input_ids, cache, prompt_lengths).argmax(-1)  # (B,)
            stats.target_forward_passes += 1
            out.emit(last[:, None], torch.ones_like(last))
            # initial trajectory: the prompt's tokens, cycled (Fu et al. start from random)
            levels_tok = _initial_levels(input_ids, prompt_lengths, levels, W)  # (B, n-1, W)
            while not out.all_finished():
                retire_finished(cache, out)
                cands = pool.candidates(last, G, levels)  # (B, G, n-1)
                tokens = torch.cat(
                    [last[:, None], levels_tok.flatten(1), cands.flatten(1)], dim=1
                )  # (B, S)
                P = cache.lengths.clone()  # (B,)
                logits = model(
                    tokens,
                    positions=P[:, None] + rel_pos,
                    cache=cache,
                    mask=_block_mask(local, P),
                    commit=False,
                ).logits  # (B, S, V)
                stats.target_forward_passes += 1
                # verification: each candidate continues `last`
                cand_logits = logits[:, cand_base:].reshape(B, G, levels, -1)  # (B, G, n-1, V)
                first = logits[:, :1, None].expand(B, G, 1, -1)  # (B, G, 1, V)
                target = torch.cat([first, cand_logits], dim=2).flatten(0, 1)  # (B G, n, V)
                n_acc, nxt = accept_greedy(cands.flatten(0, 1), target)  # (B G,)
                n_acc, nxt = n_acc.view(B, G), nxt.view(B, G)
                best = n_acc.argmax(-1)  # (B,) first longest
                rows = torch.arange(B, device=best.device)
                n_best, last_new = n_acc[rows, best], nxt[rows, best]  # (B,)
                accepted = accepted_tokens(cands[rows, best], n_best, last_new)  # (B, n)
                out.emit(accepted, n_best + 1)
                # move the winner's cache entries right after `last`, then commit
                steps = torch.arange(levels, device=P.device)
                src = P[:, None] + cand_base + best[:, None] * levels + steps  # (B, n-1)
                _copy_entries(cache, src, P[:, None] + 1 + steps)
                cache.commit(n_best + 1)
                last = last_new
                # lookahead branch: harvest n-grams, shift the levels
                look_pred = logits[:, 1:cand_base].argmax(-1).view(B, levels, W)  # (B, n-1, W)
                newest = look_pred[:, -1]  # (B, W)
                grams = torch.cat([levels_tok, newest[:, None]], dim=1)  # (B, n, W)
                pool.add(grams.transpose(1, 2))  # (B, W, n)
                levels_tok = torch.cat([levels_tok[:, 1:], newest[:, None]], dim=1)
    out.end()
    sequences = assemble_sequences(input_ids, prompt_lengths, out.new_tokens, config.pad_token_id)
    stats.wall_seconds = time.perf_counter() - start
    return GenerationResult(sequences=sequences, stats=stats, prompt_lengths=prompt_lengths)


def _initial_levels(input_ids: Tensor, prompt_lengths: Tensor, levels: int, W: int) -> Tensor:
    """(B, n-1, W): each row's prompt tokens, cycled, as the first trajectory."""
    k = torch.arange(levels * W, device=input_ids.device)[None, :]  # (1, (n-1) W)
    index = k % prompt_lengths[:, None]  # (B, (n-1) W)
    return input_ids.gather(1, index).view(-1, levels, W)
