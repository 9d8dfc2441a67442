"""FreeCache: reuse the keys and values of stable tokens across the denoising steps of a
bidirectional diffusion LM, recomputing only the active block.

Hu et al., "Accelerating Diffusion Language Model Inference via Efficient KV Caching and
Guided Diffusion" (FlashDLM, 2025, arXiv:2505.21467), FreeCache. A masked diffusion LM
that attends bidirectionally (MDLM, :mod:`ar_diffusion.mdlm`) is sampled semi-
autoregressively: the ``N`` new positions are cut into blocks of ``block_size`` and
denoised one block at a time (first-hitting steps or Fast-dLLM's confidence threshold,
:mod:`ar_diffusion.unmask`). Exactly, every call runs the whole sequence (prompt,
finished blocks, the active block, the [MASK] positions after it), because in a
bidirectional model every key depends on every token. FreeCache observes that the keys
and values of the tokens that do not change during a block (the prompt, the finished
blocks and the masked tail) barely move, and reuses them:

* a *refresh* call runs the whole sequence once and keeps the keys and values of every
  column but the active block in ar-core's ``StaticKVCache`` (committed entries); the
  active block's logits of that call are exact;
* every other call runs only the block's L positions over the cache (``commit=False``,
  pending entries that the next call overwrites): L queries instead of T.

A block starts with a refresh (the previous block's tokens just became stable); with
``refresh=r`` every r-th call of a block refreshes too, ``refresh=1`` is exact (every
call refreshes). ``use_cache=False`` is the reference that runs the whole sequence at
every call.

The cache holds the columns in the order [stable columns, active block]: the stable
columns (everything outside the block, in column order) are committed, and the block is
written after them, so its queries see every stable key and itself. Each slot keeps its
column's RoPE position, and bidirectional attention does not depend on the order of the
keys, so a refresh computes what the reference computes (up to the order of float sums).

``stats.target_forward_passes`` counts network calls, refreshes and block calls alike.

Notation: B rows, P padded prompt width, N new tokens, T = P + N, L block size, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    GenerationStats,
    Rows,
    Streamer,
    TokenPicker,
    check_eos,
    make_generator,
    positive_int,
    reject_repetition_penalty,
)
from ar_diffusion.bd3 import check_block_size
from ar_diffusion.layout import PromptLayout
from ar_diffusion.subs import check_mask_id, subs_logits
from ar_diffusion.unmask import check_threshold, first_hitting_step, reveal_counts, threshold_step

__all__ = ["FreeCacheDenoiser", "freecache"]


class FreeCacheDenoiser:
    """Logits of the active block of a bidirectional model, with FreeCache reuse
    (``use_cache``) or by the full forward at every call (the reference).

    Call :meth:`start_block` when a block begins, then :meth:`logits` once per denoising
    step with the current columns ``x`` (B, T). ``stats.target_forward_passes`` is
    incremented at every network call.
    """

    def __init__(
        self,
        model: Any,
        layout: PromptLayout,
        block_size: int,
        *,
        use_cache: bool,
        refresh: int | None,
        stats: GenerationStats,
    ) -> None:
        self.model, self.layout, self.L, self.stats = model, layout, block_size, stats
        self.T = layout.width + layout.n_new
        self.positions = layout.all_positions()  # (B, T)
        self.full_mask = layout.bidirectional()
        self.refresh = refresh
        self.cache = model.new_cache(layout.tokens.shape[0], self.T) if use_cache else None
        self.block_start = layout.width
        self.calls = 0  # calls made in the current block
        self.order = torch.arange(self.T, device=self.positions.device)
        self.slot_mask = self.full_mask

    def start_block(self, k: int) -> None:
        """Block k (columns ``P + k L .. P + (k + 1) L - 1``) becomes the active one."""
        self.block_start = self.layout.width + k * self.L
        self.calls = 0
        a0, a1 = self.block_start, self.block_start + self.L
        cols = torch.arange(self.T, device=self.positions.device)
        # the stable columns in column order, then the block: the slot order of the cache
        self.order = torch.cat([cols[:a0], cols[a1:], cols[a0:a1]])
        self.slot_mask = self.layout.bidirectional(self.order)

    def logits(self, x: Tensor) -> Tensor:
        """Logits of the active block (B, L, V) for the columns ``x`` (B, T): one network call."""
        a0, a1 = self.block_start, self.block_start + self.L
        refresh = self.calls == 0 or (self.refresh is not None and self.calls % self.refresh == 0)
        self.calls += 1
        self.stats.target_forward_passes += 1
        if self.cache is None:  # the reference: the whole sequence, every call
            positions = self.layout.cols(0, self.T)
            return self.model(x, positions=positions, mask=self.full_mask).logits[:, a0:a1]
        if refresh:  # every column in slot order; keep all but the block
            self.cache.reset()
            order = self.order
            out = self.model(
                x[:, order],
                positions=self.positions[:, order],
                cache=self.cache,
                mask=self.slot_mask,
                commit=False,
            )
            self.cache.commit(self.T - self.L)
            return out.logits[:, -self.L :]
        return self.model(
            x[:, a0:a1],
            positions=self.positions[:, a0:a1],
            cache=self.cache,
            mask=self.slot_mask,
            commit=False,
        ).logits


def _block_probs(
    den: FreeCacheDenoiser, x: Tensor, a0: int, block: Tensor, mask_id: int, picker: TokenPicker
) -> Tensor:
    """SUBS probabilities of ``block`` (B, L) written into the columns ``a0 ..`` of ``x``:
    (B, L, V), one network call."""
    x[:, a0 : a0 + block.shape[1]] = block
    logits = den.logits(x).float()  # (B, L, V)
    return picker.probs(subs_logits(logits, block, mask_id))


def freecache(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor | None = None,
    streamer: Streamer | None = None,
    block_size: int = 4,
    steps: int | None = None,
    threshold: float | None = None,
    refresh: int | None = None,
    mask_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Semi-autoregressive sampling of a bidirectional diffusion LM with FreeCache, as an
    ``ar.generate`` strategy: ``max_new_tokens / block_size`` blocks, each denoised in
    ``steps`` (default ``block_size``) first-hitting steps or by confidence-``threshold``
    unmasking; ``refresh`` (default: only at a block's start) re-encodes the whole
    sequence every ``refresh`` calls. ``use_cache=False``: the reference, the whole
    sequence at every call. ``stats.target_forward_passes`` counts network calls."""
    reject_repetition_penalty(config, "freecache")
    check_eos(config, model.vocab_size)
    B = input_ids.shape[0]
    device = input_ids.device
    lengths = (
        torch.full((B,), input_ids.shape[1], dtype=torch.long, device=device)
        if prompt_lengths is None
        else prompt_lengths
    )
    N = config.max_new_tokens
    L = check_block_size(block_size, N, "freecache") if N else block_size
    check_threshold(threshold, steps, "freecache")
    steps = positive_int(L if steps is None else steps, "steps", "freecache")
    if refresh is not None:
        refresh = positive_int(refresh, "refresh", "freecache")
    layout = PromptLayout.build(model, input_ids, lengths, N, "freecache")
    P = layout.width
    mask_id = check_mask_id(mask_id, model.vocab_size, layout.real_tokens(input_ids), "freecache")
    rows = Rows(input_ids, lengths, config, streamer)
    picker = TokenPicker(config, device=device)
    gen = make_generator(config, device, generator)
    x = torch.cat([layout.tokens, torch.full((B, N), mask_id, dtype=torch.long, device=device)], 1)
    with torch.no_grad():
        if N:
            den = FreeCacheDenoiser(
                model, layout, L, use_cache=use_cache, refresh=refresh, stats=rows.stats
            )
        for k in range(N // L):
            den.start_block(k)
            a0, a1 = P + k * L, P + (k + 1) * L

            block = x[:, a0:a1].clone()
            if threshold is None:
                for n_reveal in reveal_counts(L, steps):
                    if n_reveal:  # a step that reveals nothing makes no call
                        probs = _block_probs(den, x, a0, block, mask_id, picker)
                        block = first_hitting_step(
                            block, probs, n_reveal, mask_id, gen, picker.greedy
                        )
            else:
                while bool((block == mask_id).any()):
                    probs = _block_probs(den, x, a0, block, mask_id, picker)
                    block = threshold_step(block, probs, threshold, mask_id, gen, picker.greedy)
            x[:, a0:a1] = block
    rows.emit(x[:, P:], torch.full((B,), N, dtype=torch.long, device=device))
    return rows.finish()
