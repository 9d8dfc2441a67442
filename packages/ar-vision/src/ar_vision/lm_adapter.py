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

:class:`AdapterCache` is the ``KVCache`` of that view (``lengths`` = sequence tokens
committed, per row) over the step model's cache (``[BOS]`` first, then the content;
the queries of a call stay pending and are overwritten by the next one); it sets the
step-model cache's lengths with ``set_lengths`` and moves entries only through its
methods. The step-model cache is sized for the calls of ``ar_core.generate``'s strategies
(``CausalLMAdapter.inner_slots``: BOS, ``max_len`` tokens and one call's queries), since
attention runs over all of its slots: a one-token pass of a 64-token image attends to 68
slots instead of the model's 195. A longer call grows it once (:meth:`AdapterCache.reserve`,
the only place that copies buffers directly). The forward is the step model's public ``run`` under
``ar_core.masks.two_stream_decode``.

Notation: B rows (2B with CFG: R), T new tokens, N image tokens, V image vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ar_core import masks, registry
from ar_core.cache import StaticKVCache
from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig, GenerationStats, generate
from ar_core.masks import MaskSpec
from ar_core.model import ModelOutput
from ar_core.ordering import Plan
from ar_core.protocols import KVCache
from ar_core.steps import guide
from ar_vision.model import ClassConditionalStepModel


class AdapterCache:
    """The :class:`~ar_core.protocols.KVCache` of :class:`CausalLMAdapter`: ``lengths``
    (B,) sequence tokens committed per row (at most ``max_len``), over a step-model cache
    of R = ``rows * B`` rows (``rows`` 2 with CFG: the conditional rows, then the
    unconditional ones) that holds ``[BOS]`` and then the committed content of each row.

    Sequence index ``i`` lives at slot ``i + 1`` of the step-model cache in every one of
    a row's R / B copies; :meth:`move_entries` and :meth:`fork` map through that.
    """

    def __init__(self, inner: StaticKVCache, batch_size: int, max_len: int) -> None:
        if batch_size < 1 or inner.batch_size % batch_size:
            raise InputError(
                f"AdapterCache: the step-model cache has {inner.batch_size} rows, not a "
                f"multiple of batch_size={batch_size}"
            )
        self.inner = inner
        self.batch_size = batch_size
        self.max_len = max_len
        self.rows = inner.batch_size // batch_size  # copies of each row (2 with CFG)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=inner.device)
        self.started = False  # BOS is written by the first forward

    def _sync(self) -> None:
        inner = torch.where(self.lengths > 0, self.lengths + 1, 0).repeat(self.rows)  # (R,)
        self.inner.set_lengths(inner)

    def _inner_rows(self, index: Tensor) -> Tensor:
        """Rows (B',) of this view -> their rows (rows * B',) of the step-model cache."""
        return torch.cat([index + r * self.batch_size for r in range(self.rows)])

    def reserve(self, slots: int, n_new: int) -> None:
        """Make room for ``n_new`` step-model entries after the committed ones: when the
        step-model cache is too short, replace it by one of ``slots`` slots holding the
        same entries (the buffers are copied once; a call longer than the strategies of
        ``ar_core.generate`` make, see :meth:`CausalLMAdapter.inner_slots`)."""
        old = self.inner
        if old.max_length() + n_new <= old.max_len or slots <= old.max_len:
            return  # fits, or cannot grow: the step-model cache names the overflow
        if int(old.lengths.max()) + n_new <= old.max_len:
            return  # the host-side bound was stale
        new = StaticKVCache(
            old.n_layers, old.batch_size, old.n_kv_heads, old.head_dim, slots, old.dtype, old.device
        )
        for dst, src in zip([*new.k, *new.v], [*old.k, *old.v], strict=True):
            dst[:, :, : old.max_len].copy_(src)
        new.set_lengths(old.lengths)
        self.inner = new

    def commit(self, n: int | Tensor) -> None:
        lengths = self.lengths + (n if isinstance(n, int) else n.to(self.lengths))
        longest = int(lengths.max())
        if longest > self.max_len:
            raise InputError(
                f"AdapterCache commit: a row would hold {longest} tokens, more than "
                f"max_len={self.max_len}; create the cache with a larger max_len"
            )
        self.lengths = lengths
        self._sync()

    def crop(self, n: int | Tensor) -> None:
        self.lengths = torch.minimum(self.lengths, torch.as_tensor(n).to(self.lengths))
        self._sync()

    def reset(self) -> None:
        self.lengths = torch.zeros_like(self.lengths)
        self.started = False
        self.inner.reset()

    def max_length(self) -> int:
        return int(self.lengths.max())

    def move_entries(self, src: Tensor, dst: Tensor) -> None:
        """Copy the entries of sequence slots ``src`` (B, m) to ``dst`` (B, m) of each row
        (in every copy of the row); lengths are unchanged."""
        src, dst = torch.as_tensor(src), torch.as_tensor(dst)
        if src.ndim != 2 or src.shape != dst.shape or src.shape[0] != self.batch_size:
            raise InputError(
                f"AdapterCache move_entries: src and dst must both be ({self.batch_size}, m), "
                f"got {tuple(src.shape)} and {tuple(dst.shape)}"
            )
        self.inner.move_entries((src + 1).repeat(self.rows, 1), (dst + 1).repeat(self.rows, 1))

    def fork(self, index: Tensor | None = None) -> AdapterCache:
        """An independent copy; ``index`` (long, (B',)) selects (and may repeat) rows."""
        if index is None:
            index = torch.arange(self.batch_size, device=self.lengths.device)
        index = index.to(device=self.lengths.device, dtype=torch.long)
        if index.ndim != 1 or index.numel() == 0:
            raise InputError(
                f"AdapterCache fork: index must be a non-empty 1-d tensor, got {index}"
            )
        out = AdapterCache(self.inner.fork(self._inner_rows(index)), index.numel(), self.max_len)
        out.lengths = self.lengths.index_select(0, index)
        out.started = self.started
        return out


