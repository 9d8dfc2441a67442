"""The contracts every package of ar is written against (``docs/design/contracts.md``).

Three of them connect models, caches and decoding strategies:

* :class:`KVCache` – what a model writes keys and values into and a strategy rolls back:
  :class:`~ar_core.cache.StaticKVCache` is the implementation; adapters (a Hugging Face
  model's cache, ar-vision's causal-LM view of a step model) keep the same surface.
* :class:`CausalLM` – the model a strategy drives: ``forward(tokens, positions, cache,
  mask, commit) -> ModelOutput`` whose logits at index ``i`` predict token ``i + 1``;
  :class:`~ar_core.model.Transformer`, ``ar_text.from_hf(...)`` and ar-vision's
  ``CausalLMAdapter`` follow it.
* :class:`Strategy` – a decoding strategy registered under ``register_strategies``.

And three connect the step loop of :mod:`ar_core.steps` (ARCHITECTURE.md, "The one
idea"):

* :class:`StepRunner` – one network call per step (KV-cached, or the uncached reference);
* :class:`LogitsTransform` – per-step changes to a step's logits (classifier-free
  guidance, constraints) before sampling;
* :class:`StepSampler` – draws a step's values from the model's output (categorical in
  ar-core; later packages register iterative-denoise, flow and mixture samplers).

The Protocols are ``runtime_checkable`` so tests and adapters can assert conformance;
``isinstance`` only checks that the attributes exist, the tests check behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ar_core.generation import GenerationConfig, GenerationResult, Streamer
    from ar_core.masks import MaskSpec
    from ar_core.model import ModelOutput

__all__ = [
    "CausalLM",
    "KVCache",
    "LogitsTransform",
    "StepRunner",
    "StepSampler",
    "Strategy",
]


@runtime_checkable
class KVCache(Protocol):
    """Per-row committed lengths over preallocated buffers.

    ``lengths`` (B,) long: committed entries per row. A forward writes T pending entries
    per row after them; ``commit(n)`` makes ``n`` (or ``n[b]``) of them context;
    ``crop(n)`` keeps at most ``n`` committed entries (speculative rollback);
    ``move_entries(src, dst)`` copies entries between slots of each row (both (B, m));
    ``fork(index)`` copies rows into an independent cache; ``reset()`` forgets
    everything. ``max_length()`` is a host-side bound of ``lengths.max()``.
    """

    lengths: Tensor
    batch_size: int
    max_len: int

    def commit(self, n: int | Tensor) -> None: ...

    def crop(self, n: int | Tensor) -> None: ...

    def reset(self) -> None: ...

    def max_length(self) -> int: ...

    def move_entries(self, src: Tensor, dst: Tensor) -> None: ...

    def fork(self, index: Tensor | None = None) -> KVCache: ...


@runtime_checkable
class CausalLM(Protocol):
    """The model contract of ``generate()`` and every strategy.

    ``forward`` runs T new tokens per row (B, T) at RoPE ``positions`` (default: right
    after each row's committed cache entries) under ``mask`` (default causal) and returns
    ``ModelOutput(logits (B, T, V), hidden)``; with ``commit=False`` the new entries stay
    pending. ``new_cache(batch_size, max_len)`` allocates a :class:`KVCache`.
    """

    vocab_size: int
    max_seq_len: int

    def __call__(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        mask: MaskSpec | None = None,
        commit: bool = True,
    ) -> ModelOutput: ...

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache: ...


@runtime_checkable
class Strategy(Protocol):
    """A decoding strategy: ``fn(model, input_ids, config, *, prompt_lengths, streamer,
    **kwargs) -> GenerationResult``; ``prompt_lengths`` (B,) is always given by
    ``generate()`` (right-padded prompts)."""

    def __call__(
        self,
        model: CausalLM,
        input_ids: Tensor,
        config: GenerationConfig,
        *,
        prompt_lengths: Tensor | None = None,
        streamer: Streamer | None = None,
    ) -> GenerationResult: ...


@runtime_checkable
class StepRunner(Protocol):
    """One network call per step of a plan.

    ``predict(step)`` returns the model's output for the positions ``step`` (m,) of the
    next step: ``ModelOutput(logits (R, m, V), hidden (R, m, C))``; ``commit(step,
    values)`` makes the values drawn for that step (R, m) context for the later steps.
    ``calls`` counts network calls.
    """

    calls: int

    def predict(self, step: Tensor) -> ModelOutput: ...

    def commit(self, step: Tensor, values: Tensor) -> None: ...


@runtime_checkable
class LogitsTransform(Protocol):
    """Changes one step's logits before sampling: ``(logits (R, m, V), *, index, step,
    values) -> (R', m, V)``; ``index`` is the step's number in the plan, ``step`` its
    positions (m,), ``values`` (B, N) what was drawn so far (-1 = not yet). A transform
    may merge rows (classifier-free guidance turns [cond; uncond] into B rows)."""

    def __call__(self, logits: Tensor, *, index: int, step: Tensor, values: Tensor) -> Tensor: ...


@runtime_checkable
class StepSampler(Protocol):
    """Draws the values of one step from the model's output for it.

    ``sample(out, generator)`` with ``out.logits`` (B, m, V) (after the transforms) and
    ``out.hidden`` (R, m, C) returns (B, m) token ids (or (B, m, d) continuous values for
    the heads of ar-diffusion). ``name`` is the registry name.
    """

    name: str

    def sample(self, out: ModelOutput, generator: torch.Generator | None) -> Tensor: ...


def check_protocol(obj: object, protocol: type, what: str, attrs: Sequence[str] = ()) -> None:
    """Raise ``ConfigError`` naming the missing members when ``obj`` does not follow
    ``protocol`` (``attrs``: the members to name; default: the Protocol's own)."""
    from ar_core.errors import ConfigError

    if isinstance(obj, protocol):
        return
    names = list(attrs) or [
        n for n in getattr(protocol, "__protocol_attrs__", ()) if not n.startswith("_")
    ]
    missing = sorted(n for n in names if not hasattr(obj, n))
    raise ConfigError(
        f"{what} ({type(obj).__name__}) does not follow ar_core.protocols.{protocol.__name__}: "
        f"missing {', '.join(missing) or 'members'}; see docs/design/contracts.md"
    )
