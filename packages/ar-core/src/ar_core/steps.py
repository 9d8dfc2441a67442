"""The two-stream step model and the generic step loop (ARCHITECTURE.md, "The one idea").

A step model generates the positions of step *k* of a :class:`~ar_core.ordering.Plan`
from everything of steps < *k*. The two-stream form (XLNet, Yang et al. 2019,
arXiv:1906.08237; any-order AR, AS-ARM, Shih et al. 2022, arXiv:2205.13554) feeds the
Transformer two streams:

* a *content* stream: the tokens, each at its own RoPE position;
* a *query* stream: one ``[QUERY]`` token per target position, at that position's RoPE
  position (``[QUERY]`` is a reserved vocabulary id, so :class:`~ar_core.model.Transformer`
  needs no change).

Both streams also add a learned absolute position embedding (``pos_embed``, passed as
``query_embeds``): RoPE only shapes q.k, so without it a query's value vectors could not
tell which token sits where. ``save_pretrained`` stores it next to the Transformer's files.

Training runs both streams at once under ``masks.two_stream(step_ids)`` and takes the
cross-entropy at the query stream. Sampling (:func:`generate_steps`) keeps the content of
finished steps in a KV cache; one network call per step writes the previous step's
content (committed) together with this step's queries (left pending) and samples from the
query logits.

Layout. Both streams are laid out in *slot* order, the generation order
``plan.order()`` (one order per row in training, so every row can have its own random
permutation under one shared mask): slot ``t`` holds the token at position ``order[t]``.
Slot 0 of each stream is a ``[BOS]`` token at RoPE position 0 that every step sees, so a
query always has an anchor to read its absolute position from; position ``p`` of the
object sits at RoPE position ``p + 1``. The KV cache holds content in the same slot order,
so the cached loop and the training forward see the same keys.

Notation: B rows, N positions of the object, S = N + 1 slots (with BOS), V the data
vocabulary (the Transformer has V + 2 ids: ``[BOS] = V``, ``[QUERY] = V + 1``), m the
positions of one step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core import masks, registry, sampling
from ar_core.atomic import resolve_folder, write_folder
from ar_core.cache import StaticKVCache
from ar_core.checkpoint import check_finite, write_model_files
from ar_core.errors import CheckpointError, ConfigError, InputError
from ar_core.masks import MaskSpec
from ar_core.model import ModelOutput, Transformer
from ar_core.ordering import Plan
from ar_core.protocols import KVCache, LogitsTransform, StepRunner, StepSampler

RESERVED_IDS = 2  # [BOS], [QUERY]
TWO_STREAM_FILE = "two_stream.safetensors"


class TwoStreamStepModel(nn.Module):
    """A Transformer used as a two-stream step model over a data vocabulary of ``vocab_size``.

    ``transformer.vocab_size`` must be ``vocab_size + 2`` (the two reserved ids) and its
    ``max_seq_len`` at least ``2 * (max_positions + 1)`` (both streams in training).
    """

    def __init__(self, transformer: Transformer, vocab_size: int) -> None:
        super().__init__()
        if transformer.vocab_size != vocab_size + RESERVED_IDS:
            raise ConfigError(
                f"the Transformer has vocab_size={transformer.vocab_size} but a two-stream model "
                f"over {vocab_size} data ids needs {vocab_size + RESERVED_IDS} ([BOS], [QUERY])"
            )
        self.transformer = transformer
        self.vocab_size = vocab_size
        self.bos_id = vocab_size
        self.query_id = vocab_size + 1
        self.max_positions = transformer.max_seq_len // 2 - 1  # both streams fit in training
        # learned absolute positions (RoPE slots 0..max_positions) added to both streams:
        # values then carry where a token sits, which RoPE alone (q.k only) does not give
        dim = transformer.tok_embeddings.weight.shape[1]
        self.pos_embed = nn.Embedding(self.max_positions + 1, dim)
        nn.init.normal_(self.pos_embed.weight, std=0.02)

    # -- persistence -------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """Write the folder ``path`` atomically (:func:`ar_core.atomic.write_folder`): the
        Transformer's ``config.json`` + ``model.safetensors`` and ``two_stream.safetensors``
        (the position embedding and the data vocabulary size), all in one rename."""
        return write_folder(path, self.write_files)

    def write_files(self, folder: Path) -> None:
        """The files of :meth:`save_pretrained`, written into ``folder`` as they are (for a
        subclass or wrapper that adds files of its own to the same atomic folder)."""
        from safetensors.torch import save

        write_model_files(self.transformer, folder)
        blob = save(
            {"pos_embed": self.pos_embed.weight.detach().contiguous()},
            metadata={"vocab_size": str(self.vocab_size)},
        )
        (Path(folder) / TWO_STREAM_FILE).write_bytes(blob)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: torch.device | str | None = None
    ) -> TwoStreamStepModel:
        """Load a folder written by :meth:`save_pretrained`."""
        from safetensors import safe_open

        path = resolve_folder(path, what="model")
        file = path / TWO_STREAM_FILE
        if not file.is_file():
            raise CheckpointError(
                f"{file} is missing: {path} is not a two-stream step model (save it with "
                f"TwoStreamStepModel.save_pretrained)"
            )
        transformer = Transformer.from_pretrained(path, device=device)
        try:
            with safe_open(str(file), framework="pt") as f:
                vocab_size = int(f.metadata()["vocab_size"])
                weight = f.get_tensor("pos_embed")
        except Exception as exc:  # safetensors' own errors, a missing key or metadata
            detail = "; ".join(str(exc).split("\n"))
            raise CheckpointError(
                f"{file} is damaged ({type(exc).__name__}: {detail}); save the model again "
                f"(re-run `ar train`)"
            ) from None
        check_finite({"pos_embed": weight}, file)
        model = cls(transformer, vocab_size)
        if weight.shape != model.pos_embed.weight.shape:
            raise CheckpointError(
                f"{file}: pos_embed has shape {tuple(weight.shape)}, the model expects "
                f"{tuple(model.pos_embed.weight.shape)}"
            )
        with torch.no_grad():
            model.pos_embed.weight.copy_(weight)
        return model.to(transformer.device)

    # -- the forward both paths share --------------------------------------------------
    def run(
        self,
        tokens: Tensor,
        positions: Tensor,
        *,
        mask: MaskSpec,
        cache: KVCache | None = None,
        commit: bool = True,
    ) -> ModelOutput:
        """The Transformer on ``tokens`` (B, T) at RoPE ``positions`` (B, T), with the
        learned position embedding added to the token embeddings: every call of this model
        (training, the cached loop, adapters) goes through here."""
        embeds = self.transformer.tok_embeddings(tokens) + self.pos_embed(positions)  # (B, T, C)
        return self.transformer(
            tokens, positions=positions, cache=cache, mask=mask, commit=commit, query_embeds=embeds
        )

    # -- training: both streams at once --------------------------------------------------
    def forward(
        self, tokens: Tensor, order: Tensor, slot_steps: Tensor, condition: Tensor | None = None
    ) -> Tensor:
        """Query-stream logits (B, N, V) in slot order: row ``b``, slot ``t`` predicts the
        token at position ``order[b, t]`` from the content of steps < ``slot_steps[t]``
        (and the ``condition``, which every step sees).

        ``tokens`` (B, N) data ids in position order; ``order`` (B, N) a permutation of
        ``0..N-1`` per row (slot -> position); ``slot_steps`` (N,) the non-decreasing step
        of each slot, shared by all rows (``plan_slots(plan)`` gives both for a Plan);
        ``condition`` (B, c) optional content ids (a class token, a prompt) that join
        ``[BOS]`` in step 0 at object positions ``0..c-1`` (the object's positions
        follow them).
        """
        return self.query_outputs(tokens, order, slot_steps, condition).logits

    def query_outputs(
        self, tokens: Tensor, order: Tensor, slot_steps: Tensor, condition: Tensor | None = None
    ) -> ModelOutput:
        """:meth:`forward` with the query stream's hidden states too: ``logits`` (B, N, V)
        and ``hidden`` (B, N, C), both in slot order."""
        B, N = tokens.shape
        c = 0 if condition is None else condition.shape[1]
        self._check_positions(N + c)
        if order.shape != (B, N) or slot_steps.shape != (N,):
            raise InputError(
                f"order must be (B, N) = {(B, N)} and slot_steps (N,) = ({N},); got "
                f"{tuple(order.shape)} and {tuple(slot_steps.shape)}"
            )
        if condition is not None and condition.shape[0] != B:
            raise InputError(f"condition must be (B, c) with B = {B}, got {tuple(condition.shape)}")
        bos = torch.full((B, 1), self.bos_id, dtype=torch.long, device=tokens.device)
        content = [bos, tokens.gather(1, order)]
        pos = [torch.zeros_like(bos), order + c + 1]
        if condition is not None:  # condition slots: object positions 0..c-1, step 0
            content.insert(1, condition.to(tokens.device))
            cpos = torch.arange(1, c + 1, device=tokens.device).expand(B, c)
            pos.insert(1, cpos)
        x = torch.cat(content, dim=1)  # (B, S), S = 1 + c + N
        p = torch.cat(pos, dim=1)  # (B, S)
        step_ids = torch.cat([slot_steps.new_zeros(1 + c), slot_steps + 1])  # (S,)
        out = self.run(
            torch.cat([x, torch.full_like(x, self.query_id)], dim=1),  # (B, 2S)
            torch.cat([p, p], dim=1),  # (B, 2S)
            mask=masks.two_stream(step_ids),
        )
        S = x.shape[1]
        first = S + 1 + c  # query slot of the object's first position
        return ModelOutput(
            logits=out.logits[:, first:, : self.vocab_size], hidden=out.hidden[:, first:]
        )

    def loss(self, tokens: Tensor, order: Tensor, slot_steps: Tensor) -> Tensor:
        """Mean cross-entropy of the query stream against the tokens it predicts."""
        return query_stream_loss(self(tokens, order, slot_steps), tokens, order)

    # -- sampling: one call per step ----------------------------------------------------
    def new_cache(self, batch_size: int, num_positions: int, max_step: int) -> StaticKVCache:
        """A cache for BOS, the content of ``num_positions`` (condition included) and one
        step's pending queries."""
        return self.transformer.new_cache(batch_size, max_len=1 + num_positions + max_step)

    def prefill(
        self, cache: KVCache, content: Tensor, rope_positions: Tensor, slot_steps: Tensor
    ) -> None:
        """Commit ``[BOS] + content`` (B, 1 + g) to an empty ``cache``: the given steps of a
        prompt (and any condition, at step -1), at RoPE ``rope_positions`` (g,),
        block-causal by ``slot_steps`` (g,)."""
        B = content.shape[0]
        bos = torch.full((B, 1), self.bos_id, dtype=torch.long, device=content.device)
        step_ids = torch.cat([slot_steps.new_full((1,), -1), slot_steps]) + 1  # (1 + g,)
        self.run(
            torch.cat([bos, content], dim=1),  # (B, 1 + g)
            torch.cat([rope_positions.new_zeros(1), rope_positions]).expand(B, -1),
            cache=cache,
            mask=masks.block_causal(step_ids),
        )

    def step(
        self,
        cache: KVCache,
        context_end: int,
        content: Tensor,
        content_positions: Tensor,
        query_positions: Tensor,
    ) -> ModelOutput:
        """Commit ``content`` (B, Tc) at RoPE ``content_positions`` (B, Tc) and return the
        output for queries at object positions ``query_positions`` (m,): ``logits``
        (B, m, V) and ``hidden`` (B, m, C).

        ``context_end`` = committed entries + Tc: the content queries see every key below
        it, each query sees that context and itself. The queries stay pending.
        """
        B, Tc = content.shape
        m = query_positions.numel()
        queries = torch.full((B, m), self.query_id, dtype=torch.long, device=content.device)
        out = self.run(
            torch.cat([content, queries], dim=1),  # (B, Tc + m)
            torch.cat([content_positions, (query_positions + 1).expand(B, m)], dim=1),
            cache=cache,
            mask=masks.context_and_self(context_end),
            commit=False,
        )
        cache.commit(Tc)  # the content becomes context; the queries are overwritten next call
        return ModelOutput(logits=out.logits[:, Tc:, : self.vocab_size], hidden=out.hidden[:, Tc:])

    def _check_positions(self, n: int) -> None:
        if n > self.max_positions:
            raise InputError(
                f"{n} positions do not fit: a two-stream model with max_seq_len="
                f"{self.transformer.max_seq_len} holds at most {self.max_positions}; raise "
                f"max_seq_len to at least {2 * (n + 1)}"
            )


