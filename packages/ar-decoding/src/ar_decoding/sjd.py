"""Speculative Jacobi Decoding (SJD): lossless sampling with a window of self-drafted tokens.

Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with Training-free
Speculative Jacobi Decoding" (2024, arXiv:2410.01699). Jacobi iteration made
probabilistic with the speculative-sampling acceptance rule of Leviathan et al. (2023,
arXiv:2211.17192), so sampled outputs follow the target distribution exactly.

One iteration, per row. The cache holds the committed context except ``last`` (the
newest token). Input ``[last, x_1 .. x_L]``; the forward gives ``p_1 .. p_{L+1}`` (the
config's logits processors – temperature, top-k, top-p, min-p, typical – then softmax),
``p_i`` conditioned on ``last, x_1..x_{i-1}``. Draft ``x_i`` was drawn from ``q_i``;
it is accepted with probability ``min(1, p_i(x_i) / q_i(x_i))`` while all before it were
(``ar_decoding.verify.accept_sampling``); the first rejection draws the next token from
``norm(max(0, p_i - q_i))``; if all L are accepted a bonus token comes from ``p_{L+1}``.
Every iteration therefore commits ``a + 1 >= 1`` tokens (``a`` accepted drafts) and the
``a + 1`` cache entries of ``last, x_1..x_a``.

Next drafts: the outputs after the new last token, ``p_{a+2} .. p_{L+1}`` (conditioned
on the rejected draft, i.e. stale – that is Jacobi iteration), are sampled afresh and
become ``x_1 .. x_{L-a-1}`` with ``q = p`` of their position; the remaining ``a + 1``
slots are initialised:

* ``init="random"``: a uniform draw over the vocabulary, ``q`` = uniform;
* ``init="spatial"``: image tokens laid out in rows of ``grid_width`` (the new tokens of a
  row, starting at the first one): the token one image row above, or, in the first image
  row, the token to the left (the very first new token: uniform). This draft is a
  deterministic function of what is already known, so its ``q`` is the point mass on it:
  accepted with probability ``p(x)``, otherwise the next token comes from
  ``norm(max(0, p - onehot(x)))`` = ``p`` without ``x``, renormalised – which keeps the
  output exactly ``p``.

Why this is exact: when a draft is verified, it is distributed as its recorded ``q``
given everything drawn so far (fresh samples are independent draws, initial drafts are
point masses or uniform), so the speculative-sampling argument applies position by
position. At temperature 0 every ``p`` is one-hot and SJD returns the greedy output.

Work per pass: one forward over ``(b, w + 1)`` tokens for the ``b`` rows still in the
batch – rows that finished are dropped from it (their cache rows forked away) once at
most ``COMPACT`` of the batch is live, and the window ``w <= L`` shrinks to the most
tokens a live row can still emit minus one (drafts past that are never used). Neither
changes what a row draws from (the drafts dropped are never verified), so exactness
holds; the random draws differ from a run without them.

Notation: B rows, L window, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

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
from ar_core.sampling import multinomial_sample_one_no_sync
from ar_decoding.draft import accepted_tokens, first_step
from ar_decoding.verify import accept_sampling

__all__ = ["Acceptance", "jacobi_sampling", "sjd"]

# (draft (B, L), q (B, L, V), p (B, L + 1, V), generator) -> (n_accepted (B,), next (B,))
Acceptance = Callable[[Tensor, Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]

INITS = ("random", "spatial")
# drop finished rows from the batch (a copy of the cache rows) once at most this share
# of its rows are live
COMPACT = 0.9


def sjd(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    window: int = 16,
    init: str = "random",
    grid_width: int | None = None,
    generator: torch.Generator | None = None,
    draft_generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``sjd``: sampling with ``window`` self-drafted tokens per forward (16: the
    paper's default). ``generator`` drives acceptance and resampling (default: seeded from
    ``config.seed``), ``draft_generator`` the fresh drafts (default: ``generator``)."""

    def exact(draft: Tensor, q: Tensor, p: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return accept_sampling(draft, q, p, gen)

    return jacobi_sampling(
        model,
        input_ids,
        config,
        prompt_lengths=prompt_lengths,
        streamer=streamer,
        accept=exact,
        strategy="sjd",
        window=window,
        init=init,
        grid_width=grid_width,
        generator=generator,
        draft_generator=draft_generator,
    )


def jacobi_sampling(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None,
    accept: Acceptance,
    strategy: str,
    window: int,
    init: str,
    grid_width: int | None,
    generator: torch.Generator | None,
    draft_generator: torch.Generator | None,
) -> GenerationResult:
    """The SJD loop with a pluggable acceptance rule (exact for ``sjd``, relaxed for
    ``lantern``)."""
    reject_repetition_penalty(config, strategy)
    L = positive_int(window, "window", strategy)
    if init not in INITS:
        raise ConfigError(f"{strategy}: init must be one of {INITS}, got {init!r}")
    if init == "spatial":
        grid_width = positive_int(grid_width, "grid_width (needed by init='spatial')", strategy)
    check_eos(config, model.vocab_size)
    B = input_ids.shape[0]
    V = model.vocab_size
    device = input_ids.device
    cache_len = cache_budget(
        model,
        input_ids,
        prompt_lengths,
        config.max_new_tokens,
        extra=L,
        fix="lower window or max_new_tokens",
    )
    # always sampling: at temperature 0 the processors make every p one-hot
    picker = TokenPicker(config, do_sample=True, generator=generator, device=device)
    gen = picker.generator
    assert gen is not None
    draft_gen = gen if draft_generator is None else draft_generator
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=0)
    if rows.all_finished():  # max_new_tokens = 0
        return rows.finish()
    with torch.no_grad():
        (cache,) = first_step([model], rows, picker, cache_len)
        last = rows.last()  # (B,) drawn from each prompt's p
        x = torch.zeros(B, L, dtype=torch.long, device=device)  # drafts
        q = torch.zeros(B, L, V, device=device)  # the distribution each was drawn from
        keep = torch.zeros(B, dtype=torch.long, device=device)  # carried drafts per row
        idx = torch.arange(B, device=device)  # the batch's rows (all, until some finish)
        while True:
            live = ~rows.finished[idx]  # (b,)
            n_live = int(live.sum())
            if n_live == 0:
                break
            if n_live <= COMPACT * idx.numel():  # drop finished rows from the batch
                sel = live.nonzero().squeeze(1)  # (b',)
                idx, x, q, keep, last = idx[sel], x[sel], q[sel], keep[sel], last[sel]
                cache = cache.fork(sel)
            elif n_live < idx.numel():  # park the few finished ones at length 0
                cache.crop(torch.where(live, cache.lengths, 0))
            # no row emits more than its remaining tokens: drafts past them are never used
            w = min(x.shape[1], max(1, int(rows.remaining()[idx].max()) - 1))
            if w < x.shape[1]:
                x, q, keep = x[:, :w], q[:, :w], keep.clamp(max=w)
            known = None if init == "random" else (rows.n_new[idx], rows.new_tokens[idx])
            _initialise(x, q, keep, known, init, grid_width, draft_gen)
            tokens = torch.cat([last[:, None], x], dim=1)  # (b, w + 1)
            logits = model(tokens, cache=cache, commit=False).logits  # (b, w + 1, V)
            rows.stats.target_forward_passes += 1
            if idx.numel() == B:
                rows.watch(logits)
            else:  # the full batch's view (finished rows: finite zeros, not watched)
                peak = torch.zeros(B, device=device)
                peak[idx] = logits.amax(-1).float().sum(-1)  # what watch reduces to
                rows.watch(peak[:, None])
            p = picker.probs(logits)  # (b, w + 1, V)
            n_acc, last = accept(x, q, p, gen)  # (b,), (b,)
            new = accepted_tokens(x, n_acc, last)  # (b, w + 1)
            if idx.numel() == B:
                rows.emit(new, n_acc + 1)
            else:  # finished rows emit nothing
                full = torch.zeros(B, w + 1, dtype=torch.long, device=device)
                full[idx] = new
                counts = torch.zeros(B, dtype=torch.long, device=device)
                counts[idx] = n_acc + 1
                rows.emit(full, counts)
            cache.commit(n_acc + 1)
            # p_{a+2} .. p_{w+1} (slots a+1 .. w) are redrawn and carried as drafts
            fresh = multinomial_sample_one_no_sync(p[:, 1:], draft_gen)  # (b, w)
            src = (n_acc[:, None] + torch.arange(w, device=device)).clamp(max=w - 1)  # (b, w)
            x = fresh.gather(1, src)
            q = p[:, 1:].gather(1, src[..., None].expand(-1, -1, V))  # (b, w, V)
            keep = w - n_acc  # (b,) drafts carried; the rest are initialised
    return rows.finish()


