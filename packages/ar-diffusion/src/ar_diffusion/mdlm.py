"""MDLM: masked (absorbing-state) diffusion over a whole sequence.

Sahoo et al., "Simple and Effective Masked Diffusion Language Models" (2024,
arXiv:2406.07524). Forward process: each token is replaced by [MASK] independently with
probability ``1 - alpha_t`` (:mod:`ar_diffusion.schedule`). Training minimises the
continuous-time NELBO (eq. 11)

    NELBO(x_0) = E_{t ~ U[0, 1], x_t ~ q(.|x_0)} [ 1/t * sum_{l: x_t^l = [MASK]} -log x_theta(x_t)^l_{x_0^l} ]

with the SUBS denoiser (:mod:`ar_diffusion.subs`) of a bidirectional Transformer
(``masks.prefix(T)``: every position sees every position), and antithetic times across
the batch. Sampling (section 3.3) goes from ``t = 1`` (all [MASK]) to ``0`` in ``steps``
ancestral steps: from ``t`` to ``s < t`` a masked position stays masked with probability
``(1 - alpha_s) / (1 - alpha_t)`` and otherwise takes a token drawn from ``x_theta``; an
unmasked one is copied. The network has no time input, so when a step changes nothing
the next step reuses ``x_theta`` (``use_cache=True``) instead of calling the network
again; ``use_cache=False`` is the reference that calls it every step. Prompts of
different lengths are laid out left-padded, padding hidden (:mod:`ar_diffusion.layout`).

Notation: B rows, P prompt length, N new tokens, T = P + N, V vocabulary (mask included).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ar_core import masks
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Rows,
    Streamer,
    TokenPicker,
    check_eos,
    make_generator,
    positive_int,
    reject_repetition_penalty,
)
from ar_diffusion.layout import PromptLayout
from ar_diffusion.schedule import LogLinearSchedule, antithetic_times
from ar_diffusion.subs import check_mask_id, draw_tokens, subs_log_probs, subs_logits

__all__ = ["corrupt", "mdlm", "mdlm_loss", "mdlm_nelbo_terms"]


def corrupt(x0: Tensor, rate: Tensor, mask_id: int, generator: torch.Generator | None) -> Tensor:
    """``x_t``: each token of ``x0`` (B, T) becomes ``mask_id`` with probability ``rate``
    (broadcastable to (B, T))."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    return torch.where(u < rate, torch.full_like(x0, mask_id), x0)


def mdlm_nelbo_terms(model: Any, x_t: Tensor, x0: Tensor, mask_id: int) -> Tensor:
    """``-log x_theta(x_t)_{x_0}`` at each masked position of ``x_t``, 0 elsewhere:
    (B, T) float32. One bidirectional forward."""
    T = x_t.shape[1]
    logits = model(x_t, mask=masks.prefix(T)).logits  # (B, T, V)
    logp = subs_log_probs(logits, x_t, mask_id)  # (B, T, V)
    nll = -logp.gather(-1, x0[..., None])[..., 0]  # (B, T)
    return torch.where(x_t == mask_id, nll, torch.zeros_like(nll))


def mdlm_loss(
    model: Any,
    x0: Tensor,
    *,
    mask_id: int | None = None,
    schedule: LogLinearSchedule | None = None,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
) -> Tensor:
    """One-sample Monte Carlo NELBO of each row of ``x0`` (B, T), in nats (summed over
    positions): (B,). ``t`` (B,) fixes the times; default antithetic times mapped
    through the schedule's clipped range. Mean over rows / T is the training loss."""
    schedule = LogLinearSchedule() if schedule is None else schedule
    mask_id = check_mask_id(mask_id, model.vocab_size, x0, "mdlm_loss")
    B = x0.shape[0]
    if t is None:
        t = schedule.clip(antithetic_times(B, generator=generator, device=x0.device))
    x_t = corrupt(x0, schedule.mask_rate(t)[:, None], mask_id, generator)  # (B, T)
    nll = mdlm_nelbo_terms(model, x_t, x0, mask_id)  # (B, T)
    return (schedule.weight(t)[:, None] * nll).sum(-1)  # (B,)


def mdlm(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor | None = None,
    streamer: Streamer | None = None,
    mask_id: int | None = None,
    steps: int | None = None,
    use_cache: bool = True,
    schedule: LogLinearSchedule | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """MDLM's ancestral sampler as an ``ar.generate`` strategy: ``max_new_tokens``
    [MASK] positions after the prompt, denoised in ``steps`` (default max_new_tokens)
    steps of time ``1/steps``. ``use_cache`` reuses ``x_theta`` across steps that
    changed nothing; ``stats.target_forward_passes`` counts network calls."""
    reject_repetition_penalty(config, "mdlm")
    check_eos(config, model.vocab_size)
    B = input_ids.shape[0]
    lengths = (
        torch.full((B,), input_ids.shape[1], dtype=torch.long, device=input_ids.device)
        if prompt_lengths is None
        else prompt_lengths
    )
    N = config.max_new_tokens
    steps = positive_int(N if steps is None else steps, "steps", "mdlm") if N else 0
    layout = PromptLayout.build(model, input_ids, lengths, N, "mdlm")
    P = layout.width
    mask_id = check_mask_id(mask_id, model.vocab_size, layout.real_tokens(input_ids), "mdlm")
    schedule = LogLinearSchedule() if schedule is None else schedule
    rows = Rows(input_ids, lengths, config, streamer)
    device = input_ids.device
    picker = TokenPicker(config, device=device)
    gen = make_generator(config, device, generator)
    new = torch.full((B, N), mask_id, dtype=torch.long, device=device)
    x = torch.cat([layout.tokens, new], 1)  # (B, P + N), prompts left-padded
    positions = layout.cols(0, P + N)
    attn = layout.bidirectional()  # over prompt and answer
    probs: Tensor | None = None  # x_theta at the new positions (B, N, V), while valid
    with torch.no_grad():
        for i in range(steps):
            t = torch.tensor(1.0 - i / steps)
            s = torch.tensor(1.0 - (i + 1) / steps)
            if probs is None or not use_cache:
                logits = model(x, positions=positions, mask=attn).logits[:, P:]  # (B, N, V)
                rows.stats.target_forward_passes += 1
                probs = picker.probs(subs_logits(logits.float(), x[:, P:], mask_id))
            stay = schedule.mask_rate(s) / schedule.mask_rate(t)  # P(still masked at s)
            u = torch.rand((B, N), generator=gen, device=device)
            drawn = draw_tokens(probs, gen, picker.greedy)  # (B, N)
            masked = x[:, P:] == mask_id
            reveal = masked & (u >= stay)
            if bool(reveal.any()):
                x[:, P:] = torch.where(reveal, drawn, x[:, P:])
                probs = None  # x_t changed: x_theta must be recomputed
    rows.emit(x[:, P:], torch.full((B,), N, dtype=torch.long, device=device))
    return rows.finish()