def query_stream_loss(logits: Tensor, tokens: Tensor, order: Tensor) -> Tensor:
    """Cross-entropy of query-stream ``logits`` (B, N, V) in slot order against ``tokens``
    (B, N) in position order (call the model, then this: DDP needs the forward call)."""
    targets = tokens.gather(1, order)  # (B, N)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def plan_slots(plan: Plan) -> tuple[Tensor, Tensor]:
    """``(order, slot_steps)`` of a Plan: positions in generation order (N,) and the step
    of each slot (N,), the inputs of :meth:`TwoStreamStepModel.forward` (add a batch
    dimension to ``order``)."""
    order = plan.order()
    slot_steps = torch.repeat_interleave(
        torch.arange(plan.num_steps), torch.tensor(plan.step_sizes)
    )
    return order, slot_steps


# -- the step loop -------------------------------------------------------------------------
#
# One loop for every step model: a StepRunner makes one network call per step (the
# KV-cached runner, or the uncached reference that reruns the training forward), the
# LogitsTransforms change the step's logits (classifier-free guidance, constraints), a
# StepSampler draws the step's values, and the runner commits them as context.


@dataclass
class StepOutput:
    """``tokens`` (B, N) in position order (float (B, N, d) for continuous step values);
    ``step_logits[k]`` (B, m_k, V) the logits each sampled step drew from, after the
    transforms and before the sampler's processors (when asked for); ``calls`` network
    calls."""

    tokens: Tensor
    calls: int
    step_logits: list[Tensor] = field(default_factory=list)


