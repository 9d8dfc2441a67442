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

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core import masks, sampling
from ar_core.cache import StaticKVCache
from ar_core.checkpoint import atomic_write_bytes
from ar_core.errors import CheckpointError, ConfigError, InputError
from ar_core.masks import MaskSpec
from ar_core.model import ModelOutput, Transformer
from ar_core.ordering import Plan

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
        """``Transformer.save_pretrained(path)`` plus ``two_stream.safetensors`` (the
        position embedding and the data vocabulary size), each written atomically."""
        from safetensors.torch import save

        path = self.transformer.save_pretrained(path)
        blob = save(
            {"pos_embed": self.pos_embed.weight.detach().contiguous()},
            metadata={"vocab_size": str(self.vocab_size)},
        )
        atomic_write_bytes(path / TWO_STREAM_FILE, blob)
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: torch.device | str | None = None
    ) -> TwoStreamStepModel:
        """Load a folder written by :meth:`save_pretrained`."""
        from safetensors import safe_open

        path = Path(path)
        file = path / TWO_STREAM_FILE
        if not file.is_file():
            raise CheckpointError(
                f"{file} is missing: {path} is not a two-stream step model (save it with "
                f"TwoStreamStepModel.save_pretrained)"
            )
        transformer = Transformer.from_pretrained(path, device=device)
        with safe_open(str(file), framework="pt") as f:
            vocab_size = int(f.metadata()["vocab_size"])
            weight = f.get_tensor("pos_embed")
        model = cls(transformer, vocab_size)
        if weight.shape != model.pos_embed.weight.shape:
            raise CheckpointError(
                f"{file}: pos_embed has shape {tuple(weight.shape)}, the model expects "
                f"{tuple(model.pos_embed.weight.shape)}"
            )
        with torch.no_grad():
            model.pos_embed.weight.copy_(weight)
        return model.to(transformer.device)

    # -- training: both streams at once --------------------------------------------------
    def forward(self, tokens: Tensor, order: Tensor, slot_steps: Tensor) -> Tensor:
        """Query-stream logits (B, N, V) in slot order: row ``b``, slot ``t`` predicts the
        token at position ``order[b, t]`` from the content of steps < ``slot_steps[t]``.

        ``tokens`` (B, N) data ids in position order; ``order`` (B, N) a permutation of
        ``0..N-1`` per row (slot -> position); ``slot_steps`` (N,) the non-decreasing step
        of each slot, shared by all rows (``plan_slots(plan)`` gives both for a Plan).
        """
        B, N = tokens.shape
        self._check_positions(N)
        if order.shape != (B, N) or slot_steps.shape != (N,):
            raise InputError(
                f"order must be (B, N) = {(B, N)} and slot_steps (N,) = ({N},); got "
                f"{tuple(order.shape)} and {tuple(slot_steps.shape)}"
            )
        bos = torch.full((B, 1), self.bos_id, dtype=torch.long, device=tokens.device)
        content = torch.cat([bos, tokens.gather(1, order)], dim=1)  # (B, S)
        queries = torch.full_like(content, self.query_id)  # (B, S)
        pos = torch.cat([torch.zeros_like(bos), order + 1], dim=1)  # (B, S)
        step_ids = torch.cat([slot_steps.new_zeros(1), slot_steps + 1])  # (S,), BOS = step 0
        out = self._run(
            torch.cat([content, queries], dim=1),  # (B, 2S)
            torch.cat([pos, pos], dim=1),  # (B, 2S)
            mask=masks.two_stream(step_ids),
        )
        return out.logits[:, N + 2 :, : self.vocab_size]  # query slots 1..N: (B, N, V)

    def loss(self, tokens: Tensor, order: Tensor, slot_steps: Tensor) -> Tensor:
        """Mean cross-entropy of the query stream against the tokens it predicts."""
        return query_stream_loss(self(tokens, order, slot_steps), tokens, order)

    # -- sampling: one call per step ----------------------------------------------------
    def new_cache(self, batch_size: int, num_positions: int, max_step: int) -> StaticKVCache:
        """A cache for BOS, the content of ``num_positions`` and one step's pending queries."""
        return self.transformer.new_cache(batch_size, max_len=1 + num_positions + max_step)

    def prefill(
        self, cache: StaticKVCache, content: Tensor, rope_positions: Tensor, slot_steps: Tensor
    ) -> None:
        """Commit ``[BOS] + content`` (B, 1 + g) to an empty ``cache``: the given steps of a
        prompt, at RoPE ``rope_positions`` (g,), block-causal by ``slot_steps`` (g,)."""
        B = content.shape[0]
        bos = torch.full((B, 1), self.bos_id, dtype=torch.long, device=content.device)
        step_ids = torch.cat([slot_steps.new_zeros(1), slot_steps + 1])  # (1 + g,)
        self._run(
            torch.cat([bos, content], dim=1),  # (B, 1 + g)
            torch.cat([rope_positions.new_zeros(1), rope_positions]).expand(B, -1),
            cache=cache,
            mask=masks.block_causal(step_ids),
        )

    def step_logits(
        self,
        cache: StaticKVCache,
        context_end: int,
        content: Tensor,
        content_positions: Tensor,
        query_positions: Tensor,
    ) -> Tensor:
        """Commit ``content`` (B, Tc) at RoPE ``content_positions`` (B, Tc) and return the
        logits (B, m, V) of queries at object positions ``query_positions`` (m,).

        ``context_end`` = committed entries + Tc: the content queries see every key below
        it, each query sees that context and itself. The queries stay pending.
        """
        B, Tc = content.shape
        m = query_positions.numel()
        queries = torch.full((B, m), self.query_id, dtype=torch.long, device=content.device)
        out = self._run(
            torch.cat([content, queries], dim=1),  # (B, Tc + m)
            torch.cat([content_positions, (query_positions + 1).expand(B, m)], dim=1),
            cache=cache,
            mask=context_and_self(context_end),
            commit=False,
        )
        cache.commit(Tc)  # the content becomes context; the queries are overwritten next call
        return out.logits[:, Tc:, : self.vocab_size]  # (B, m, V)

    def _run(
        self,
        tokens: Tensor,
        positions: Tensor,
        *,
        mask: MaskSpec,
        cache: StaticKVCache | None = None,
        commit: bool = True,
    ) -> ModelOutput:
        """The Transformer on ``tokens`` (B, T) at RoPE ``positions`` (B, T), with the learned
        position embedding added to the token embeddings."""
        embeds = self.transformer.tok_embeddings(tokens) + self.pos_embed(positions)  # (B, T, C)
        return self.transformer(
            tokens, positions=positions, cache=cache, mask=mask, commit=commit, query_embeds=embeds
        )

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


