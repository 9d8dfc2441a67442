"""AR-guided diffusion: a small autoregressive model checks a block's parallel proposal in
one pass and unmasks the longest prefix it agrees with.

Hu et al., "Accelerating Diffusion Language Model Inference via Efficient KV Caching and
Guided Diffusion" (FlashDLM, 2025, arXiv:2505.21467), Guided Diffusion. A bidirectional
diffusion LM (MDLM, with FreeCache, :mod:`ar_diffusion.freecache`) fills every masked
position of the active block in one call (its argmax under SUBS: a *parallel proposal*).
The guide, any causal LM with ar-core's model contract (an ``ar_core.Transformer`` or a
``from_hf`` adapter), runs once over the proposal with its KV cache, like the target of
speculative decoding: its greedy token at each position given the accepted text and the
proposal before it. The longest prefix of the proposal that equals the guide's tokens is
unmasked, and the guide's own token at the first disagreement is taken too (it costs
nothing: the guide computed it). The rest of the block stays masked and the diffusion
model proposes it again given the new prefix. Every token is therefore the guide's
greedy choice: the output equals the guide's greedy decoding, and each guide call yields
1 + (agreeing proposal tokens) tokens, so where the diffusion model's proposals agree with
the guide there are fewer guide calls than tokens.

The guide's vocabulary must cover the diffusion model's real tokens ``0 .. mask_id - 1``;
its ids from ``mask_id`` on (a BOS, say) are never chosen. Greedy by construction: the
config's temperature and filters do not apply. ``use_cache=False``: the reference that
reuses nothing (the diffusion model runs the whole sequence at every call, the guide the
whole accepted text at every check).

Stats: ``target_forward_passes`` counts the diffusion model's calls,
``draft_forward_passes`` the guide's calls (prefill included), ``accepted_lengths`` the
tokens each check of each row unmasked.

Notation: B rows, P padded prompt width, P_b row b's prompt length, N new tokens, L
block size, u_b the unmasked prefix of row b's block, m = L - u_b its masked rest.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Rows,
    Streamer,
    check_eos,
    prefill,
)
from ar_diffusion.bd3 import check_block_size
from ar_diffusion.freecache import FreeCacheDenoiser
from ar_diffusion.layout import PromptLayout
from ar_diffusion.subs import check_mask_id, subs_logits

__all__ = ["ar_guided_diffusion", "check_guide"]


def check_guide(guide: Any, mask_id: int, longest: int, what: str) -> None:
    """The guide covers the real tokens ``0 .. mask_id - 1`` and ``longest`` positions."""

    vocab = getattr(guide, "vocab_size", None)
    if vocab is None or not callable(getattr(guide, "new_cache", None)):
        raise ConfigError(
            f"{what}: guide must be a causal LM with vocab_size and new_cache (an "
            f"ar_core.Transformer or a from_hf model), got {type(guide).__name__}"
        )
    if vocab < mask_id:
        raise ConfigError(
            f"{what}: the guide's vocabulary (vocab_size={vocab}) does not cover the "
            f"diffusion model's real tokens 0..{mask_id - 1} (mask_id={mask_id}); use a "
            f"guide over the same tokens"
        )
    if longest > guide.max_seq_len:
        raise InputError(
            f"{what}: prompt + max_new_tokens (+ block_size - 1 for a batch of several rows) "
            f"need {longest} positions but the guide's max_seq_len is {guide.max_seq_len}; "
            f"shorten the prompt or lower max_new_tokens"
        )


class _Guide:
    """The guide's greedy tokens after each row's accepted text: with its KV cache
    (``use_cache``) or by running the whole accepted text (the reference)."""

    def __init__(
        self, guide: Any, input_ids: Tensor, lengths: Tensor, n_new: int, mask_id: int, rows: Rows
    ) -> None:
        self.guide, self.mask_id, self.rows = guide, mask_id, rows
        B, P = input_ids.shape
        device = input_ids.device
        # each row's accepted text, right-padded: prompt_b then the accepted new tokens
        self.text = torch.zeros((B, P + n_new + 1), dtype=torch.long, device=device)
        self.text[:, :P] = torch.where(
            torch.arange(P, device=device)[None, :] < lengths[:, None], input_ids, 0
        )
        self.length = lengths.clone()  # (B,)
        self.cache: Any = None

    def start_cache(self, max_len: int) -> None:
        """Commit every prompt token but each row's last (the first check feeds it)."""
        B, P = self.rows.input_ids.shape
        self.cache = self.guide.new_cache(B, max_len)
        prefill(self.guide, self.text[:, :P], self.cache, self.length - 1)
        self.rows.stats.draft_forward_passes += 1

    def check(self, proposal: Tensor, m: Tensor) -> Tensor:
        """The guide's greedy token at each of the ``m[b]`` next positions of row b, given
        the accepted text and ``proposal`` (B, M) before it: (B, M). One guide call."""
        B, M = proposal.shape
        rows = torch.arange(B, device=proposal.device)
        last = self.text[rows, self.length - 1]  # (B,)
        feed = torch.cat([last[:, None], proposal[:, :-1]], 1)  # (B, M)
        self.rows.stats.draft_forward_passes += 1
        if self.cache is not None:
            logits = self.guide(feed, cache=self.cache, commit=False).logits  # (B, M, V)
        else:
            W = int(self.length.max()) + M - 1
            seq = torch.cat([self.text, proposal], 1)  # room for the proposal after any row
            cols = torch.arange(W, device=seq.device)[None, :]
            after = (cols - self.length[:, None]).clamp_min(0)  # index into the proposal
            seq = torch.where(
                cols < self.length[:, None],
                seq[:, :W],
                proposal.gather(1, after.clamp_max(M - 1)),
            )
            full = self.guide(seq).logits  # (B, W, V): causal, padding after each row
            at = (self.length - 1)[:, None] + torch.arange(M, device=seq.device)[None, :]
            logits = full.gather(1, at[..., None].expand(B, M, full.shape[-1]))
        return logits[..., : self.mask_id].argmax(-1)  # (B, M): real tokens only

    def accept(self, tokens: Tensor, counts: Tensor) -> None:
        """Append ``tokens[b, :counts[b]]`` to row b's text; the cache keeps the entries
        of the fed tokens that stay (the last token and the accepted ones before the new
        last)."""
        M = tokens.shape[1]
        j = torch.arange(M, device=tokens.device)[None, :]
        b, i = (j < counts[:, None]).nonzero(as_tuple=True)
        self.text[b, self.length[b] + i] = tokens[b, i]
        if self.cache is not None:
            self.cache.commit(counts)
        self.length += counts