def sample_step(
    logits: Tensor,
    processors: Sequence[sampling.LogitsProcessor],
    generator: torch.Generator | None,
    temperature: float,
) -> Tensor:
    """Independent categorical draws for every position of a step: (B, m, V) -> (B, m)."""
    B, m, V = logits.shape
    flat = sampling.apply_processors(processors, logits.reshape(B * m, V))  # (B*m, V)
    return sampling.sample(flat, generator, temperature=temperature).view(B, m)


class Categorical:
    """Step sampler ``categorical``: independent draws for every position of a step, after
    the logits processors, at ``temperature`` (0 = argmax)."""

    name = "categorical"

    def __init__(
        self, processors: Sequence[sampling.LogitsProcessor] = (), temperature: float = 1.0
    ) -> None:
        if temperature < 0:
            raise ConfigError(f"categorical sampler: temperature must be >= 0, got {temperature}")
        self.processors = list(processors)
        self.temperature = temperature

    def sample(self, out: ModelOutput, generator: torch.Generator | None) -> Tensor:
        return sample_step(out.logits, self.processors, generator, self.temperature)


def guidance_scale(scale: float, schedule: str, index: int, num_steps: int) -> float:
    """``s_k``: ``scale`` (``constant``) or linear from 1 at step 0 to ``scale`` at the last
    (``linear``, VAR's schedule)."""
    if schedule == "constant" or num_steps == 1:
        return scale
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * index / (num_steps - 1)
    raise ConfigError(f"unknown CFG schedule {schedule!r}; use 'constant' or 'linear'")


