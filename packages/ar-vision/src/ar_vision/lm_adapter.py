"""The class-conditional step model seen as a causal LM, for ar-core's ``generate()``.

Speculative Jacobi Decoding (SJD, Teng et al. 2024, arXiv:2410.01699) and LANTERN
(Jang et al., ICLR 2025, arXiv:2410.03355) live in ar-decoding as strategies of
``ar_core.generate``; they drive any model of the ar-core model protocol
(``docs/design/contracts.md``): ``forward(tokens, positions, cache, mask, commit) ->
ModelOutput`` whose logits at sequence index ``i`` predict token ``i + 1``. This
adapter gives that protocol to a :class:`~ar_vision.model.ClassConditionalStepModel`
under a plan of one position per step (raster, zigzag, ...):

* the sequence is ``[class, t_1, ..., t_N]`` (``t_k`` the token of step k); the class
  (``0..C``, ``C`` = null) is the prompt, so ``generate(adapter, labels[:, None], ...)``;
* one forward over T new tokens runs the two streams: the T content tokens (committed
  or left pending as the strategy says) and T queries, query ``i`` reading the context
  through content ``i`` and predicting the token after it;
* rows may be ragged (SJD accepts different counts per row): the mask takes each row's
  own length;
* classifier-free guidance (constant ``cfg_scale``) runs the null class in extra rows
  of the same call and returns the guided logits, so the strategies' logits processors
  and acceptance rules see the guided distribution.

:class:`AdapterCache` keeps the protocol's view (``lengths`` = sequence tokens
committed, per row) over the step model's cache (``[BOS]`` first, then the content;
the queries of a call stay pending and are overwritten by the next one).

Notation: B rows (2B with CFG: R), T new tokens, N image tokens, V image vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ar_core import registry
from ar_core.cache import StaticKVCache
from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig, GenerationStats, generate
from ar_core.masks import MaskSpec
from ar_core.model import ModelOutput
from ar_core.ordering import Plan
from ar_vision.model import ClassConditionalStepModel
from ar_vision.sampling import guide


class AdapterCache:
    """``lengths`` (B,) sequence tokens committed per row, over a step-model cache of R
    rows that holds ``[BOS]`` and then the committed content of each row."""

    def __init__(self, inner: StaticKVCache, batch_size: int) -> None:
        self.inner = inner
        self.batch_size = batch_size
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=inner.device)
        self.started = False  # BOS is written by the first forward

    def _sync(self) -> None:
        rows = self.inner.batch_size // self.batch_size
        inner = torch.where(self.lengths > 0, self.lengths + 1, 0).repeat(rows)  # (R,)
        self.inner.crop(0)
        self.inner.commit(inner)

    def commit(self, n: int | Tensor) -> None:
        self.lengths += n if isinstance(n, int) else n.to(self.lengths)
        self._sync()

    def crop(self, n: int | Tensor) -> None:
        self.lengths = torch.minimum(self.lengths, torch.as_tensor(n).to(self.lengths))
        self._sync()

    def max_length(self) -> int:
        return int(self.lengths.max())


def two_stream_step_mask(written_from: Tensor, seq_start: Tensor, n_content: int) -> MaskSpec:
    """Mask of one adapter call over the step-model cache.

    Row ``b`` writes ``n_content`` content entries from cache index ``written_from[b]``,
    then one query per new sequence token. Content at index q sees ``kv <= max(q, 1)``
    (causal; BOS and the class see each other, as in training). Query ``i`` sees the
    context through the ``i``-th new token (cache index ``seq_start[b] + i + 1``) and
    itself.
    """

    def step_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        rel = q - written_from[b]
        is_query = rel >= n_content
        limit = seq_start[b] + (rel - n_content) + 1  # the content this query reads through
        query_ok = (kv <= limit) | (kv == q)
        content_ok = kv <= torch.clamp(q, min=1)
        return torch.where(is_query, query_ok, content_ok)

    return MaskSpec(step_mod, name="vision_lm_step")


class CausalLMAdapter:
    """``ClassConditionalStepModel`` + a one-position-per-step ``plan`` as a causal LM over
    ``[class, tokens in plan order]``; ``cfg_scale`` != 1 guides with the null class."""

    def __init__(self, model: ClassConditionalStepModel, plan: Plan, cfg_scale: float = 1.0):
        if max(plan.step_sizes) != 1:
            raise ConfigError(
                "CausalLMAdapter needs a plan of one position per step (raster, zigzag, ...); "
                f"got steps of sizes up to {max(plan.step_sizes)}: use generate_images instead"
            )
        self.model = model
        self.order = plan.order().to(model.device)  # (N,) slot -> position
        self.n = plan.num_positions
        self.cfg_scale = cfg_scale
        self.vocab_size = model.vocab_size
        self.device = model.device
        transformer = model.step_model.transformer
        # the step-model cache holds BOS + content + the queries of one call:
        # 1 + S + (S - N + 1) <= max_seq_len for S sequence positions
        self.max_seq_len = (transformer.max_seq_len + self.n - 2) // 2

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def new_cache(self, batch_size: int, max_len: int | None = None) -> AdapterCache:
        rows = 2 * batch_size if self.guided else batch_size
        inner = self.model.step_model.transformer.new_cache(rows)
        return AdapterCache(inner, batch_size)

    def to_image_tokens(self, sequences: Tensor) -> Tensor:
        """Generated ``[class, t_1..t_N]`` (B, N + 1) -> image tokens (B, N) in position order."""
        tokens = torch.empty_like(sequences[:, 1:])
        tokens[:, self.order] = sequences[:, 1 : self.n + 1]
        return tokens

    def _rope(self, seq_index: Tensor) -> Tensor:
        """RoPE position of the content at sequence index ``seq_index`` (class: 1)."""
        slot = (seq_index - 1).clamp(0, self.n - 1)
        return torch.where(seq_index == 0, 1, self.order[slot] + 2)

    def __call__(self, *args: object, **kwargs: object) -> ModelOutput:
        return self.forward(*args, **kwargs)  # type: ignore[arg-type]

    @torch.no_grad()
    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: AdapterCache | None = None,
        mask: MaskSpec | None = None,
        commit: bool = True,
    ) -> ModelOutput:
        """Logits (B, T, V): row ``b``, column ``i`` predicts the token after ``tokens[b, i]``."""
        if cache is None:
            raise InputError("CausalLMAdapter runs with a cache: pass adapter.new_cache(B)")
        if mask is not None and not mask.is_causal:
            raise InputError(f"CausalLMAdapter supports the causal mask only, got {mask.name}")
        B, T = tokens.shape
        rows = 2 if self.guided else 1
        seq_start = cache.lengths.repeat(rows)  # (R,)
        seq_index = seq_start[:, None] + torch.arange(T, device=self.device)  # (R, T)
        content = tokens.repeat(rows, 1)  # (R, T)
        first = not cache.started
        if first:  # the class prompt: ids 0..C become class tokens; the null class below
            labels = tokens[:, 0].repeat(rows)
            if self.guided:
                labels[B:] = self.model.null_class
            content = content.clone()
            content[:, 0] = self.model.class_tokens(labels)
        elif bool((tokens >= self.vocab_size).any()):
            raise InputError(f"image tokens must be < {self.vocab_size}")
        rope = self._rope(seq_index)  # (R, T)
        query_rope = self.order[seq_index.clamp(max=self.n - 1)] + 2  # (R, T)
        if first:  # BOS at cache index 0, RoPE 0, in the same step as the class
            bos = torch.full((B * rows, 1), self.model.step_model.bos_id, device=self.device)
            content = torch.cat([bos, content], dim=1)
            rope = torch.cat([torch.zeros_like(bos), rope], dim=1)
        n_content = content.shape[1]
        queries = torch.full_like(tokens.repeat(rows, 1), self.model.step_model.query_id)
        x = torch.cat([content, queries], dim=1)  # (R, Tc + T)
        pos = torch.cat([rope, query_rope], dim=1).clamp(max=self.model.step_model.max_positions)
        written_from = cache.inner.lengths.clone()  # (R,)
        step_mask = two_stream_step_mask(written_from, seq_start, n_content)
        step_model = self.model.step_model
        embeds = step_model.transformer.tok_embeddings(x) + step_model.pos_embed(pos)
        out = step_model.transformer(
            x, positions=pos, cache=cache.inner, mask=step_mask, commit=False, query_embeds=embeds
        )
        cache.started = True
        logits = out.logits[:, n_content:, : self.vocab_size]  # (R, T, V)
        if self.guided:
            logits = guide(logits, self.cfg_scale)  # (B, T, V)
        if commit:
            cache.commit(T)
        return ModelOutput(logits=logits, hidden=out.hidden[:B, n_content:])


def generate_tokens(
    adapter: CausalLMAdapter,
    labels: Tensor,
    config: GenerationConfig,
    *,
    strategy: str = "sample",
    **kwargs: Any,
) -> tuple[Tensor, GenerationStats]:
    """Image tokens (B, N) of classes ``labels`` (B,) through ``ar_core.generate`` with
    ``strategy`` (``sjd`` and ``lantern`` come from ar-decoding); and the stats."""
    if strategy not in registry.strategies:
        try:
            import ar_decoding  # noqa: F401  (its plugin registers the strategies)
        except ImportError:
            raise ConfigError(
                f"strategy {strategy!r} needs ar-decoding: pip install 'ar-vision[decoding]'"
            ) from None
    if config.max_new_tokens != adapter.n:
        raise ConfigError(
            f"max_new_tokens must be the {adapter.n} image tokens, got {config.max_new_tokens}"
        )
    prompt = labels.to(device=adapter.device, dtype=torch.long)[:, None]  # (B, 1)
    result = generate(adapter, prompt, config, strategy=strategy, **kwargs)
    return adapter.to_image_tokens(result.sequences), result.stats
