"""Class-conditional sampling with classifier-free guidance over any Plan.

Classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022,
arXiv:2207.12598), as image AR models use it on logits (VAR, Tian et al. 2024,
arXiv:2404.02905; LlamaGen, Sun et al. 2024, arXiv:2406.06525)::

    logits = uncond + s_k * (cond - uncond)

with the conditional and the unconditional (null-class) rows batched together in one
network call per step. ``s_k`` is constant or linear in the step index (VAR's schedule:
``1`` at the first step, ``scale`` at the last). The guided logits then go through
ar-core's logits processors (top-k, top-p, ...) and one categorical draw per token from
an explicit ``torch.Generator``.

The loop is ar-core's step loop (``ar_core.steps.generate_steps``) with two changes:
the class is the first content token (no separate prefill call) and the CFG rows. A
reference path without the KV cache (``use_cache=False``: the full training forward
once per step) gives the same logits; the tests compare the two.

Notation: B images, R = 2B rows with CFG (B otherwise), N image tokens, V vocabulary,
m tokens of one step, K steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor

from ar_core import sampling
from ar_core.errors import ConfigError
from ar_core.ordering import Plan
from ar_core.steps import StepOutput, plan_slots, sample_step
from ar_vision.model import ClassConditionalStepModel
from ar_vision.representation import Allowed

Schedule = Literal["constant", "linear"]


def guidance_scale(scale: float, schedule: Schedule, step: int, num_steps: int) -> float:
    """``s_k``: ``scale`` (constant) or linear from 1 at step 0 to ``scale`` at the last."""
    if schedule == "constant" or num_steps == 1:
        return scale
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * step / (num_steps - 1)
    raise ConfigError(f"unknown CFG schedule {schedule!r}; use 'constant' or 'linear'")


def guide(logits: Tensor, scale: float) -> Tensor:
    """``uncond + s * (cond - uncond)`` for logits (2B, m, V) = [cond; uncond] -> (B, m, V)."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


@torch.no_grad()
def generate_images(
    model: ClassConditionalStepModel,
    plan: Plan,
    labels: Tensor,
    *,
    cfg_scale: float = 1.0,
    cfg_schedule: Schedule = "constant",
    processors: Sequence[sampling.LogitsProcessor] = (),
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    allowed: Allowed | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
) -> StepOutput:
    """Generate the image tokens of class ``labels`` (B,) step by step in the order of
    ``plan``: ``out.tokens`` (B, N), ``out.calls`` network calls (= ``plan.num_steps``).

    ``cfg_scale`` 1.0 samples the conditional model alone (B rows); any other value runs
    the null class alongside (2B rows). ``allowed`` (step, tokens so far) -> (B, m, V)
    bool restricts the ids of a step (CTF's clusters, ``Representation.allowed``).
    ``return_logits`` keeps the logits (B, m, V) each step drew from, before the
    processors.
    """
    if cfg_scale < 0:
        raise ConfigError(f"cfg_scale must be >= 0 (1.0 = no guidance), got {cfg_scale}")
    n, device = plan.num_positions, model.device
    model.check_tokens(n)
    labels = labels.to(device=device, dtype=torch.long)
    B = labels.shape[0]
    guided = cfg_scale != 1.0
    rows = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels
    R = rows.shape[0]
    tokens = torch.full((B, n), -1, dtype=torch.long, device=device)  # (B, N)
    out = StepOutput(tokens=tokens, calls=0)
    runner: StepRunner = (
        CachedSteps(model, plan, rows) if use_cache else UncachedSteps(model, plan, rows)
    )
    for k, step in enumerate(plan.steps):
        step = step.to(device)  # (m,)
        logits = runner.logits(step)  # (R, m, V)
        out.calls += 1
        if guided:
            logits = guide(logits, guidance_scale(cfg_scale, cfg_schedule, k, plan.num_steps))
        if allowed is not None:
            logits = logits.masked_fill(~allowed(step, tokens), float("-inf"))
        x = sample_step(logits, processors, generator, temperature)  # (B, m)
        if return_logits:
            out.step_logits.append(logits)
        tokens[:, step] = x
        runner.commit(step, x.repeat(R // B, 1))  # the same tokens for cond and uncond rows
    return out


class StepRunner(Protocol):
    """One network call per step: ``logits(step)`` (R, m, V) for the positions ``step``
    (m,), then ``commit(step, tokens)`` (R, m) makes the sampled tokens context."""

    def logits(self, step: Tensor) -> Tensor: ...

    def commit(self, step: Tensor, tokens: Tensor) -> None: ...


class CachedSteps:
    """The KV-cached loop: each call commits the previous step's tokens (the first call:
    ``[BOS, class]``) and reads this step's queries."""

    def __init__(self, model: ClassConditionalStepModel, plan: Plan, rows: Tensor) -> None:
        self.model = model
        self.cache = model.new_cache(rows.shape[0], plan.num_positions, max(plan.step_sizes))
        self.content, self.content_pos = model.first_content(rows)  # (R, 2), (R, 2)
        self.committed = 0

    def logits(self, step: Tensor) -> Tensor:
        self.committed += self.content.shape[1]
        return self.model.step_logits(
            self.cache, self.committed, self.content, self.content_pos, step
        )  # (R, m, V)

    def commit(self, step: Tensor, tokens: Tensor) -> None:
        self.content = tokens  # written to the cache by the next call
        self.content_pos = self.model.content_positions(step, tokens.shape[0])


class UncachedSteps:
    """The reference: the full two-stream training forward over everything sampled so
    far, once per step (positions not sampled yet hold 0; the block-causal mask hides
    them from the current step)."""

    def __init__(self, model: ClassConditionalStepModel, plan: Plan, rows: Tensor) -> None:
        self.model, self.rows = model, rows
        order, slot_steps = plan_slots(plan)
        self.order, self.slot_steps = order.to(model.device), slot_steps.to(model.device)
        self.current = torch.zeros(
            (rows.shape[0], plan.num_positions), dtype=torch.long, device=model.device
        )  # (R, N)
        self.start = 0  # first slot of the current step

    def logits(self, step: Tensor) -> Tensor:
        all_logits = self.model(self.current, self.rows, self.order, self.slot_steps)  # (R, N, V)
        return all_logits[:, self.start : self.start + step.numel()]  # (R, m, V)

    def commit(self, step: Tensor, tokens: Tensor) -> None:
        self.current[:, step] = tokens
        self.start += step.numel()