def guide(logits: Tensor, scale: float) -> Tensor:
    """``uncond + s * (cond - uncond)`` for logits (2B, ...) = [cond; uncond] -> (B, ...)."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


class ClassifierFreeGuidance:
    """Logits transform: classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598)
    on logits, as image AR models use it (VAR, LlamaGen): the rows are
    ``[conditional; unconditional]`` (2B) and become ``uncond + s_k (cond - uncond)`` (B);
    ``s_k`` is constant or linear in the step index over ``num_steps`` steps."""

    def __init__(self, scale: float, num_steps: int, schedule: str = "constant") -> None:
        if scale < 0:
            raise ConfigError(f"cfg_scale must be >= 0 (1.0 = no guidance), got {scale}")
        guidance_scale(scale, schedule, 0, max(num_steps, 1))  # validates the schedule
        self.scale, self.num_steps, self.schedule = scale, num_steps, schedule

    def __call__(self, logits: Tensor, *, index: int, step: Tensor, values: Tensor) -> Tensor:
        return guide(logits, guidance_scale(self.scale, self.schedule, index, self.num_steps))


class AllowedValues:
    """Logits transform: a constraint. ``allowed(step, values) -> (B, m, V)`` bool says
    which ids each position of the step may take (given the values drawn so far); the
    others get -inf."""

    def __init__(self, allowed: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.allowed = allowed

    def __call__(self, logits: Tensor, *, index: int, step: Tensor, values: Tensor) -> Tensor:
        return logits.masked_fill(~self.allowed(step, values), float("-inf"))


class _TwoStreamRunner:
    """What both runners of a :class:`TwoStreamStepModel` take: the model, the plan, R
    network rows, an optional ``condition`` (R, c), a ``given`` prompt (R, N) whose first
    ``given_steps`` steps are known, and the ``vocab_size`` cut of the logits."""

    def __init__(
        self,
        model: TwoStreamStepModel,
        plan: Plan,
        rows: int,
        *,
        condition: Tensor | None = None,
        given: Tensor | None = None,
        given_steps: int = 0,
        vocab_size: int | None = None,
    ) -> None:
        if given_steps and given is None:
            raise ConfigError(f"given_steps={given_steps} needs the prompt (R, N) as given=")
        self.model, self.plan, self.rows, self.calls = model, plan, rows, 0
        self.device = model.transformer.device
        self.condition = None if condition is None else condition.to(self.device)
        self.c = 0 if condition is None else condition.shape[1]
        self.vocab_size = vocab_size or model.vocab_size
        self.given, self.given_steps = given, given_steps

    def _cut(self, out: ModelOutput, start: int = 0, m: int | None = None) -> ModelOutput:
        end = None if m is None else start + m
        return ModelOutput(
            logits=out.logits[:, start:end, : self.vocab_size], hidden=out.hidden[:, start:end]
        )


class CachedStepRunner(_TwoStreamRunner):
    """The KV-cached runner: each call commits the previous step's values (the first call:
    ``[BOS]`` and the condition) and reads this step's queries; the given steps of a
    prompt are committed by one prefill call.

    ``rows`` R: the batch of the network (2B with classifier-free guidance);
    ``condition`` (R, c) content ids that join ``[BOS]`` in step 0 (object position p
    sits at model position c + p); ``given`` (R, N) the prompt whose first
    ``given_steps`` steps are committed up front; ``vocab_size`` cuts the logits to the
    ids a step may take (default: the model's data vocabulary).
    """

    def __init__(self, model: TwoStreamStepModel, plan: Plan, rows: int, **kwargs: Any) -> None:
        super().__init__(model, plan, rows, **kwargs)
        device, c = self.device, self.c
        self.cache = model.new_cache(rows, c + plan.num_positions, max(plan.step_sizes))
        bos = torch.full((rows, 1), model.bos_id, dtype=torch.long, device=device)
        cond = bos[:, :0] if self.condition is None else self.condition
        self.content = torch.cat([bos, cond], dim=1)  # (R, 1 + c)
        self.content_pos = torch.arange(1 + c, device=device).expand(rows, -1)
        self.committed = 0
        if self.given_steps:  # one prefill: BOS, the condition and the given steps
            assert self.given is not None
            steps = torch.cat([s.to(device) for s in plan.steps[: self.given_steps]])  # (g,)
            slot_steps = plan_slots(plan)[1][: steps.numel()].to(device)
            model.prefill(
                self.cache,
                torch.cat([cond, self.given[:, steps]], dim=1),
                torch.cat([torch.arange(1, c + 1, device=device), steps + c + 1]),
                torch.cat([slot_steps.new_full((c,), -1), slot_steps]),
            )
            self.calls += 1
            self.committed = 1 + c + steps.numel()
            self.content, self.content_pos = self.content[:, :0], self.content_pos[:, :0]

    def predict(self, step: Tensor) -> ModelOutput:
        self.committed += self.content.shape[1]
        out = self.model.step(
            self.cache, self.committed, self.content, self.content_pos, step + self.c
        )
        self.calls += 1
        return self._cut(out)

    def commit(self, step: Tensor, values: Tensor) -> None:
        self.content = values  # written to the cache by the next call
        self.content_pos = (step + self.c + 1).expand(values.shape[0], -1)


class UncachedStepRunner(_TwoStreamRunner):
    """The reference: the full two-stream training forward over everything drawn so far,
    once per step (positions not drawn yet hold 0; the block-causal mask hides them from
    the current step). Same arguments as :class:`CachedStepRunner`; given steps cost no
    call of their own."""

    def __init__(self, model: TwoStreamStepModel, plan: Plan, rows: int, **kwargs: Any) -> None:
        super().__init__(model, plan, rows, **kwargs)
        order, slot_steps = plan_slots(plan)
        self.order = order.to(self.device).expand(rows, -1)
        self.slot_steps = slot_steps.to(self.device)
        self.current = torch.zeros(
            (rows, plan.num_positions), dtype=torch.long, device=self.device
        )  # (R, N)
        self.start = 0  # first slot of the current step
        for step in plan.steps[: self.given_steps]:
            assert self.given is not None
            step = step.to(self.device)
            self.commit(step, self.given[:, step])

    def predict(self, step: Tensor) -> ModelOutput:
        out = self.model.query_outputs(self.current, self.order, self.slot_steps, self.condition)
        self.calls += 1
        return self._cut(out, self.start, step.numel())

    def commit(self, step: Tensor, values: Tensor) -> None:
        self.current[:, step] = values
        self.start += step.numel()


def step_sampler(name: str, **kwargs: object) -> StepSampler:
    """The step sampler registered as ``name`` (``ar_core.registry.step_samplers``),
    built with ``kwargs`` (``categorical``: ``processors``, ``temperature``)."""
    factory = registry.step_samplers.get(name)
    sampler: StepSampler = factory(**kwargs)
    return sampler


@torch.no_grad()
def run_steps(
    runner: StepRunner,
    plan: Plan,
    *,
    batch_size: int,
    sampler: StepSampler,
    transforms: Sequence[LogitsTransform] = (),
    values: Tensor | None = None,
    first_step: int = 0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    value_dim: int | None = None,
) -> StepOutput:
    """The loop itself: for each step of ``plan`` from ``first_step``, one call of the
    ``runner``, the ``transforms`` in order, one draw of the ``sampler``, and the values
    committed to every network row (the same values for the conditional and the
    unconditional rows of guidance). ``values`` (B, N) holds what is known (-1 elsewhere)
    and is filled in place. Logits holding NaN or inf are an ``InputError`` naming the
    earliest such step (its index in ``plan``) and row, raised once the loop ends (a
    device-side flag: no host sync per step).

    Continuous step values: with ``value_dim`` d (and no ``values``), or with float
    ``values`` (B, N, d) (NaN where unknown), the sampler draws (B, m, d) float vectors
    from ``out.hidden`` (the heads of ar-diffusion) and the runner commits them; the
    logits are not read (a runner may return an empty (R, m, 0) tensor there) and no
    transforms apply. Drawn values holding NaN or inf are an ``InputError`` naming the
    earliest such step and row, raised once the loop ends."""
    device = plan.steps[0].device if values is None else values.device
    if values is None:
        if value_dim is not None:
            return _run_continuous_steps(
                runner,
                plan,
                batch_size,
                sampler,
                transforms,
                _unknown_values(batch_size, plan.num_positions, value_dim, device),
                first_step,
                generator,
            )
        values = torch.full((batch_size, plan.num_positions), -1, dtype=torch.long, device=device)
    elif values.is_floating_point():
        return _run_continuous_steps(
            runner, plan, batch_size, sampler, transforms, values, first_step, generator
        )
    out = StepOutput(tokens=values, calls=0)
    finite = sampling.FiniteWatch(batch_size, values.device, what="the step model")
    for index in range(first_step, plan.num_steps):
        step = plan.steps[index].to(values.device)  # (m,)
        pred = runner.predict(step)  # (R, m, V)
        logits = pred.logits
        if logits.shape[0] % batch_size == 0:  # else the row check below says what is wrong
            finite.update(logits, index)  # rows b, b + B, ... are row b's guidance copies
        for transform in transforms:
            logits = transform(logits, index=index, step=step, values=values)
        if logits.shape[0] != batch_size:
            raise ConfigError(
                f"the step's logits have {logits.shape[0]} rows after the transforms, the "
                f"batch has {batch_size}: a guided run needs a ClassifierFreeGuidance transform"
            )
        x = sampler.sample(ModelOutput(logits=logits, hidden=pred.hidden), generator)  # (B, m)
        if return_logits:
            out.step_logits.append(logits)
        values[:, step] = x
        rows = pred.logits.shape[0]
        runner.commit(step, x.repeat(rows // batch_size, *([1] * (x.dim() - 1))))
    finite.check()  # one sync for the whole loop: NaN/inf logits name their step and row
    out.calls = runner.calls
    return out


def _unknown_values(batch: int, n: int, dim: int, device: torch.device | str) -> Tensor:
    if not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"value_dim must be an integer >= 1, got {dim!r}")
    return torch.full((batch, n, dim), float("nan"), device=device)


def _run_continuous_steps(
    runner: StepRunner,
    plan: Plan,
    batch_size: int,
    sampler: StepSampler,
    transforms: Sequence[LogitsTransform],
    values: Tensor,
    first_step: int,
    generator: torch.Generator | None,
) -> StepOutput:
    """:func:`run_steps` for float step values ``values`` (B, N, d), filled in place."""
    if values.dim() != 3 or values.shape[:2] != (batch_size, plan.num_positions):
        raise InputError(
            f"continuous step values must be (batch_size, N, d) = ({batch_size}, "
            f"{plan.num_positions}, d), got {tuple(values.shape)}"
        )
    if transforms:
        raise ConfigError(
            "logits transforms (guidance, allowed values) do not apply to continuous step "
            "values; merge guidance rows in the runner or the sampler instead"
        )
    d = values.shape[2]
    flags: list[tuple[int, Tensor]] = []  # (step index, rows whose draw was not finite)
    for index in range(first_step, plan.num_steps):
        step = plan.steps[index].to(values.device)  # (m,)
        pred = runner.predict(step)  # hidden (R, m, C)
        if pred.hidden.shape[0] != batch_size:
            raise ConfigError(
                f"the step's hidden states have {pred.hidden.shape[0]} rows, the batch has "
                f"{batch_size}: continuous steps take one network row per batch row"
            )
        x = sampler.sample(pred, generator)  # (B, m, d)
        if x.shape != (batch_size, step.numel(), d) or not x.is_floating_point():
            raise InputError(
                f"step sampler {getattr(sampler, 'name', type(sampler).__name__)!r} drew "
                f"{x.dtype} {tuple(x.shape)} at step {index}; continuous steps need float "
                f"({batch_size}, {step.numel()}, {d})"
            )
        flags.append((index, ~torch.isfinite(x).flatten(1).all(-1)))
        values[:, step] = x
        runner.commit(step, x)
    if flags:
        bad = torch.stack([f for _, f in flags])  # (S, B)
        if bool(bad.any()):  # one host sync for the whole loop
            k, row = (int(i) for i in bad.nonzero()[0])
            raise InputError(
                f"non-finite continuous values (NaN or inf) drawn at decode step "
                f"{flags[k][0]}, row {row}: check the step model's and the head's weights "
                f"and inputs for NaN/inf"
            )
    return StepOutput(tokens=values, calls=runner.calls)


@torch.no_grad()
def generate_steps(
    model: TwoStreamStepModel,
    plan: Plan,
    *,
    batch_size: int = 1,
    condition: Tensor | None = None,
    prompt: Tensor | None = None,
    given_steps: int = 0,
    transforms: Sequence[LogitsTransform] = (),
    sampler: StepSampler | None = None,
    processors: Sequence[sampling.LogitsProcessor] = (),
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    use_cache: bool = True,
    vocab_size: int | None = None,
) -> StepOutput:
    """Generate an object step by step in the order of ``plan``.

    ``condition`` (R, c) content ids every step sees (a class token; R = 2B rows
    ``[cond; uncond]`` with a :class:`ClassifierFreeGuidance` transform). The first
    ``given_steps`` steps are copied from ``prompt`` (B, N) instead of sampled (one
    prefill call commits them). Every other step is one network call. Values are drawn by
    ``sampler`` (default: ``categorical`` with ``processors`` and ``temperature``, 0 =
    argmax) from ``generator``. ``use_cache=False`` runs the uncached reference (same
    logits, one full forward per step). ``vocab_size`` cuts the logits to the ids a step
    may take (default: the model's data vocabulary).
    """
    n = plan.num_positions
    c = 0 if condition is None else condition.shape[1]
    model._check_positions(n + c)
    if not 0 <= given_steps < plan.num_steps:
        raise ConfigError(
            f"given_steps={given_steps} must be in [0, {plan.num_steps}) for a plan of "
            f"{plan.num_steps} steps; at least one step must be generated"
        )
    device = model.transformer.device
    rows = batch_size if condition is None else condition.shape[0]
    if rows % batch_size:
        raise InputError(
            f"condition has {rows} rows, not a multiple of batch_size={batch_size} (use B rows, "
            f"or 2B for classifier-free guidance)"
        )
    values = torch.full((batch_size, n), -1, dtype=torch.long, device=device)
    given = None
    if prompt is not None:
        if prompt.shape != (batch_size, n):
            raise InputError(
                f"prompt must be (batch_size, N) = {(batch_size, n)}, got {tuple(prompt.shape)}"
            )
        prompt = prompt.to(device)
        if given_steps:
            known = torch.cat([s.to(device) for s in plan.steps[:given_steps]])
            values[:, known] = prompt[:, known]
        given = prompt.repeat(rows // batch_size, 1)  # (R, N)
    elif given_steps:
        raise ConfigError(f"given_steps={given_steps} needs a prompt (B, N) to copy them from")
    runner_class = CachedStepRunner if use_cache else UncachedStepRunner
    runner = runner_class(
        model,
        plan,
        rows,
        condition=condition,
        given=given,
        given_steps=given_steps,
        vocab_size=vocab_size,
    )
    return run_steps(
        runner,
        plan,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else Categorical(processors, temperature),
        transforms=transforms,
        values=values,
        first_step=given_steps,
        generator=generator,
        return_logits=return_logits,
    )
