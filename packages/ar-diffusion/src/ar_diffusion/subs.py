"""The SUBS parameterisation of absorbing-state diffusion, and the checks of a mask id.

Sahoo et al., "Simple and Effective Masked Diffusion Language Models" (MDLM, 2024,
arXiv:2406.07524), section 3.2: the denoiser ``x_theta(x_t)`` is the network's
distribution with two substitutions. *Zero masking*: the [MASK] id gets no probability
(a clean token is never [MASK]). *Carry-over unmasking*: a position that is not masked in
``x_t`` is copied, probability 1 on its own token (an absorbing process never changes an
unmasked token, so nothing is to be predicted there).

The model is an ``ar_core.Transformer`` whose vocabulary has one id more than the data:
real tokens are ``0 .. mask_id - 1`` and ``mask_id`` (by default ``vocab_size - 1``) is
[MASK]. The first-hitting draw (:func:`draw_tokens`) turns probabilities into tokens with
one uniform per position from an explicit generator, so a cached and an uncached sampler
that see the same probabilities draw the same tokens.

Notation: B rows, T positions, V vocabulary (mask id included).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError

__all__ = ["check_mask_id", "draw_tokens", "subs_log_probs", "subs_logits"]

NEG_INF = float("-inf")


def check_mask_id(mask_id: int | None, vocab_size: int, tokens: Tensor | None, what: str) -> int:
    """``mask_id`` (default ``vocab_size - 1``) after checking that it is an id of the
    model and that no real token of ``tokens`` uses it."""
    mask_id = vocab_size - 1 if mask_id is None else mask_id
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise ConfigError(f"{what}: mask_id must be an int, got {mask_id!r}")
    if not 0 <= mask_id < vocab_size:
        raise ConfigError(
            f"{what}: mask_id={mask_id} is outside the model's vocabulary [0, {vocab_size}); "
            f"give the model one id more than the data (vocab_size = data vocabulary + 1) "
            f"and use the last one"
        )
    if tokens is not None:
        hits = (tokens == mask_id).nonzero()
        if hits.numel():
            b, t = hits[0].tolist()
            raise InputError(
                f"{what}: mask_id={mask_id} is a real token of the input (row {b}, position "
                f"{t}); [MASK] must be an id the data never uses: give the model "
                f"vocab_size = data vocabulary + 1 and mask_id = vocab_size - 1"
            )
    return mask_id


def subs_logits(logits: Tensor, x_t: Tensor, mask_id: int) -> Tensor:
    """SUBS on logits (B, T, V) for the noisy tokens ``x_t`` (B, T): ``-inf`` at
    ``mask_id``; at unmasked positions ``0`` at the position's own token and ``-inf``
    elsewhere (carry-over)."""
    out = logits.clone()
    out[..., mask_id] = NEG_INF  # zero masking
    unmasked = x_t != mask_id  # (B, T)
    copy = torch.full_like(out, NEG_INF)
    copy.scatter_(-1, x_t[..., None], 0.0)  # (B, T, V): one-hot in log space
    return torch.where(unmasked[..., None], copy, out)


def subs_log_probs(logits: Tensor, x_t: Tensor, mask_id: int) -> Tensor:
    """``log x_theta(x_t)`` (B, T, V): log-softmax of :func:`subs_logits` (float32)."""
    return torch.log_softmax(subs_logits(logits.float(), x_t, mask_id), dim=-1)


def draw_tokens(probs: Tensor, generator: torch.Generator | None, greedy: bool) -> Tensor:
    """One token per position from ``probs`` (..., V): the argmax when ``greedy``, else
    the inverse CDF at one uniform per position (``generator``; drawn even when greedy is
    False only). Returns (...) long."""
    if greedy:
        return probs.argmax(-1)
    cdf = probs.float().cumsum(-1)  # (..., V)
    u = torch.rand(probs.shape[:-1], generator=generator, device=probs.device)
    u = u * cdf[..., -1]
    token = torch.searchsorted(cdf, u[..., None].contiguous(), right=True)[..., 0]
    return token.clamp_max(probs.shape[-1] - 1)
