"""``generate()`` and the built-in decoding strategies ``greedy`` and ``sample``.

The loop is gpt-fast's chain (PyTorch blog "Accelerating Generative AI with PyTorch II:
GPT, Fast", 2023), kept visible:

    prefill -> decode_one_token -> decode_n_tokens

over a :class:`~ar_core.cache.StaticKVCache` allocated once. ``compile=True`` compiles
the one-token decode step at the call site (``torch.compile``; on CUDA with CUDA graphs,
"reduce-overhead").

Ragged prompts are right-padded: ``input_ids`` (B, T) with ``prompt_lengths`` (B,) (or an
``attention_mask`` of ones followed by zeros). The prefill writes the whole padded block
and commits only each row's prompt, so a row's padding is overwritten by its own next
tokens. Every row gets exactly ``max_new_tokens`` new tokens; after its EOS a row emits
``pad_token_id``. ``sequences`` is (B, max(prompt_lengths) + max_new_tokens): row b is its
prompt, its new tokens, then ``pad_token_id``.

Strategies are plugins (``register_strategies``): ``fn(model, input_ids, config, *,
prompt_lengths, streamer, **kwargs) -> GenerationResult``. Models follow the protocol
of ``docs/design/contracts.md`` (``forward``, ``new_cache``, ``vocab_size``,
``max_seq_len``).

Notation: B rows, T prompt length (padded), N max_new_tokens, V vocabulary.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from ar_core import registry
from ar_core.errors import ConfigError, InputError
from ar_core.sampling import (
    LogitsProcessor,
    RepetitionPenalty,
    apply_processors,
    build_processors,
    check_finite_rows,
    logits_to_probs,
    multinomial_sample_one_no_sync,
)

__all__ = [
    "GenerationConfig",
    "GenerationResult",
    "GenerationStats",
    "Streamer",
    "assemble_sequences",
    "decode_n_tokens",
    "decode_one_token",
    "generate",
    "greedy",
    "prefill",
    "sample_strategy",
]


class GenerationConfig(BaseModel):
    """How many tokens to generate and how to pick them (flat, validated)."""

    model_config = ConfigDict(extra="forbid")

    # new tokens per row, exactly (rows that finish early are padded)
    max_new_tokens: int = Field(default=32, ge=0)
    # 1.0 = the model's distribution; 0 = argmax (the `sample` strategy becomes greedy)
    temperature: float = Field(default=1.0, ge=0)
    # None switches each filter off: sampling from the full distribution is the default
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    typical_p: float | None = Field(default=None, gt=0, le=1)
    # 1.0 = no penalty (CTRL suggests 1.2)
    repetition_penalty: float = Field(default=1.0, gt=0)
    # None = never stop early; a list for models with several end tokens (Llama-3)
    eos_token_id: int | list[int] | None = None
    # what finished rows emit and what pads `sequences`; 0 is a valid id of any vocabulary
    pad_token_id: int = Field(default=0, ge=0)
    # None draws a seed from torch's global RNG (so torch.manual_seed makes runs repeatable)
    seed: int | None = None

    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return (
            [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)
        )


@dataclass
class GenerationStats:
    """Counters of one ``generate`` call (speculative strategies fill the draft fields)."""

    target_forward_passes: int = 0
    draft_forward_passes: int = 0
    tokens_generated: int = 0  # new tokens over all rows, EOS included, padding excluded
    accepted_lengths: list[int] = field(default_factory=list)  # tokens accepted per step
    wall_seconds: float = 0.0

    @property
    def mean_accepted_length(self) -> float:
        n = len(self.accepted_lengths)
        return sum(self.accepted_lengths) / n if n else 0.0


@dataclass
class GenerationResult:
    """``sequences`` (B, max prompt length + max_new_tokens) and the ``stats``."""

    sequences: Tensor
    stats: GenerationStats
    prompt_lengths: Tensor | None = None  # (B,), where each row's new tokens start


class Streamer(Protocol):
    """Receives accepted tokens in order: ``put`` (B, n) tensors, then ``end()``."""

    def put(self, tokens: Tensor) -> None: ...

    def end(self) -> None: ...


# -- generate() ---------------------------------------------------------------------------


def _prompt_lengths(
    input_ids: Tensor, attention_mask: Tensor | None, prompt_lengths: Tensor | Sequence[int] | None
) -> Tensor:
    B, T = input_ids.shape
    device = input_ids.device
    if attention_mask is not None and prompt_lengths is not None:
        raise InputError("pass attention_mask or prompt_lengths, not both")
    if attention_mask is not None:
        if attention_mask.shape != (B, T):
            raise InputError(
                f"attention_mask must have the shape of input_ids {(B, T)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        am = attention_mask.to(device=device, dtype=torch.long)
        lengths = am.sum(-1)
        expected = (torch.arange(T, device=device)[None, :] < lengths[:, None]).long()
        if not torch.equal(am, expected):
            row = int((am != expected).any(-1).nonzero()[0, 0])
            raise InputError(
                f"attention_mask row {row} is not right-padded (ones, then zeros); ar "
                f"expects right padding: move the padding of left-padded prompts to the right"
            )
        return lengths
    if prompt_lengths is None:
        return torch.full((B,), T, dtype=torch.long, device=device)
    lengths = torch.as_tensor(prompt_lengths, dtype=torch.long, device=device)
    if lengths.shape != (B,):
        raise InputError(f"prompt_lengths must have shape ({B},), got {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise InputError(
            f"prompt_lengths must be in [1, {T}] (the padded prompt length), got {lo if lo < 1 else hi}"
        )
    return lengths


def generate(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig | None = None,
    strategy: str = "greedy",
    streamer: Streamer | None = None,
    attention_mask: Tensor | None = None,
    prompt_lengths: Tensor | Sequence[int] | None = None,
    **kwargs: Any,
) -> GenerationResult:
    """Generate ``config.max_new_tokens`` tokens after each prompt with ``strategy``
    (a name in ``ar_core.registry.strategies``); ``kwargs`` go to the strategy."""
    config = GenerationConfig() if config is None else config
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or input_ids.dtype != torch.long:
        got = (
            f"shape {tuple(input_ids.shape)} dtype {input_ids.dtype}"
            if isinstance(input_ids, Tensor)
            else type(input_ids).__name__
        )
        raise InputError(f"input_ids must be a (B, T) long tensor, got {got}")
    if input_ids.shape[1] == 0:
        raise InputError("input_ids must hold at least one prompt token per row")
    lengths = _prompt_lengths(input_ids, attention_mask, prompt_lengths)
    fn = registry.strategies.get(strategy)
    return fn(model, input_ids, config, prompt_lengths=lengths, streamer=streamer, **kwargs)


# -- the loop -----------------------------------------------------------------------------


def prefill(model: Any, input_ids: Tensor, cache: Any, prompt_lengths: Tensor) -> Tensor:
    """Run the padded prompts (B, T), commit each row's own length; logits of each row's
    last prompt token: (B, V)."""
    logits = model(input_ids, cache=cache, commit=False).logits  # (B, T, V)
    cache.commit(prompt_lengths)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return logits[rows, prompt_lengths - 1]  # (B, V)


def decode_one_token(model: Any, tokens: Tensor, cache: Any) -> Tensor:
    """One decode step: tokens (B,) -> next-token logits (B, V); entries stay pending
    (the caller commits, outside any compiled region)."""
    return model(tokens[:, None], cache=cache, commit=False).logits[:, -1]


Picker = Callable[[Tensor, Tensor], Tensor]  # (logits (B, V), history (B, L)) -> (B,)


def decode_n_tokens(
    step: Callable[[Any, Tensor, Any], Tensor],
    model: Any,
    logits: Tensor,
    cache: Any,
    *,
    n: int,
    pick: Picker,
    history: Tensor,
    eos_ids: Tensor,
    pad_token_id: int,
    streamer: Streamer | None,
    stats: GenerationStats,
) -> Tensor:
    """Pick ``n`` tokens, one decode step each; returns them as (B, n).

    ``history`` (B, L + n) holds the tokens so far (-1 = unused slot; the repetition
    penalty reads it); ``logits`` (B, V) are those of the last prompt token.
    """
    B = logits.shape[0]
    out = torch.full((B, n), pad_token_id, dtype=torch.long, device=logits.device)
    finished = torch.zeros(B, dtype=torch.bool, device=logits.device)
    end = history.shape[1] - n  # next free history column, shared by all rows
    watch_eos = eos_ids.numel() > 0
    for i in range(n):
        token = pick(logits, history)  # (B,)
        token = torch.where(finished, pad_token_id, token)
        out[:, i] = token
        history[:, end + i] = torch.where(finished, -1, token)
        stats.tokens_generated += B if not watch_eos else int((~finished).sum())
        stats.accepted_lengths.append(1)
        if streamer is not None:
            streamer.put(token[:, None])
        if watch_eos:
            finished |= torch.isin(token, eos_ids)
            if bool(finished.all()):
                break
        if i + 1 < n:
            logits = step(model, token, cache)  # (B, V)
            cache.commit(1)
            stats.target_forward_passes += 1
    return out


# model -> {(batch, device): (compiled step, cache)}: compiled once, reused by every call
_COMPILED: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], tuple[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _compiled_setup(model: Any, batch_size: int, device: torch.device) -> tuple[Any, Any]:
    """A compiled :func:`decode_one_token` and a static cache of ``max_seq_len`` entries,
    built once per (model, batch size, device) and reused by later calls (gpt-fast's
    ``setup_caches``): shapes and addresses stay fixed, so nothing recompiles and CUDA
    graphs (``mode="reduce-overhead"`` on CUDA) are recorded once."""
    per_model = _COMPILED.setdefault(model, {})
    key = (batch_size, str(device))
    if key not in per_model:
        cache = model.new_cache(batch_size, max_len=model.max_seq_len)
        if device.type == "cuda":  # CUDA graphs need the cache at fixed addresses
            for t in (*getattr(cache, "k", ()), *getattr(cache, "v", ()), cache.lengths):
                torch._dynamo.mark_static_address(t)
            step = torch.compile(decode_one_token, mode="reduce-overhead")
        else:
            step = torch.compile(decode_one_token)
        per_model[key] = (step, cache)
    step, cache = per_model[key]
    cache.reset()
    return step, cache


def _model_device(model: Any, input_ids: Tensor) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else input_ids.device


def _run(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    prompt_lengths: Tensor,
    streamer: Streamer | None,
    pick: Picker,
    compile: bool,
) -> GenerationResult:
    """Shared body of ``greedy`` and ``sample``."""
    start = time.perf_counter()
    B, T = input_ids.shape
    N = config.max_new_tokens
    max_prompt = int(prompt_lengths.max())
    # the prefill writes T entries; row b then writes up to L_b + N - 1
    cache_len = max(T, max_prompt + N - 1)
    if cache_len > model.max_seq_len:
        raise InputError(
            f"prompt length {max_prompt} + max_new_tokens {N} needs {max_prompt + N - 1} "
            f"positions (padded prompt: {T}) but the model's max_seq_len is "
            f"{model.max_seq_len}; shorten the prompt or lower max_new_tokens"
        )
    for eos in config.eos_ids():
        if not 0 <= eos < model.vocab_size:
            raise ConfigError(
                f"eos_token_id {eos} is outside the vocabulary [0, {model.vocab_size})"
            )
    stats = GenerationStats()
    device = input_ids.device
    eos_ids = torch.tensor(config.eos_ids(), dtype=torch.long, device=device)
    # history: prompts (padding as -1) then the new tokens
    cols = torch.arange(T, device=device)[None, :]
    history = torch.full((B, T + N), -1, dtype=torch.long, device=device)
    history[:, :T] = torch.where(cols < prompt_lengths[:, None], input_ids, -1)
    new = torch.empty((B, 0), dtype=torch.long, device=device)
    with torch.no_grad():
        if N > 0:
            step: Callable[[Any, Tensor, Any], Tensor] = decode_one_token
            if compile:
                step, cache = _compiled_setup(model, B, _model_device(model, input_ids))
            else:
                cache = model.new_cache(B, max_len=cache_len)
            logits = prefill(model, input_ids, cache, prompt_lengths)
            stats.target_forward_passes += 1
            new = decode_n_tokens(
                step,
                model,
                logits,
                cache,
                n=N,
                pick=pick,
                history=history,
                eos_ids=eos_ids,
                pad_token_id=config.pad_token_id,
                streamer=streamer,
                stats=stats,
            )
    if streamer is not None:
        streamer.end()
    sequences = assemble_sequences(input_ids, prompt_lengths, new, config.pad_token_id, n=N)
    stats.wall_seconds = time.perf_counter() - start
    return GenerationResult(sequences=sequences, stats=stats, prompt_lengths=prompt_lengths)


def assemble_sequences(
    input_ids: Tensor,
    prompt_lengths: Tensor,
    new: Tensor,
    pad_token_id: int,
    n: int | None = None,
) -> Tensor:
    """The ``sequences`` layout of :func:`generate`: row b is its prompt
    ``input_ids[b, :prompt_lengths[b]]``, its ``n`` new tokens, then ``pad_token_id``.

    ``input_ids`` (B, T) right-padded prompts, ``prompt_lengths`` (B,), ``new`` (B, m) each
    row's new tokens; ``n`` defaults to m, and when m < n (every row finished early)
    ``new`` is padded to n columns with ``pad_token_id``. Returns (B, max(prompt_lengths) + n).
    """
    B, T = input_ids.shape
    if n is None:
        n = new.shape[1]
    width = int(prompt_lengths.max()) + n
    seq = torch.full((B, width), pad_token_id, dtype=torch.long, device=input_ids.device)
    cols = torch.arange(T, device=input_ids.device)[None, :]
    keep = min(T, width)
    prompts = torch.where(cols < prompt_lengths[:, None], input_ids, pad_token_id)
    seq[:, :keep] = prompts[:, :keep]
    if new.shape[1] < n:  # every row finished early
        new = torch.cat([new, new.new_full((B, n - new.shape[1]), pad_token_id)], dim=1)
    if n:
        index = prompt_lengths[:, None] + torch.arange(n, device=input_ids.device)[None, :]
        seq.scatter_(1, index, new)  # (B, n) into (B, width)
    return seq


def _penalty(config: GenerationConfig) -> list[LogitsProcessor]:
    return (
        [RepetitionPenalty(config.repetition_penalty)] if config.repetition_penalty != 1.0 else []
    )


def greedy(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor | None = None,
    streamer: Streamer | None = None,
    compile: bool = False,
) -> GenerationResult:
    """Strategy ``greedy``: the argmax at every step (after the repetition penalty, if any)."""
    processors = _penalty(config)
    lengths = _prompt_lengths(input_ids, None, prompt_lengths)

    def pick(logits: Tensor, history: Tensor) -> Tensor:
        return apply_processors(processors, logits, history).argmax(-1)

    return _run(model, input_ids, config, lengths, streamer, pick, compile)


def sample_strategy(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor | None = None,
    streamer: Streamer | None = None,
    compile: bool = False,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``sample``: processors from the config, then one categorical draw per row
    with an explicit generator (seeded from ``config.seed``)."""
    processors = build_processors(config)
    lengths = _prompt_lengths(input_ids, None, prompt_lengths)
    if generator is None:
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    greedy_only = config.temperature == 0

    def pick(logits: Tensor, history: Tensor) -> Tensor:
        logits = apply_processors(processors, logits, history)
        check_finite_rows(logits)
        if greedy_only:
            return logits.argmax(-1)
        return multinomial_sample_one_no_sync(logits_to_probs(logits), generator)

    return _run(model, input_ids, config, lengths, streamer, pick, compile)