class CausalLMAdapter:
    """``ClassConditionalStepModel`` + a one-position-per-step ``plan`` as a
    :class:`~ar_core.protocols.CausalLM` over ``[class, tokens in plan order]``;
    ``cfg_scale`` != 1 guides with the null class."""

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
        """A cache of ``batch_size`` rows of up to ``max_len`` (default and at most
        ``max_seq_len``) sequence tokens."""
        max_len = self.max_seq_len if max_len is None else max_len
        if max_len > self.max_seq_len:
            raise InputError(
                f"new_cache: max_len={max_len} exceeds the adapter's max_seq_len="
                f"{self.max_seq_len} (BOS, the class, {self.n} image tokens and one call's "
                f"queries in the step model's {self.model.step_model.transformer.max_seq_len})"
            )
        rows = 2 * batch_size if self.guided else batch_size
        inner = self.model.step_model.transformer.new_cache(rows, self.inner_slots(max_len))
        return AdapterCache(inner, batch_size, max_len)

    def inner_slots(self, max_len: int, queries: int | None = None) -> int:
        """Step-model cache slots for ``max_len`` sequence tokens: ``[BOS]``, the content
        and the queries of one call, ``queries`` of them (default ``max_len - N + 1``: a
        strategy of ``ar_core.generate`` budgets ``max_len`` = prompt + N + its extra
        tokens, and no call of it runs more than prompt + extra + 1 tokens). Attention runs
        over every slot of that cache, so a tight one is what keeps a one-token pass cheap;
        a longer call grows it (:meth:`AdapterCache.reserve`)."""
        queries = max(1, max_len - self.n + 1) if queries is None else queries
        return min(self.model.step_model.transformer.max_seq_len, 1 + max_len + queries)

    def to_image_tokens(self, sequences: Tensor) -> Tensor:
        """Generated ``[class, t_1..t_N]`` (B, N + 1) -> image tokens (B, N) in position order."""
        tokens = torch.empty_like(sequences[:, 1:])
        tokens[:, self.order] = sequences[:, 1 : self.n + 1]
        return tokens

    def _rope(self, seq_index: Tensor) -> Tensor:
        """RoPE position of the content at sequence index ``seq_index`` (class: 1)."""
        slot = (seq_index - 1).clamp(0, self.n - 1)
        return torch.where(seq_index == 0, 1, self.order[slot] + 2)

    @torch.no_grad()
    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        mask: MaskSpec | None = None,
        commit: bool = True,
    ) -> ModelOutput:
        """Logits (B, T, V): row ``b``, column ``i`` predicts the token after ``tokens[b, i]``.

        ``positions`` must be None or the default (each row's committed length +
        ``arange(T)``): a token's RoPE position is the image position of its sequence
        index under the plan, so strategies that place tokens elsewhere (tree or lookahead
        verification) are refused, not silently run at the wrong positions. ``mask`` must
        be causal (or None)."""
        if not isinstance(cache, AdapterCache):
            raise InputError(
                "CausalLMAdapter runs with its own cache: pass adapter.new_cache(B), got "
                f"{type(cache).__name__}"
            )
        if mask is not None and not mask.is_causal:
            raise InputError(f"CausalLMAdapter supports the causal mask only, got {mask.name}")
        B, T = tokens.shape
        if positions is not None:
            default = cache.lengths[:, None] + torch.arange(T, device=cache.lengths.device)
            if not torch.equal(torch.as_tensor(positions).to(default).expand(B, T), default):
                raise InputError(
                    "CausalLMAdapter places each token at its plan position: pass "
                    "positions=None (strategies that verify trees or lookahead blocks at "
                    "other positions do not apply to it)"
                )
        rows = 2 if self.guided else 1
        step_model = self.model.step_model
        first = not cache.started
        # BOS (first call), the committed content, T content tokens and T queries
        cache.reserve(self.inner_slots(cache.max_len, queries=T), (0 if first else 1) + 2 * T)
        seq_start = cache.lengths.repeat(rows)  # (R,)
        seq_index = seq_start[:, None] + torch.arange(T, device=self.device)  # (R, T)
        content = tokens.repeat(rows, 1)  # (R, T)
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
            bos = torch.full((B * rows, 1), step_model.bos_id, device=self.device)
            content = torch.cat([bos, content], dim=1)
            rope = torch.cat([torch.zeros_like(bos), rope], dim=1)
        n_content = content.shape[1]
        queries = torch.full_like(tokens.repeat(rows, 1), step_model.query_id)
        x = torch.cat([content, queries], dim=1)  # (R, Tc + T)
        pos = torch.cat([rope, query_rope], dim=1).clamp(max=step_model.max_positions)
        step_mask = masks.two_stream_decode(cache.inner.lengths, seq_start, n_content)
        out = step_model.run(x, pos, mask=step_mask, cache=cache.inner, commit=False)
        cache.started = True
        logits = out.logits[:, n_content:, : self.vocab_size]  # (R, T, V)
        if self.guided:
            logits = guide(logits, self.cfg_scale)  # (B, T, V)
        if commit:
            cache.commit(T)
        return ModelOutput(logits=logits, hidden=out.hidden[:B, n_content:])

    __call__ = forward


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
