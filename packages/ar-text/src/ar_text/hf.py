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

The mask. Every forward gets explicit 4-D additive float masks (B, 1, T, S) (0 = may
attend, the dtype's minimum = may not; eager and SDPA attention both accept it) and
explicit ``position_ids`` (B, T): query i of row b sits at absolute index
``lengths[b] + i`` and sees key slot j iff ``j < lengths[b] + T`` and the ar
:class:`~ar_core.masks.MaskSpec` allows it (default causal; tree and lookahead masks are
converted with ``mask.to_dense``). So row b never sees another row's longer context nor
stale pending entries.

Sliding-window layers (Mistral, Qwen2 with windows, Gemma-2/3's local layers) get the same
mask with keys ``sliding_window`` or more positions before the query dropped (a key's
position: its slot once committed, the given ``positions`` for this forward's own entries,
so tree branches see the window they would see run alone); when a model mixes layer kinds
the masks go to transformers as ``{"full_attention": ..., "sliding_attention": ...}``, the
dict its hybrid models take as given. The cache keeps every entry (no ring buffer), so the
window saves no memory (exactness is unaffected). Bloom's ALiBi biases are built over the key slots for
the call (:meth:`HFCausalLM._alibi_over_slots`); Bloom has no position limit, so
``max_seq_len`` defaults to :data:`ALIBI_MAX_SEQ_LEN` (2048, its training length).

The forward runs the HF model itself, so each family's own logit transforms (Gemma-2's
final soft-capping, Cohere's ``logit_scale``) apply; the final hidden states are read off
the decoder with a forward hook. ``from_hf`` probes the cache shapes with one 1-token
forward through a transformers ``DynamicCache`` (Falcon's multi-query, head-dim overrides).

Refused up front with :class:`~ar_core.errors.ConfigError`, naming the family, the feature
and what to use instead: models that are not decoder-only causal LMs with an LM head
(``BertModel``, ``BertForMaskedLM``, ``GPT2Model``, T5, a BERT-like LM head built with
``is_decoder=False``); layers other than full or sliding attention (linear attention,
state-space, chunked attention); caches whose keys and values differ in shape (multi-head
latent attention); attention implementations that do not take a 4-D float mask (flash,
flex); attention soft-capping under sdpa (use eager). The table of every family in
transformers' causal-LM auto mapping is on docs/packages/ar-text.md.

Notation: B rows, T new tokens, S cache slots (``max_len``), Hkv key/value heads, D head
dim, C model width, V vocabulary.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import CacheLayerMixin

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


def from_hf(
    model_or_path: Any, *, max_seq_len: int | None = None, **from_pretrained_kwargs: Any
) -> HFCausalLM:
    """Wrap a ``transformers`` causal LM (an instance, or a path / hub id loaded with
    ``AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)``) as an ar model.

    ``max_seq_len``: the longest sequence the adapter's caches hold; default the config's
    position limit (``max_position_embeddings`` and its per-family aliases), or
    :data:`ALIBI_MAX_SEQ_LEN` for ALiBi models without one (Bloom). A value above the
    config's own limit is refused. The model is put in eval mode (dropout off): the adapter
    is for inference. Models that are not decoder-only causal LMs with an LM head, and
    families whose layers the adapter cannot run exactly, are refused here with a
    :class:`~ar_core.errors.ConfigError` (see the module docstring).
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
    return HFCausalLM(model_or_path, max_seq_len=max_seq_len)


def _causal_lm_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _reads_is_decoder(cls: type) -> bool:
    """Whether the modelling code of ``cls`` reads ``config.is_decoder`` (BERT-like families
    switch between bidirectional and causal attention on it; GPT-2 and Llama ignore it)."""
    return _module_reads_is_decoder(cls.__module__)


@functools.cache
def _module_reads_is_decoder(name: str) -> bool:
    module = sys.modules.get(name)
    try:
        return module is not None and "config.is_decoder" in inspect.getsource(module)
    except (OSError, TypeError):  # no source (a frozen or compiled module): assume it does
        return True


def _check_causal_lm(hf: Any) -> None:
    """Refuse, before anything runs, models that are not decoder-only causal LMs with an LM
    head (a bare base model, a masked LM, an encoder-decoder)."""
    name = type(hf).__name__
    fix = "load the checkpoint with transformers.AutoModelForCausalLM.from_pretrained(...)"
    if getattr(hf.config, "is_encoder_decoder", False):
        raise ConfigError(
            f"from_hf: {name} is an encoder-decoder model; the adapter runs decoder-only "
            f"causal LMs (a *ForCausalLM class); {fix} for a decoder-only checkpoint"
        )
    if hf.get_output_embeddings() is None:
        raise ConfigError(
            f"from_hf: {name} has no LM head (get_output_embeddings() is None), so it "
            f"gives hidden states, not logits; {fix}"
        )
    if name not in _causal_lm_classes() and not name.endswith("ForCausalLM"):
        raise ConfigError(
            f"from_hf: {name} is not a causal LM (its class is not in transformers' "
            f"causal-LM auto mapping, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES); {fix}"
        )
    if "shared_kv_states" in inspect.signature(type(hf).forward).parameters:
        raise ConfigError(
            f"from_hf: {name} is an assistant (draft) model: its forward reads another "
            f"model's keys and values (shared_kv_states), not a cache of its own tokens, so "
            f"it cannot generate alone; wrap the target model it belongs to and use ar's "
            f"speculative strategy with a self-contained draft"
        )
    if getattr(hf.config, "is_decoder", True) is False and _reads_is_decoder(type(hf)):
        # the BERT-like *ForCausalLM / *LMHeadModel classes attend bidirectionally unless
        # their config says is_decoder=True (transformers 4.x gives every config
        # is_decoder=False, so only the families whose code reads it are refused)
        raise ConfigError(
            f"from_hf: {name} was built with is_decoder=False, so it attends bidirectionally; "
            f"set config.is_decoder=True (AutoModelForCausalLM.from_pretrained(path, "
            f"is_decoder=True))"
        )


def _takes_tokens(module: Any) -> bool:
    """Whether ``module`` is a decoder (its forward takes ``input_ids``); some models'
    ``get_decoder()`` returns another module (ModernBERT-decoder's: its head)."""
    if not isinstance(module, nn.Module):
        return False
    return "input_ids" in inspect.signature(module.forward).parameters


def _masks_windows(decoder: nn.Module) -> bool:
    """Whether transformers builds sliding-window masks for ``decoder`` (its forward names
    them: ``create_sliding_window_causal_mask`` or a ``"sliding_attention"`` mask); True
    when its source cannot be read."""
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):  # pragma: no cover - compiled or dynamic classes
        return True
    return "sliding" in source


# attention layer types the adapter masks itself (HF's names, config.layer_types)
_FULL, _SLIDING = "full_attention", "sliding_attention"

# Families whose positions are ALiBi biases (no position table, so the config has no
# position limit): the default max_seq_len, Bloom's training length.
ALIBI_MAX_SEQ_LEN = 2048
_POSITION_LIMITS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_target_positions",  # Whisper's decoder
)


class _StaticKVLayer(CacheLayerMixin):  # type: ignore[misc]
    """One layer of HF's ``Cache`` protocol over layer ``index`` of a StaticKVCache:
    ``update`` writes the T new entries of each row after its own committed ones and
    returns the whole buffers (B, Hkv, S, D). A real ``CacheLayerMixin`` (HF checks
    ``isinstance`` to tell attention layers from linear-attention ones); its
    ``keys``/``values`` are the store's buffers, so ``__init__`` does not call the
    mixin's (which would set them to None)."""

    is_sliding = False
    is_compileable = False
    is_initialized = True

    def __init__(self, store: StaticKVCache, index: int) -> None:
        self.store, self.index = store, index

    @property
    def keys(self) -> Tensor:  # type: ignore[override]
        return self.store.k[self.index]

    @property
    def values(self) -> Tensor:  # type: ignore[override]
        return self.store.v[self.index]

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        pass  # the buffers exist from the start

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        return self.store.write(self.index, key_states, value_states)  # (B, Hkv, S, D) each

    def get_seq_length(self) -> int:
        return self.store.max_length()

    def get_max_length(self) -> int:
        return self.store.max_len

    def get_max_cache_shape(self) -> int:  # the name transformers < 5.1 asks for
        return self.store.max_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.store.max_len, 0


def _hf_cache_view(store: StaticKVCache) -> Any:
    """An HF ``Cache`` whose layers write into ``store`` (built per forward; cheap)."""
    from transformers.cache_utils import Cache

    layers: list[Any] = [_StaticKVLayer(store, i) for i in range(store.n_layers)]
    return Cache(layers=layers)


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM behind the ar model protocol (see the module docstring).

    ``hf`` is the wrapped model; one forward runs ``hf`` itself (so the family's own logit
    transforms, e.g. Gemma-2's soft-capping, apply) and reads the final hidden states off
    its base model with a forward hook.
    """

    def __init__(self, hf: PreTrainedModel, max_seq_len: int | None = None) -> None:
        super().__init__()
        _check_causal_lm(hf)
        self.hf = hf.eval()
        cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        self.family = str(getattr(cfg, "model_type", type(hf).__name__))
        self._check_supported(cfg, self.family)
        self.layer_types: list[str] = self._layer_types(cfg)
        self.sliding_window: int | None = (
            int(cfg.sliding_window) if _SLIDING in self.layer_types else None
        )
        self.vocab_size: int = int(cfg.vocab_size)
        self.max_seq_len: int = self._max_seq_len(cfg, max_seq_len)
        self._check_key_count_windows(cfg, max_seq_len)
        self.n_layers = int(cfg.num_hidden_layers)
        self._base = hf.base_model  # the decoder without the LM head
        params = inspect.signature(self._base.forward).parameters
        # transformers 5.x renamed past_key_values to cache (the old name is deprecated)
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # Bloom builds its ALiBi biases from a 2-D padding mask (it crashes on a 4-D one)
        self._alibi_from_2d = hasattr(self._base, "build_alibi_tensor")
        self._causal = masks.causal()
        self._hidden: Tensor | None = None
        # the module whose output lm_head reads (OPT's ForCausalLM calls model.decoder)
        decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else None
        hidden_from: Any = decoder if decoder is not hf and _takes_tokens(decoder) else self._base
        if hidden_from is hf:  # base_model_prefix names no submodule (Mllama's causal LM)
            inner = (getattr(hf, n, None) for n in ("model", "transformer", "decoder"))
            hidden_from = next((m for m in inner if _takes_tokens(m)), hf)
        if self.sliding_window is not None and not _masks_windows(hidden_from):
            # e.g. Moshi: transformers builds full causal masks and windows only through its
            # cache's truncation, so its own prefill (full) and decode (windowed) disagree
            raise ConfigError(
                f"from_hf: {self.family} sets sliding_window={self.sliding_window} but "
                f"transformers masks it as full attention and windows it only by truncating "
                f"its cache, so HF's own prefill and decode see different contexts; set "
                f"config.sliding_window=None (full attention) to run it exactly"
            )
        if "position_ids" not in inspect.signature(hidden_from.forward).parameters and not (
            self._has_alibi(cfg)
        ):
            raise ConfigError(
                f"from_hf: {self.family}'s decoder ({type(hidden_from).__name__}) takes no "
                f"position_ids: it numbers positions from the cache's one shared length, so "
                f"rows of different lengths and tree/lookahead positions would get wrong "
                f"positions; closest supported: opt (learned absolute positions that take "
                f"position_ids) or any RoPE family (llama)"
            )
        # the user's model keeps this hook while the adapter lives (removed on a refusal)
        self._hook = hidden_from.register_forward_hook(self._keep_hidden)
        try:
            self.n_kv_heads, self.head_dim = self._probe_cache_shape()
            self._probe_adapter_forward()
        except ConfigError:
            self._hook.remove()
            raise

    def _probe_adapter_forward(self) -> None:
        """One 2-token forward the adapter's way (ar's cache, explicit 4-D masks and
        position ids): a family whose code needs a 2-D padding mask instead (XLM) is
        refused here, not in the user's first generate."""
        ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        try:
            with torch.no_grad():
                self.forward(ids, cache=self.new_cache(1, min(4, self.max_seq_len)))
        except Exception as e:
            raise ConfigError(
                f"from_hf: {self.family} fails on the adapter's explicit 4-D attention mask "
                f"and position ids ({type(e).__name__}: {e}); its transformers code builds "
                f"its own masks from a 2-D padding mask, so per-row cache lengths cannot be "
                f"given; use a family that takes 4-D masks (e.g. gpt2, llama)"
            ) from e

    @property
    def eos_token_ids(self) -> list[int]:
        """The end tokens of the wrapped model's ``generation_config`` (several for chat
        models such as Llama-3: end-of-text and end-of-turn), in order; [] when it has none."""
        eos = getattr(getattr(self.hf, "generation_config", None), "eos_token_id", None)
        if eos is None:
            return []
        return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]

    def generation_config(self, **overrides: Any) -> Any:
        """An ar ``GenerationConfig`` that stops where ``hf.generate`` would: the model's
        EOS ids (all of them) and pad id, then ``overrides`` (``max_new_tokens=``, ...)."""
        from ar_core.generation import GenerationConfig

        hf_config = getattr(self.hf, "generation_config", None)
        defaults: dict[str, Any] = {}
        if self.eos_token_ids:
            defaults["eos_token_id"] = self.eos_token_ids
        pad = getattr(hf_config, "pad_token_id", None)
        if pad is None and self.eos_token_ids:  # what hf.generate pads with, and warns about
            pad = self.eos_token_ids[0]
        if pad is not None:
            defaults["pad_token_id"] = int(pad)
        return GenerationConfig(**{**defaults, **overrides})

    def _check_key_count_windows(self, cfg: Any, asked: int | None) -> None:
        """GPT-Neo's local layers take their window from a buffer indexed by the key count
        (the queries are assumed to be the last keys). ar's cache has a fixed number of
        slots, so past ``window_size`` slots those layers would see the wrong window: exact
        only while the cache holds at most ``window_size`` slots."""
        kinds = getattr(cfg, "attention_layers", None) or []
        window = getattr(cfg, "window_size", None)
        if "local" not in kinds or not isinstance(window, int) or self.max_seq_len <= window:
            return
        which = "max_seq_len" if asked is not None else "its position limit"
        raise ConfigError(
            f"from_hf: {self.family}'s local attention layers index their window of {window} "
            f"by the number of keys, which ar's fixed-slot cache breaks beyond {window} slots "
            f"({which} is {self.max_seq_len}); pass from_hf(model, max_seq_len={window}) to "
            f"run it exactly up to {window} tokens"
        )

    # -- construction helpers ---------------------------------------------------------
    @staticmethod
    def _check_supported(cfg: Any, family: str) -> None:
        impl = getattr(cfg, "_attn_implementation", None) or "eager"
        if impl not in _MASKABLE_ATTENTION:
            raise ConfigError(
                f"from_hf: attention implementation {impl!r} does not take the explicit 4-D "
                f"masks the adapter needs; load the model with attn_implementation='sdpa' "
                f"(or call model.set_attn_implementation('sdpa'))"
            )
        if getattr(cfg, "attn_logit_softcapping", None) is not None and impl == "sdpa":
            raise ConfigError(
                f"from_hf: {family} soft-caps its attention scores (attn_logit_softcapping="
                f"{cfg.attn_logit_softcapping}), which transformers' sdpa attention cannot do; "
                f"call model.set_attn_implementation('eager') first"
            )
        if not isinstance(getattr(cfg, "num_hidden_layers", None), int):
            raise ConfigError(
                f"from_hf: {family}'s config has no num_hidden_layers: its layers are not one "
                f"stack of decoder layers over the tokens (e.g. BLT: a byte patcher, local "
                f"encoder and decoder around a global transformer), which the adapter's per-"
                f"layer KV cache needs; use a token-level decoder-only family (e.g. llama)"
            )
        odd = sorted({t for t in HFCausalLM._layer_types(cfg) if t not in (_FULL, _SLIDING)})
        if odd:
            raise ConfigError(
                f"from_hf: {family} has layers of type {odd}; the adapter runs full-attention "
                f"and sliding-window layers only (their keys and values live in ar's per-row "
                f"KV cache); use a family with attention layers only (e.g. llama, mistral)"
            )

    @staticmethod
    def _layer_types(cfg: Any) -> list[str]:
        """Each layer's attention kind, as transformers reads it (``config.layer_types``,
        else sliding for all when ``sliding_window`` is set, as Mistral's)."""
        n = int(cfg.num_hidden_layers)
        types = getattr(cfg, "layer_types", None)
        if types:
            return [str(t) for t in types]
        if getattr(cfg, "sliding_window", None) is not None:
            return [_SLIDING] * n
        if getattr(cfg, "attention_chunk_size", None) is not None:
            return ["chunked_attention"] * n
        return [_FULL] * n

    def _max_seq_len(self, cfg: Any, requested: int | None) -> int:
        """The config's position limit, or ALIBI_MAX_SEQ_LEN for an ALiBi model without
        one; ``requested`` may lower it."""
        limit = next(
            (int(v) for a in _POSITION_LIMITS if isinstance(v := getattr(cfg, a, None), int)),
            None,
        )
        if limit is None and requested is None:
            if not self._has_alibi(cfg):
                raise ConfigError(
                    f"from_hf: the {self.family} config names no position limit (none of "
                    f"{list(_POSITION_LIMITS)}); pass from_hf(model, max_seq_len=N)"
                )
            return ALIBI_MAX_SEQ_LEN
        if requested is None:
            return int(limit)  # type: ignore[arg-type]
        if requested < 1 or (limit is not None and requested > limit):
            raise ConfigError(
                f"from_hf: max_seq_len={requested} is outside [1, {limit}] (the {self.family} "
                f"config's position limit)"
            )
        return int(requested)

    @staticmethod
    def _has_alibi(cfg: Any) -> bool:
        return bool(getattr(cfg, "alibi", False)) or cfg.model_type in ("bloom", "mpt")

    def _keep_hidden(self, module: nn.Module, args: Any, output: Any) -> None:
        hidden = (
            output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", None)
        )
        self._hidden = hidden if isinstance(hidden, Tensor) else None

    def _probe_cache_shape(self) -> tuple[int, int]:
        """(KV heads, head dim) of every attention layer, read off one 1-token forward
        through a transformers DynamicCache (configs name them in family-specific ways:
        Falcon's multi-query, head_dim overrides)."""
        from transformers.cache_utils import CacheLayerMixin, DynamicCache

        ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        try:
            probe = DynamicCache(config=self.hf.config)
            with torch.no_grad():
                self._base(input_ids=ids, use_cache=True, **{self._cache_kwarg: probe})
        except Exception as e:
            raise ConfigError(
                f"from_hf: {self.family} does not run with a plain transformers KV cache "
                f"(a 1-token forward through DynamicCache failed: {type(e).__name__}: {e}); "
                f"the adapter needs attention layers that keep keys and values per token"
            ) from e
        if self._hidden is None:
            raise ConfigError(
                f"from_hf: the {self.family} decoder does not return its last hidden states "
                f"(a 1-token forward gave none), which the adapter returns with the logits"
            )
        self._hidden = None
        shapes = set()
        for i, layer in enumerate(probe.layers):
            if not isinstance(layer, CacheLayerMixin) or layer.keys is None or layer.values is None:
                raise ConfigError(
                    f"from_hf: {self.family} layer {i} stored no keys and values in a 1-token "
                    f"forward ({type(layer).__name__}): the family keeps no KV cache of its own "
                    f"there (none, or it reuses another layer's), which the adapter runs every "
                    f"strategy on; use a family whose layers each cache their own "
                    f"(e.g. gpt2 for learned absolute positions)"
                )
            shapes.add((tuple(layer.keys.shape[1::2]), tuple(layer.values.shape[1::2])))
        if len(probe.layers) != self.n_layers:
            raise ConfigError(
                f"from_hf: {self.family} keeps {len(probe.layers)} cache layers for its "
                f"{self.n_layers} decoder layers (e.g. layers run in recurrent loops, each loop "
                f"with its own keys and values); ar's StaticKVCache holds one per decoder "
                f"layer; use a family whose layers each run once (e.g. llama)"
            )
        if len(shapes) != 1:
            raise ConfigError(
                f"from_hf: {self.family} caches keys/values of shapes {sorted(shapes)} across "
                f"its layers; ar's StaticKVCache holds one (heads, head dim) for keys and "
                f"values in every layer"
            )
        ((k_shape, v_shape),) = shapes
        if k_shape != v_shape:
            raise ConfigError(
                f"from_hf: {self.family} keys have (heads, head dim) {k_shape} but values "
                f"{v_shape} (e.g. multi-head latent attention); ar's StaticKVCache holds one "
                f"shape for both; use a family with standard multi-head/grouped attention"
            )
        return int(k_shape[0]), int(k_shape[1])

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
                f"{self.max_seq_len} (from_hf's max_seq_len); use max_len <= "
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
        kwargs: dict[str, Any] = {
            "input_ids": tokens,
            "attention_mask": self._attention_masks(mask, q_offset, positions, T, S),
            "position_ids": positions,
            "use_cache": store is not None,
        }
        if store is not None:
            kwargs[self._cache_kwarg] = _hf_cache_view(store)
        self._hidden = None
        with self._alibi_over_slots():
            logits = self.hf(**kwargs).logits  # (B, T, V), with the family's own transforms
        hidden, self._hidden = self._hidden, None
        if hidden is None:  # pragma: no cover - every base model returns its hidden states
            raise ConfigError(f"from_hf: the {self.family} base model returned no hidden states")
        if store is not None and commit:
            store.commit(T)
        return ModelOutput(logits=logits, hidden=hidden)  # hidden (B, T, C)

    @contextmanager
    def _alibi_over_slots(self) -> Iterator[None]:
        """Bloom builds its ALiBi biases from a 2-D padding mask (``cumsum - 1``, the key's
        slot when no slot is padding) and fails on the 4-D mask the adapter passes: for the
        call, its ``build_alibi_tensor`` gets the (B, 1, T, S) mask and builds the same
        biases over the S key slots, ``slope_h * j`` (padding is the 4-D mask's job)."""
        if not self._alibi_from_2d:
            yield
            return
        base: Any = self._base
        original = base.build_alibi_tensor

        def over_slots(attention_mask: Tensor, num_heads: int, dtype: torch.dtype) -> Tensor:
            B, S = attention_mask.shape[0], attention_mask.shape[-1]
            ones = torch.ones(B, S, dtype=torch.long, device=attention_mask.device)
            return original(ones, num_heads, dtype)  # (B * H, 1, S)

        base.build_alibi_tensor = over_slots
        try:
            yield
        finally:
            del base.build_alibi_tensor  # back to the class's method

    def _attention_masks(
        self, mask: masks.MaskSpec | None, q_offset: Tensor, positions: Tensor, T: int, S: int
    ) -> Tensor | dict[str, Tensor]:
        """The 4-D mask for HF: one tensor when every layer is of one kind, else a dict
        ``{layer type: mask}`` (what transformers' hybrid models take as given). A
        sliding-window layer also drops keys whose position is ``sliding_window`` or more
        before the query's: key slot j of row b has position j when committed
        (``j < q_offset[b]``) and ``positions[b, j - q_offset[b]]`` when written by this
        forward, so a tree branch sees the window it would see run alone."""
        allowed = self._allowed(mask, q_offset, T, S)  # (B, T, S) bool
        kinds = set(self.layer_types)
        out: dict[str, Tensor] = {}
        if _FULL in kinds:
            out[_FULL] = self._additive(allowed)
        if _SLIDING in kinds:
            w = self.sliding_window
            assert w is not None
            B = q_offset.shape[0]
            slots = torch.arange(S, device=q_offset.device).expand(B, S)  # (B, S)
            new = (slots >= q_offset[:, None]) & (slots < (q_offset + T)[:, None])
            idx = (slots - q_offset[:, None]).clamp(0, T - 1)
            key_pos = torch.where(new, positions.gather(1, idx), slots)  # (B, S)
            near = positions[:, :, None] - key_pos[:, None, :] < w  # (B, T, S)
            out[_SLIDING] = self._additive(allowed & near)
        return next(iter(out.values())) if len(out) == 1 else out

    def _additive(self, allowed: Tensor) -> Tensor:
        """(B, T, S) bool -> (B, 1, T, S) additive float mask (0 or the dtype's minimum)."""
        blocked = torch.finfo(self.dtype).min
        zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
        return torch.where(allowed, zero, blocked)[:, None]

    def _allowed(self, mask: masks.MaskSpec | None, q_offset: Tensor, T: int, S: int) -> Tensor:
        """(B, T, S) bool: slot j is visible to query i of row b iff
        ``j < q_offset[b] + T`` and ``mask`` allows (q_offset[b] + i, j)."""
        spec = self._causal if mask is None else mask
        B, device = q_offset.shape[0], q_offset.device
        # keys past the longest row are never visible: build the dense mask up to there
        # only (masks with a fixed length, e.g. tree, are defined up to that point)
        K = int((q_offset + T).max())
        allowed = spec.to_dense(T, K, q_offset=q_offset, batch_size=B, device=device)  # (B, T, K)
        slots = torch.arange(K, device=device)[None, None, :]  # (1, 1, K)
        allowed = allowed & (slots < (q_offset + T)[:, None, None])
        return torch.nn.functional.pad(allowed, (0, S - K), value=False)  # (B, T, S)

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
