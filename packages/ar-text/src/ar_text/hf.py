"""The Hugging Face adapter: any ``transformers`` causal LM as an ar model.

``from_hf(model_or_path)`` returns an :class:`HFCausalLM`, which follows the model
protocol of ``docs/design/contracts.md`` (``forward(tokens, positions, cache, mask,
commit) -> ModelOutput``, ``new_cache``, ``vocab_size``, ``max_seq_len``), so
``ar_core.generate`` and every ar-decoding strategy (speculative, prompt lookup, Jacobi,
lookahead, tree) run on GPT-2, Llama, Qwen2 and other decoder-only HF models.

The cache. HF's own caches (``DynamicCache``, ``StaticCache``) keep ONE length for the
whole batch and append at that one position; the strategies of ar need per-row lengths
(ragged batches, rows accepting different numbers of draft tokens), pending vs committed
entries and cheap rollback. So the adapter keeps ar's :class:`~ar_core.cache.StaticKVCache`
(per-row ``lengths``, ``commit``, ``crop``, ``fork``, ``reset``; buffers (B, Hkv, S, D)
per layer) and hands the HF model, for one forward, an HF ``Cache`` whose layers
(:class:`_StaticKVLayer`) write into those buffers at each row's own slots
``lengths[b] .. lengths[b] + T - 1`` (HF's ``Cache.update`` protocol). Rollback is
``crop`` (only ``lengths`` change, as in ar), and the lookahead and tree strategies move
entries with the cache's own ``move_entries``. The adapter follows
:class:`~ar_core.protocols.CausalLM` and its caches :class:`~ar_core.protocols.KVCache`.

The mask. Every forward gets an explicit 4-D additive float mask (B, 1, T, S) (0 = may
attend, the dtype's minimum = may not; eager and SDPA attention both accept it) and
explicit ``position_ids`` (B, T): query i of row b sits at absolute index
``lengths[b] + i`` and sees key slot j iff ``j < lengths[b] + T`` and the ar
:class:`~ar_core.masks.MaskSpec` allows it (default causal; tree and lookahead masks are
converted with ``mask.to_dense``). So row b never sees another row's longer context nor
stale pending entries.

Limits: models whose layers are not all full attention (sliding-window, linear/recurrent
layers) and attention implementations that do not take a 4-D float mask (flash, flex)
raise :class:`~ar_core.errors.ConfigError`; logits are ``lm_head(last hidden state)``, so
heads with extra logit transforms (Gemma-2's soft-capping, Cohere's ``logit_scale``) are
refused rather than silently changed.

Notation: B rows, T new tokens, S cache slots (``max_len``), Hkv key/value heads, D head
dim, C model width, V vocabulary.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ar_core import masks
from ar_core.cache import StaticKVCache
from ar_core.errors import ConfigError, InputError
from ar_core.model import ModelOutput, check_model_inputs
from ar_core.protocols import KVCache

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

__all__ = ["HFCausalLM", "from_hf"]

# attention implementations that add a 4-D float mask to the scores as given
_MASKABLE_ATTENTION = ("eager", "sdpa")


def from_hf(model_or_path: Any, **from_pretrained_kwargs: Any) -> HFCausalLM:
    """Wrap a ``transformers`` causal LM (an instance, or a path / hub id loaded with
    ``AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)``) as an ar model.

    The model is put in eval mode (dropout off): the adapter is for inference.
    """
    from transformers import PreTrainedModel

    if isinstance(model_or_path, Path) and not model_or_path.is_dir():
        raise InputError(
            f"from_hf: {model_or_path} is not a folder; pass a folder written by "
            f"save_pretrained (config.json and weights), a hub id string, or a model"
        )
    if isinstance(model_or_path, str | Path):
        from transformers import AutoModelForCausalLM

        model_or_path = AutoModelForCausalLM.from_pretrained(
            str(model_or_path), **from_pretrained_kwargs
        )
    elif from_pretrained_kwargs:
        raise ConfigError(
            f"from_hf: keyword arguments {sorted(from_pretrained_kwargs)} only apply when "
            f"loading from a path; got a {type(model_or_path).__name__} instance"
        )
    if not isinstance(model_or_path, PreTrainedModel):
        raise InputError(
            f"from_hf expects a transformers PreTrainedModel (e.g. LlamaForCausalLM) or a "
            f"path to one, got {type(model_or_path).__name__}"
        )
    return HFCausalLM(model_or_path)


class _StaticKVLayer:
    """One layer of HF's ``Cache`` protocol over layer ``index`` of a StaticKVCache:
    ``update`` writes the T new entries of each row after its own committed ones and
    returns the whole buffers (B, Hkv, S, D)."""

    is_sliding = False
    is_compileable = False
    is_initialized = True

    def __init__(self, store: StaticKVCache, index: int) -> None:
        self.store, self.index = store, index

    @property
    def keys(self) -> Tensor:
        return self.store.k[self.index]

    @property
    def values(self) -> Tensor:
        return self.store.v[self.index]

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        return self.store.write(self.index, key_states, value_states)  # (B, Hkv, S, D) each

    def get_seq_length(self) -> int:
        return self.store.max_length()

    def get_max_length(self) -> int:
        return self.store.max_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.store.max_len, 0


def _hf_cache_view(store: StaticKVCache) -> Any:
    """An HF ``Cache`` whose layers write into ``store`` (built per forward; cheap)."""
    from transformers.cache_utils import Cache

    # duck-typed layers: HF's Cache only calls update / get_* / the flags defined above
    layers: list[Any] = [_StaticKVLayer(store, i) for i in range(store.n_layers)]
    return Cache(layers=layers)


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM behind the ar model protocol (see the module docstring).

    ``hf`` is the wrapped model; its base model computes the hidden states and its output
    embeddings (``lm_head``) the logits.
    """

    def __init__(self, hf: PreTrainedModel) -> None:
        super().__init__()
        self.hf = hf.eval()
        cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        self._check_supported(cfg)
        self.vocab_size: int = int(cfg.vocab_size)
        self.max_seq_len: int = int(cfg.max_position_embeddings)
        self.n_layers = int(cfg.num_hidden_layers)
        n_heads = int(cfg.num_attention_heads)
        self.n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
        self._base = hf.base_model  # the decoder without the LM head
        self._head = hf.get_output_embeddings()  # C -> V
        params = inspect.signature(self._base.forward).parameters
        # transformers 5.x renamed past_key_values to cache (the old name is deprecated)
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._causal = masks.causal()

    @staticmethod
    def _check_supported(cfg: Any) -> None:
        impl = getattr(cfg, "_attn_implementation", None) or "eager"
        if impl not in _MASKABLE_ATTENTION:
            raise ConfigError(
                f"from_hf: attention implementation {impl!r} does not take the explicit 4-D "
                f"masks the adapter needs; load the model with attn_implementation='sdpa' "
                f"(or call model.set_attn_implementation('sdpa'))"
            )
        layer_types = getattr(cfg, "layer_types", None) or []
        odd = sorted({t for t in layer_types if t != "full_attention"})
        if odd:
            raise ConfigError(
                f"from_hf: layer types {odd} are not supported (only full attention); "
                f"the adapter's per-row cache and masks cover full-attention layers only"
            )
        for attr in ("final_logit_softcapping", "logit_scale"):
            if getattr(cfg, attr, None) not in (None, 1.0):
                raise ConfigError(
                    f"from_hf: models with {attr}={getattr(cfg, attr)} are not supported (the "
                    f"adapter computes logits as lm_head(hidden) without that transform)"
                )

    # -- properties -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def new_cache(
        self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> StaticKVCache:
        """A per-row KV cache for ``batch_size`` rows of up to ``max_len`` (default
        ``max_seq_len``) positions: ar's StaticKVCache, which the HF layers write into."""
        max_len = self.max_seq_len if max_len is None else max_len
        if max_len > self.max_seq_len:
            raise InputError(
                f"new_cache: max_len={max_len} exceeds the model's max_seq_len="
                f"{self.max_seq_len} (max_position_embeddings); use max_len <= "
                f"{self.max_seq_len}"
            )
        return StaticKVCache.for_config(
            self,  # n_layers, n_kv_heads and head_dim, read off the HF config
            batch_size,
            max_len,
            dtype=self.dtype if dtype is None else dtype,
            device=self.device,
        )

    # -- forward ----------------------------------------------------------------------
    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        mask: masks.MaskSpec | None = None,
        commit: bool = True,
    ) -> ModelOutput:
        """Logits (B, T, V) and final hidden states (B, T, C) for ``tokens`` (B, T).

        ``positions`` (B, T) or (T,): position ids, default ``cache.lengths + arange(T)``
        (``arange(T)`` without a cache). ``mask``: an ar MaskSpec over absolute indices,
        default causal. With a cache the new entries go after each row's committed ones;
        ``commit=False`` leaves them pending.
        """
        store = self._check_inputs(tokens, positions, cache, mask)
        B, T = tokens.shape
        device = tokens.device
        if store is None:
            q_offset = torch.zeros(B, dtype=torch.long, device=device)
            S = T
        else:
            q_offset = store.lengths.clone()  # (B,), before the commit below
            S = store.max_len
        if positions is None:
            positions = q_offset[:, None] + torch.arange(T, device=device)  # (B, T)
        elif positions.ndim == 1:
            positions = positions[None, :].expand(B, T)
        attention = self._attention_mask(mask, q_offset, T, S)  # (B, 1, T, S)
        kwargs: dict[str, Any] = {
            "input_ids": tokens,
            "attention_mask": attention,
            "position_ids": positions,
            "use_cache": store is not None,
        }
        if store is not None:
            kwargs[self._cache_kwarg] = _hf_cache_view(store)
        hidden = self._base(**kwargs).last_hidden_state  # (B, T, C)
        if store is not None and commit:
            store.commit(T)
        return ModelOutput(logits=self._head(hidden), hidden=hidden)  # (B, T, V)

    def _attention_mask(
        self, mask: masks.MaskSpec | None, q_offset: Tensor, T: int, S: int
    ) -> Tensor:
        """Additive float mask (B, 1, T, S): slot j is visible to query i of row b iff
        ``j < q_offset[b] + T`` and ``mask`` allows (q_offset[b] + i, j)."""
        spec = self._causal if mask is None else mask
        B, device = q_offset.shape[0], q_offset.device
        # keys past the longest row are never visible: build the dense mask up to there
        # only (masks with a fixed length, e.g. tree, are defined up to that point)
        K = int((q_offset + T).max())
        allowed = spec.to_dense(T, K, q_offset=q_offset, batch_size=B, device=device)  # (B, T, K)
        slots = torch.arange(K, device=device)[None, None, :]  # (1, 1, K)
        allowed = allowed & (slots < (q_offset + T)[:, None, None])
        allowed = torch.nn.functional.pad(allowed, (0, S - K), value=False)  # (B, T, S)
        blocked = torch.finfo(self.dtype).min
        zero = torch.zeros((), dtype=self.dtype, device=device)
        return torch.where(allowed, zero, blocked)[:, None]  # (B, 1, T, S)

    def _check_inputs(
        self,
        tokens: Tensor,
        positions: Tensor | None,
        cache: KVCache | None,
        mask: masks.MaskSpec | None,
    ) -> StaticKVCache | None:
        """Every check runs before any compute; messages carry the offending numbers.
        Returns the cache, which must be this adapter's own kind (a StaticKVCache: the HF
        layers write into its buffers), or None."""
        if cache is not None:
            if not isinstance(cache, StaticKVCache):
                raise InputError(
                    f"cache must come from model.new_cache(...) (a StaticKVCache), got "
                    f"{type(cache).__name__}"
                )
            shape = (cache.n_layers, cache.n_kv_heads, cache.head_dim)
            if shape != (self.n_layers, self.n_kv_heads, self.head_dim):
                raise InputError(
                    f"the cache holds (layers, kv heads, head dim) = {shape} but the model needs "
                    f"{(self.n_layers, self.n_kv_heads, self.head_dim)}; use model.new_cache(...)"
                )
        check_model_inputs(
            tokens, positions, cache, mask, vocab_size=self.vocab_size, max_seq_len=self.max_seq_len
        )
        return cache