def ar_guided_diffusion(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor | None = None,
    streamer: Streamer | None = None,
    guide: Any = None,
    block_size: int = 4,
    refresh: int | None = None,
    mask_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Semi-autoregressive sampling where a diffusion LM proposes each block in parallel
    and the AR ``guide`` accepts the longest prefix it agrees with (plus its own token at
    the first disagreement), as an ``ar.generate`` strategy. The output is the guide's
    greedy decoding; ``stats.target_forward_passes`` counts diffusion calls,
    ``stats.draft_forward_passes`` guide calls. ``refresh`` and ``use_cache`` as in
    ``freecache`` (``use_cache=False`` also runs the guide without its cache)."""
    what = "ar-guided-diffusion"
    if guide is None:
        raise ConfigError(
            f"{what}: pass guide=<a causal LM over the same tokens> (an ar_core.Transformer "
            f"or a from_hf model); it checks each block's proposal"
        )
    check_eos(config, model.vocab_size)
    del generator  # greedy by construction: nothing is drawn
    B = input_ids.shape[0]
    device = input_ids.device
    lengths = (
        torch.full((B,), input_ids.shape[1], dtype=torch.long, device=device)
        if prompt_lengths is None
        else prompt_lengths
    )
    N = config.max_new_tokens
    L = check_block_size(block_size, N, what) if N else block_size
    layout = PromptLayout.build(model, input_ids, lengths, N, what)
    P = layout.width
    mask_id = check_mask_id(mask_id, model.vocab_size, layout.real_tokens(input_ids), what)
    # a row done with its block still rides along in the guide's batch: its check writes
    # up to L - 1 pending entries after its text
    need = P + N + (L - 1 if B > 1 else 0)
    check_guide(guide, mask_id, need, what)
    rows = Rows(input_ids, lengths, config, streamer)
    accepted: list[int] = []
    x = torch.cat([layout.tokens, torch.full((B, N), mask_id, dtype=torch.long, device=device)], 1)
    with torch.no_grad():
        if N:
            den = FreeCacheDenoiser(
                model, layout, L, use_cache=use_cache, refresh=refresh, stats=rows.stats
            )
            judge = _Guide(guide, input_ids, lengths, N, mask_id, rows)
            if use_cache:
                judge.start_cache(need)
        arange_l = torch.arange(L, device=device)[None, :]  # (1, L)
        for k in range(N // L):
            den.start_block(k)
            a0, a1 = P + k * L, P + (k + 1) * L
            u = torch.zeros(B, dtype=torch.long, device=device)  # unmasked prefix per row
            while bool((u < L).any()):
                block = x[:, a0:a1]
                logits = den.logits(x).float()  # (B, L, V)
                proposal = subs_logits(logits, block, mask_id).argmax(-1)  # (B, L)
                m = L - u  # masked rest per row (0 for rows done with the block)
                M = int(m.max())
                idx = (u[:, None] + torch.arange(M, device=device)[None, :]).clamp_max(L - 1)
                prop = proposal.gather(1, idx)  # (B, M): row b's rest of the block
                greedy = judge.check(prop, m)  # (B, M)
                inside = torch.arange(M, device=device)[None, :] < m[:, None]
                agree = ((prop == greedy) & inside).long().cumprod(-1).sum(-1)  # (B,)
                take = torch.minimum(agree + 1, m)  # + the guide's token at the disagreement
                j = torch.arange(M, device=device)[None, :]
                tokens = torch.where(j < agree[:, None], prop, greedy)  # (B, M)
                judge.accept(tokens, take)
                accepted.extend(take[m > 0].tolist())
                # write the accepted tokens into the block columns u_b .. u_b + take_b - 1
                pos = arange_l - u[:, None]  # (B, L): index into tokens
                write = (pos >= 0) & (pos < take[:, None])
                new = tokens.gather(1, pos.clamp(0, M - 1))
                x[:, a0:a1] = torch.where(write, new, block)
                u = u + take
    rows.emit(x[:, P:], torch.full((B,), N, dtype=torch.long, device=device))
    result = rows.finish()
    result.stats.accepted_lengths = accepted
    return result
