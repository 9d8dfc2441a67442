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

There is no loop here: this is ar-core's step loop (``ar_core.steps.generate_steps``)
with the class token as the *condition* (it joins ``[BOS]`` in step 0, so the first call
costs nothing extra), ``ClassifierFreeGuidance`` and ``AllowedValues`` (CTF's clusters)
as logits transforms, and the logits cut to the image vocabulary. ``use_cache=False``
runs ar-core's uncached reference (the training forward once per step); the tests
compare the two.

Notation: B images, R = 2B rows with CFG (B otherwise), N image tokens, V vocabulary,
m tokens of one step, K steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ar_core import sampling
from ar_core.errors import ConfigError
from ar_core.ordering import Plan
from ar_core.protocols import LogitsTransform
from ar_core.steps import AllowedValues, ClassifierFreeGuidance, StepOutput, generate_steps
from ar_vision.model import ClassConditionalStepModel
from ar_vision.representation import Allowed

Schedule = Literal["constant", "linear"]


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
    model.check_tokens(plan.num_positions)
    labels = labels.to(device=model.device, dtype=torch.long)
    transforms: list[LogitsTransform] = []
    rows = labels
    if cfg_scale != 1.0:  # [cond; uncond]: the null class runs alongside
        rows = torch.cat([labels, torch.full_like(labels, model.null_class)])
        transforms.append(ClassifierFreeGuidance(cfg_scale, plan.num_steps, cfg_schedule))
    if allowed is not None:
        transforms.append(AllowedValues(allowed))
    if model.own_step_queries:  # each step's queries see each other
        return _own_step_generate(
            model,
            plan,
            labels,
            rows,
            transforms,
            processors,
            temperature,
            generator,
            return_logits,
            use_cache,
        )
    return generate_steps(
        model.step_model,
        plan,
        batch_size=labels.shape[0],
        condition=model.class_tokens(rows)[:, None],  # (R, 1)
        transforms=transforms,
        processors=processors,
        temperature=temperature,
        generator=generator,
        return_logits=return_logits,
        use_cache=use_cache,
        vocab_size=model.vocab_size,
    )


def _own_step_generate(
    model: ClassConditionalStepModel,
    plan: Plan,
    labels: Tensor,
    rows: Tensor,
    transforms: list[LogitsTransform],
    processors: Sequence[sampling.LogitsProcessor],
    temperature: float,
    generator: torch.Generator | None,
    return_logits: bool,
    use_cache: bool,
) -> StepOutput:
    """ar-core's step loop (``run_steps``) with the runners of :mod:`ar_vision.bidirectional`."""
    from ar_core.steps import Categorical, run_steps
    from ar_vision.bidirectional import OwnStepCachedRunner, OwnStepUncachedRunner

    model.step_model._check_positions(plan.num_positions + 1)
    runner_class = OwnStepCachedRunner if use_cache else OwnStepUncachedRunner
    runner = runner_class(
        model.step_model,
        plan,
        rows.shape[0],
        condition=model.class_tokens(rows)[:, None],
        vocab_size=model.vocab_size,
    )
    B = labels.shape[0]
    return run_steps(
        runner,
        plan,
        batch_size=B,
        sampler=Categorical(processors, temperature),
        transforms=transforms,
        values=torch.full((B, plan.num_positions), -1, dtype=torch.long, device=model.device),
        generator=generator,
        return_logits=return_logits,
    )
