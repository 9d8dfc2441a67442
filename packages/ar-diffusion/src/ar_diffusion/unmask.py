"""The rules that choose which masked positions of a block a denoising step reveals.

Shared by the block samplers (``block-diffusion``, ``freecache``): each step has the
SUBS probabilities ``x_theta`` of the active block and reveals some of its masked
positions with tokens drawn from them.

* First-hitting (BD3-LM, Arriola et al. 2025, arXiv:2503.09573, section 3.3): a block of
  L positions denoised in ``steps`` steps reveals an even share of the positions at each
  step (the number a linear mask rate expects), chosen uniformly at random among the
  masked ones.
* Confidence threshold (Fast-dLLM, Wu et al. 2025, arXiv:2505.22618): every masked
  position whose drawn token has probability >= ``threshold`` is revealed, and at least
  the most confident one, so a block takes as many steps as the model's confidence needs.

Both draw with one explicit generator in a fixed order, so two samplers that see the
same probabilities reveal the same tokens.

Notation: B rows, L block size, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.errors import ConfigError
from ar_diffusion.subs import draw_tokens

__all__ = ["check_threshold", "first_hitting_step", "reveal_counts", "threshold_step"]


def reveal_counts(block_size: int, steps: int) -> list[int]:
    """Positions revealed at each of ``steps`` steps: ``block_size`` split evenly (the
    first-hitting schedule of a linear mask rate); steps past ``block_size`` reveal 0."""
    return [(i + 1) * block_size // steps - i * block_size // steps for i in range(steps)]


def check_threshold(threshold: float | None, steps: int | None, strategy: str) -> None:
    """``threshold`` in (0, 1] and not given together with ``steps``."""
    if threshold is None:
        return
    if steps is not None:
        raise ConfigError(
            f"{strategy}: give steps= or threshold=, not both (threshold unmasking takes as "
            f"many steps as it needs)"
        )
    if not 0.0 < float(threshold) <= 1.0:
        raise ConfigError(f"{strategy}: threshold must be in (0, 1], got {threshold}")


def first_hitting_step(
    block: Tensor, probs: Tensor, n_reveal: int, mask_id: int, gen: torch.Generator, greedy: bool
) -> Tensor:
    """Reveal ``n_reveal`` masked positions of ``block`` (B, L), chosen uniformly at random,
    with tokens drawn from ``probs`` (B, L, V). Returns the new block."""
    B, L = block.shape
    drawn = draw_tokens(probs, gen, greedy)  # (B, L)
    masked = block == mask_id
    score = torch.rand((B, L), generator=gen, device=block.device)
    score = torch.where(masked, score, -1.0)  # uniform order over masked
    chosen = score.topk(n_reveal, dim=-1).indices  # (B, n_reveal)
    reveal = torch.zeros_like(masked).scatter_(1, chosen, True) & masked
    return torch.where(reveal, drawn, block)


def threshold_step(
    block: Tensor,
    probs: Tensor,
    threshold: float,
    mask_id: int,
    gen: torch.Generator,
    greedy: bool,
) -> Tensor:
    """Reveal every masked position of ``block`` (B, L) whose drawn token has probability
    >= ``threshold`` under ``probs`` (B, L, V), and at least the most confident one."""
    drawn = draw_tokens(probs, gen, greedy)  # (B, L)
    masked = block == mask_id
    conf = probs.gather(-1, drawn[..., None])[..., 0]  # (B, L)
    conf = torch.where(masked, conf, -1.0)
    best = torch.zeros_like(masked).scatter_(1, conf.argmax(-1, keepdim=True), True)
    reveal = masked & ((conf >= threshold) | best)
    return torch.where(reveal, drawn, block)