def context_and_self(end: int) -> MaskSpec:
    """Cache-side mask of a step call: key ``kv`` is visible iff ``kv < end`` or ``kv == q``."""

    def context_and_self_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv < end) | (kv == q)

    return MaskSpec(context_and_self_mod, name=f"context_and_self({end})", cache_key=("cas", end))


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


@dataclass
class StepOutput:
    """``tokens`` (B, N) in position order; ``step_logits[k]`` (B, m_k, V) the raw
    logits each sampled step drew from (when asked for); ``calls`` network calls."""

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


@torch.no_grad()
def generate_steps(
    model: TwoStreamStepModel,
    plan: Plan,
    *,
    batch_size: int = 1,
    prompt: Tensor | None = None,
    given_steps: int = 0,
    processors: Sequence[sampling.LogitsProcessor] = (),
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> StepOutput:
    """Generate an object step by step in the order of ``plan``.

    The first ``given_steps`` steps are copied from ``prompt`` (B, N) instead of sampled
    (conditioning; one prefill call commits them). Every other step is one network call:
    the previous step's tokens are committed to the cache and this step's queries read
    the context. Tokens are drawn with
    ``processors`` and ``temperature`` (0 = argmax) from ``generator``.
    """
    n = plan.num_positions
    model._check_positions(n)
    if not 0 <= given_steps < plan.num_steps:
        raise ConfigError(
            f"given_steps={given_steps} must be in [0, {plan.num_steps}) for a plan of "
            f"{plan.num_steps} steps; at least one step must be generated"
        )
    device = model.transformer.device
    if prompt is not None:
        if prompt.shape != (batch_size, n):
            raise InputError(
                f"prompt must be (batch_size, N) = {(batch_size, n)}, got {tuple(prompt.shape)}"
            )
        prompt = prompt.to(device)
    elif given_steps:
        raise ConfigError(f"given_steps={given_steps} needs a prompt (B, N) to copy them from")

    steps = [s.to(device) for s in plan.steps]
    tokens = torch.full((batch_size, n), -1, dtype=torch.long, device=device)  # (B, N)
    content = torch.full((batch_size, 1), model.bos_id, dtype=torch.long, device=device)
    content_pos = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
    cache = model.new_cache(batch_size, n, max(plan.step_sizes))
    out, committed = StepOutput(tokens=tokens, calls=0), 0
    if given_steps:  # prefill: BOS and the given steps, block-causal among themselves
        assert prompt is not None
        given = torch.cat(steps[:given_steps])  # (g,)
        tokens[:, given] = prompt[:, given]
        model.prefill(cache, prompt[:, given], given + 1, plan_slots(plan)[1][: given.numel()])
        out.calls += 1
        committed = 1 + given.numel()
        content, content_pos = content[:, :0], content_pos[:, :0]  # nothing left to commit

    for step in steps[given_steps:]:  # (m,)
        committed += content.shape[1]
        logits = model.step_logits(cache, committed, content, content_pos, step)  # (B, m, V)
        out.calls += 1
        x = sample_step(logits, processors, generator, temperature)  # (B, m)
        if return_logits:
            out.step_logits.append(logits)
        tokens[:, step] = x
        content, content_pos = x, (step + 1).expand(batch_size, -1)
    return out
