"""Steps whose queries see each other: CTF's fine stage as one bidirectional step.

CTF (Guo et al. 2025, arXiv:2503.16194) predicts all fine tokens at once with a
bidirectional model given the whole coarse sequence. In the two-stream step model that is
the training mask ``ar_core.masks.two_stream(step_ids, query_sees_own_step=True)``: a query
sees the content of earlier steps, itself and the other queries of its own step (content
never sees queries). Steps of one position (CTF's coarse steps) are unchanged by it.

* :func:`query_logits` is the two-stream training forward of ``TwoStreamStepModel`` with
  that choice of mask (``own_step=False`` is exactly ``TwoStreamStepModel.query_outputs``).
* :class:`OwnStepCachedRunner` is ar-core's ``CachedStepRunner`` whose step call lets the
  pending queries see each other: mask ``context_and_self(end) | (document([0]*end +
  [1]*m, causal=False) & context_and_self(end + m))`` over the cache; and
  :class:`OwnStepUncachedRunner` the reference (the forward above once per step).

Notation: B rows, N positions, c condition tokens, m positions of one step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ar_core import masks
from ar_core.model import ModelOutput
from ar_core.ordering import Plan
from ar_core.steps import CachedStepRunner, TwoStreamStepModel, UncachedStepRunner


def query_logits(
    model: TwoStreamStepModel,
    tokens: Tensor,
    order: Tensor,
    slot_steps: Tensor,
    condition: Tensor | None = None,
    *,
    own_step: bool = True,
) -> ModelOutput:
    """The query stream's output (logits (B, N, V), hidden) in slot order, each query
    seeing the queries of its own step when ``own_step``."""
    B, N = tokens.shape
    c = 0 if condition is None else condition.shape[1]
    model._check_positions(N + c)
    bos = torch.full((B, 1), model.bos_id, dtype=torch.long, device=tokens.device)
    content = [bos, tokens.gather(1, order)]
    pos = [torch.zeros_like(bos), order + c + 1]
    if condition is not None:
        content.insert(1, condition.to(tokens.device))
        pos.insert(1, torch.arange(1, c + 1, device=tokens.device).expand(B, c))
    x, p = torch.cat(content, dim=1), torch.cat(pos, dim=1)  # (B, S), S = 1 + c + N
    step_ids = torch.cat([slot_steps.new_zeros(1 + c), slot_steps + 1])  # (S,)
    out = model.run(
        torch.cat([x, torch.full_like(x, model.query_id)], dim=1),
        torch.cat([p, p], dim=1),
        mask=masks.two_stream(step_ids, query_sees_own_step=own_step),
    )
    first = x.shape[1] + 1 + c
    return ModelOutput(
        logits=out.logits[:, first:, : model.vocab_size], hidden=out.hidden[:, first:]
    )


class OwnStepCachedRunner(CachedStepRunner):
    """``CachedStepRunner`` whose pending queries see each other (one bidirectional step)."""

    def predict(self, step: Tensor) -> ModelOutput:
        model, cache = self.model, self.cache
        content, content_pos = self.content, self.content_pos
        self.committed += content.shape[1]
        end, m, R = self.committed, step.numel(), content.shape[0]
        queries = torch.full((R, m), model.query_id, dtype=torch.long, device=self.device)
        ids = torch.cat([torch.zeros(end, dtype=torch.long), torch.ones(m, dtype=torch.long)])
        mask = masks.context_and_self(end) | (
            masks.document(ids, causal=False) & masks.context_and_self(end + m)
        )
        out = model.run(
            torch.cat([content, queries], dim=1),
            torch.cat([content_pos, (step + self.c + 1).to(self.device).expand(R, m)], dim=1),
            cache=cache,
            mask=mask,
            commit=False,
        )
        cache.commit(content.shape[1])  # the queries are overwritten by the next call
        self.calls += 1
        Tc = content.shape[1]
        return self._cut(ModelOutput(logits=out.logits[:, Tc:], hidden=out.hidden[:, Tc:]))


class OwnStepUncachedRunner(UncachedStepRunner):
    """The reference of :class:`OwnStepCachedRunner`: :func:`query_logits` once per step."""

    def __init__(self, model: TwoStreamStepModel, plan: Plan, rows: int, **kwargs: Any) -> None:
        super().__init__(model, plan, rows, **kwargs)

    def predict(self, step: Tensor) -> ModelOutput:
        out = query_logits(
            self.model, self.current, self.order, self.slot_steps, self.condition, own_step=True
        )
        self.calls += 1
        return self._cut(out, self.start, step.numel())