def _initialise(
    x: Tensor,
    q: Tensor,
    keep: Tensor,
    known: tuple[Tensor, Tensor] | None,
    init: str,
    grid_width: int | None,
    gen: torch.Generator,
) -> None:
    """Fill draft slots ``j >= keep[b]`` of ``x`` (B, L) and ``q`` (B, L, V) in place.
    ``known`` (``init="spatial"`` only): each row's count of new tokens (B,) and the new
    tokens themselves (B, N)."""
    B, L, V = q.shape
    device = x.device
    uniform = torch.randint(0, V, (B, L), generator=gen, device=device)  # (B, L)
    slots = torch.arange(L, device=device)
    if init == "random":  # no slot depends on another: every slot at once
        fill = slots[None, :] >= keep[:, None]  # (B, L)
        x.copy_(torch.where(fill, uniform, x))
        q.masked_fill_(fill[..., None], 1.0 / V)
        return
    assert grid_width is not None and known is not None
    n_new, new_tokens = known
    N = new_tokens.shape[1]
    rows = torch.arange(B, device=device)
    # slot j's source (the token above, else the one to the left) is known, or an earlier
    # slot of the window: one pass in slot order fills every chain
    t = n_new[:, None] + slots  # (B, L) index of each slot among the row's new tokens
    src = torch.where(t >= grid_width, t - grid_width, t - 1)  # (B, L)
    committed = new_tokens.gather(1, src.clamp(0, N - 1))  # (B, L)
    in_window = src >= n_new[:, None]
    at = (src - n_new[:, None]).clamp(0, L - 1)  # (B, L)
    first = t == 0
    for j in range(L):
        fill = j >= keep  # (B,)
        token = torch.where(in_window[:, j], x[rows, at[:, j]], committed[:, j])
        token = torch.where(first[:, j], uniform[:, j], token)
        x[:, j] = torch.where(fill, token, x[:, j])
    fill = slots[None, :] >= keep[:, None]  # (B, L)
    dist = torch.nn.functional.one_hot(x, V).float()  # (B, L, V) point masses
    dist = torch.where(first[..., None], 1.0 / V, dist)
    q.copy_(torch.where(fill[..., None], dist, q))
