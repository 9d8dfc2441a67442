"""``generate()`` and the built-in decoding strategies ``greedy`` and ``sample``.

The loop is gpt-fast's chain (PyTorch blog "Accelerating Generative AI with PyTorch II:
GPT, Fast", 2023), kept visible:

    prefill -> decode_one_token -> decode_n_tokens

over a :class:`~ar_core.cache.StaticKVCache` allocated once. ``compile=True`` compiles
the one-token decode step at the call site (``torch.compile``; on CUDA with CUDA graphs,
"reduce-overhead"). For plain greedy decoding (no repetition penalty, no custom pick) the
compiled step is :func:`decode_one_token_greedy`: forward, argmax and the cache commit in
one graph, as in gpt-fast, so a step is one call. The loop keeps its counters on the
device: on CUDA it reads one value back (have all rows hit EOS?) every
``EOS_CHECK_EVERY`` steps, not one per token.

Ragged prompts are right-padded: ``input_ids`` (B, T) with ``prompt_lengths`` (B,) (or an
``attention_mask`` of ones followed by zeros). The prefill writes the whole padded block
and commits only each row's prompt, so a row's padding is overwritten by its own next
tokens. Every row gets exactly ``max_new_tokens`` new tokens; after its EOS a row emits
``pad_token_id``. ``sequences`` is (B, max(prompt_lengths) + max_new_tokens): row b is its
prompt, its new tokens, then ``pad_token_id``.

Strategies are plugins (``register_strategies``, :class:`~ar_core.protocols.Strategy`):
``fn(model, input_ids, config, *, prompt_lengths, streamer, **kwargs) -> GenerationResult``.
Models follow :class:`~ar_core.protocols.CausalLM` (``forward``, ``new_cache``,
``vocab_size``, ``max_seq_len``).

The scaffolding every strategy shares is public here, so no strategy repeats it:
:func:`prefill` (with positions and a mask), :func:`cache_budget`, :func:`check_eos`,
:func:`make_generator`, :func:`positive_int`, :func:`reject_repetition_penalty`,
:class:`TokenPicker` (the one pick rule: greedy, or the config's processors and a
categorical draw), :func:`decode_with_pick` (the greedy/sample loop with another pick
rule) and :class:`Rows` (per-row bookkeeping over a ragged batch, EOS,
streaming, stats, timing and the final :class:`GenerationResult`).

Notation: B rows, T prompt length (padded), N max_new_tokens, V vocabulary.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from ar_core import masks, registry
from ar_core.cache import StaticKVCache
from ar_core.errors import ConfigError, InputError, validation_message
from ar_core.masks import MaskSpec
from ar_core.protocols import CausalLM, KVCache
from ar_core.sampling import (
    FiniteWatch,
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
    "ModelPass",
    "Rows",
    "Streamer",
    "TokenPicker",
    "assemble_sequences",
    "cache_budget",
    "check_eos",
    "decode_n_tokens",
    "decode_one_token",
    "decode_one_token_greedy",
    "decode_with_pick",
    "generate",
    "greedy",
    "make_generator",
    "pass_width",
    "positive_int",
    "prefill",
    "reject_repetition_penalty",
    "sample_strategy",
]


class GenerationConfig(BaseModel):
    """How many tokens to generate and how to pick them (flat, validated: a bad value is a
    one-line ConfigError naming the field)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "GenerationConfig")) from None

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
    if input_ids.shape[0] == 0:
        raise InputError("input_ids holds no rows (an empty batch); pass at least one prompt")
    if input_ids.shape[1] == 0:
        raise InputError("input_ids must hold at least one prompt token per row")
    if not isinstance(config, GenerationConfig):
        raise ConfigError(
            f"config must be a GenerationConfig, got {type(config).__name__}; build one with "
            f"GenerationConfig(max_new_tokens=...)"
        )
    lengths = _prompt_lengths(input_ids, attention_mask, prompt_lengths)
    fn = registry.strategies.get(strategy)
    try:
        return fn(model, input_ids, config, prompt_lengths=lengths, streamer=streamer, **kwargs)
    except TypeError as exc:
        # a keyword the strategy does not take fails at the call, before any work
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if bad is None or bad.group(1) not in kwargs:
            raise
        raise ConfigError(
            f"strategy {strategy!r} takes no argument {bad.group(1)!r}; check the spelling "
            f"(help(ar_core.registry.strategies.get({strategy!r})) lists what it takes)"
        ) from None


# -- the loop -----------------------------------------------------------------------------


def prefill(
    model: CausalLM,
    input_ids: Tensor,
    cache: KVCache,
    prompt_lengths: Tensor,
    *,
    positions: Tensor | None = None,
    mask: MaskSpec | None = None,
    all_logits: bool = False,
) -> Tensor:
    """Run the padded prompts (B, T) at RoPE ``positions`` (default: ``0..T-1``) under
    ``mask`` (default: the model's causal mask) and commit each row's own length.

    Returns the logits of each row's last prompt token (B, V), or with ``all_logits``
    every position's (B, T, V). Rows are right-padded: the padding is written but not
    committed, so each row's next tokens overwrite it.
    """
    out = model(input_ids, positions=positions, cache=cache, mask=mask, commit=False)
    cache.commit(prompt_lengths)
    if all_logits:
        return out.logits  # (B, T, V)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return out.logits[rows, prompt_lengths - 1]  # (B, V)


def cache_budget(
    models: CausalLM | Sequence[CausalLM],
    input_ids: Tensor,
    prompt_lengths: Tensor,
    n_new: int,
    *,
    extra: int = 0,
    extra_required: bool = True,
    fix: str = "shorten the prompt or lower max_new_tokens",
) -> int:
    """Cache slots for a decode of ``n_new`` tokens after right-padded prompts (B, T).

    A row's committed context holds at most prompt + ``n_new`` - 1 tokens before its last
    step, and a step writes up to ``extra`` slots more (draft tokens, a lookahead block).
    ``extra_required``: the extra slots must fit every model's ``max_seq_len`` (else an
    ``InputError`` naming ``fix``); otherwise they are capped by it (a strategy that
    shrinks its drafts near the end). The prefill's T entries always fit.
    """
    group = [models] if not isinstance(models, Sequence) else list(models)
    T = input_ids.shape[1]
    longest = int(prompt_lengths.max())
    need = max(T, longest + n_new - 1)
    limit = min(int(m.max_seq_len) for m in group)
    wanted = max(T, longest + n_new - 1 + extra) if extra_required else need
    if wanted > limit:
        slots = f" + {extra} extra slots" if extra_required and extra else ""
        raise InputError(
            f"prompt length {longest} + max_new_tokens {n_new}{slots} needs {wanted} "
            f"positions (padded prompt: {T}) but the model's max_seq_len is {limit}; {fix}"
        )
    return wanted if extra_required else min(need + extra, limit)


def check_eos(config: GenerationConfig, vocab_size: int) -> None:
    """``ConfigError`` when an ``eos_token_id`` lies outside ``[0, vocab_size)``."""
    for eos in config.eos_ids():
        if not 0 <= eos < vocab_size:
            raise ConfigError(f"eos_token_id {eos} is outside the vocabulary [0, {vocab_size})")


def make_generator(
    config: GenerationConfig, device: torch.device, generator: torch.Generator | None = None
) -> torch.Generator:
    """``generator`` if given, else one on ``device`` seeded from ``config.seed`` (or, when
    that is None, from torch's global RNG, so ``torch.manual_seed`` makes runs repeatable)."""
    if generator is not None:
        return generator
    seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
    return torch.Generator(device=device).manual_seed(seed)


def positive_int(value: Any, name: str, strategy: str, minimum: int = 1) -> int:
    """``value`` when it is an int >= ``minimum``, else a ``ConfigError`` naming both."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{strategy}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def reject_repetition_penalty(config: GenerationConfig, strategy: str) -> None:
    """Strategies that score many positions at once without per-position histories
    (Jacobi, lookahead, SJD, beam) refuse CTRL's penalty rather than apply it wrongly."""
    if config.repetition_penalty != 1.0:
        raise ConfigError(
            f"strategy {strategy!r} does not support repetition_penalty="
            f"{config.repetition_penalty}; set repetition_penalty=1.0 or use 'greedy'/'sample'"
        )


class TokenPicker:
    """The one rule that turns logits into tokens, shared by every strategy.

    Greedy (``do_sample=False``; the default when ``config.temperature == 0``): the argmax
    after the repetition penalty only. Sampling: every processor of the config
    (temperature, top-k/p, min-p, typical, penalty), then one categorical draw per row
    from ``generator`` (seeded from ``config.seed`` when not given). Processors see each
    position's own history (the sequence so far plus the draft tokens before it), so the
    repetition penalty stays exact inside a draft. History columns holding -1 are unused.
    """

    def __init__(
        self,
        config: GenerationConfig,
        do_sample: bool | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.greedy = not (config.temperature > 0 if do_sample is None else do_sample)
        self.processors: list[LogitsProcessor]
        if self.greedy:
            self.processors = _penalty(config)
            self.generator = generator
        else:
            self.processors = build_processors(config)
            self.generator = make_generator(config, torch.device(device), generator)

    def process(self, logits: Tensor, seq: Tensor, draft: Tensor | None = None) -> Tensor:
        """Processed logits (B, t, V); position i sees ``seq`` plus ``draft[:, :i]``."""
        if not self.processors:
            return logits
        out = []
        for i in range(logits.shape[1]):
            history = seq if draft is None or i == 0 else torch.cat([seq, draft[:, :i]], 1)
            step = apply_processors(self.processors, logits[:, i], history)
            if not self.greedy:
                check_finite_rows(step)
            out.append(step)
        return torch.stack(out, 1)

    def probs(self, logits: Tensor) -> Tensor:
        """The config's processors, then softmax: logits (..., V) -> probs (..., V) float32
        (no history: for strategies that refuse the repetition penalty)."""
        shape = logits.shape
        flat = apply_processors(self.processors, logits.reshape(-1, shape[-1]))
        if not self.greedy:
            check_finite_rows(flat)
        return logits_to_probs(flat).reshape(shape)

    def pick(self, logits: Tensor, seq: Tensor, draft: Tensor | None = None) -> Tensor:
        """One token per row from (B, V) logits after the tokens ``seq`` (+ ``draft``)."""
        token, _ = self.pick_with_probs(logits, seq, draft)
        return token

    def pick_with_probs(
        self, logits: Tensor, seq: Tensor, draft: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(token (B,), the probabilities it was drawn from (B, V), or None when greedy)."""
        if not self.processors:  # no history needed: skip the concatenation
            processed = logits
        else:
            history = seq if draft is None else torch.cat([seq, draft], 1)
            processed = self.process(logits[:, None], history)[:, 0]  # (B, V)
        if self.greedy:
            return processed.argmax(-1), None
        probs = logits_to_probs(processed)
        return multinomial_sample_one_no_sync(probs, self.generator), probs


class Rows:
    """The bookkeeping of one decode over B rows that may advance by different counts.

    Owns what every strategy would otherwise repeat: the timer and the
    :class:`GenerationStats`, each row's new tokens (``new_tokens`` (B, N),
    ``pad_token_id`` after its end), ``n_new`` and ``length`` (prompt + new) per row,
    EOS and ``max_new_tokens`` (``finished``), streaming in order, and the final
    :class:`GenerationResult` (:meth:`finish`). With ``scratch`` (an int), ``seq`` (B, W)
    also holds each row's tokens so far (-1 marks unused slots) with ``scratch`` spare
    columns for draft tokens. ``stats.accepted_lengths`` gets one entry per (step, row
    active at the start of the step).

    Non-finite logits: a strategy passes the logits of every target-model call to
    :meth:`watch` (a device-side flag, no sync); :meth:`finish` raises an ``InputError``
    naming the first decode step (0 = the prefill) and row whose logits held NaN or inf.

    Streaming: a :class:`Streamer` receives (B, n) columns; a column is streamed once every
    unfinished row has produced it (finished rows contribute ``pad_token_id``). The
    concatenated stream equals the new tokens of ``sequences``.
    """

    def __init__(
        self,
        input_ids: Tensor,
        prompt_lengths: Tensor,
        config: GenerationConfig,
        streamer: Streamer | None = None,
        stats: GenerationStats | None = None,
        scratch: int | None = None,
    ) -> None:
        self.start_time = time.perf_counter()
        B, T = input_ids.shape
        N = config.max_new_tokens
        device = input_ids.device
        self.input_ids, self.prompt_lengths = input_ids, prompt_lengths
        self.N, self.pad, self.streamer = N, config.pad_token_id, streamer
        self.stats = GenerationStats() if stats is None else stats
        self.eos = torch.tensor(config.eos_ids(), dtype=torch.long, device=device)
        self.rows = torch.arange(B, device=device)
        self._seq: Tensor | None = None
        if scratch is not None:
            cols = torch.arange(T, device=device)[None, :]
            self._seq = torch.full((B, T + N + scratch), -1, dtype=torch.long, device=device)
            self._seq[:, :T] = torch.where(cols < prompt_lengths[:, None], input_ids, -1)
        self.length = prompt_lengths.clone()  # (B,)
        self.n_new = torch.zeros(B, dtype=torch.long, device=device)  # (B,)
        self.new_tokens = torch.full((B, N), self.pad, dtype=torch.long, device=device)
        self.finished = torch.full((B,), N == 0, dtype=torch.bool, device=device)
        self._streamed = 0
        self.finite = FiniteWatch(B, device)
        self._calls = 0  # target-model calls watched so far: the decode step of the next

    @property
    def seq(self) -> Tensor:
        """Each row's tokens so far (B, W); only with ``scratch``."""
        if self._seq is None:
            raise AttributeError("Rows(..., scratch=None) keeps no sequences")
        return self._seq

    def all_finished(self) -> bool:
        return bool(self.finished.all())

    def remaining(self) -> Tensor:
        """New tokens each row may still emit: (B,), 0 for finished rows."""
        return torch.where(self.finished, 0, self.N - self.n_new)

    def last(self) -> Tensor:
        """Each row's last token: (B,)."""
        return self.seq[self.rows, self.length - 1]

    def emit(self, tokens: Tensor, counts: Tensor) -> Tensor:
        """Append ``tokens[b, :counts[b]]`` (``tokens`` (B, k)) to each unfinished row b,
        cut after its first EOS (kept) and at ``max_new_tokens``; returns how many each
        row kept (B,), 0 for finished rows."""
        k = tokens.shape[1]
        steps = torch.arange(k, device=tokens.device)[None, :]  # (1, k)
        active = ~self.finished
        valid = (steps < counts[:, None]) & active[:, None]  # (B, k), a prefix per row
        valid &= self.n_new[:, None] + steps < self.N
        hit_eos = torch.zeros_like(active)
        if self.eos.numel():
            is_eos = torch.isin(tokens, self.eos) & valid  # (B, k)
            after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after
            valid &= ~after_eos
            hit_eos = is_eos.any(-1)
        kept = valid.sum(-1)  # (B,)
        b, j = valid.nonzero(as_tuple=True)
        if self._seq is not None:
            self._seq[b, self.length[b] + j] = tokens[b, j]
        self.new_tokens[b, self.n_new[b] + j] = tokens[b, j]
        self.length += kept
        self.n_new += kept
        self.finished |= hit_eos | (self.n_new >= self.N)
        self.stats.tokens_generated += int(kept.sum())
        self.stats.accepted_lengths.extend(kept[active].tolist())
        self._stream()
        return kept

    def watch(self, logits: Tensor, grouped: bool = False) -> None:
        """Record whether one target-model call's ``logits`` (B·k, ..., V) are finite for
        each unfinished row (``grouped``: the k copies of row b are rows b·k .. b·k + k - 1,
        as beams are; otherwise b, b + B, ...). No host sync; :meth:`finish` checks."""
        self.finite.update(logits, self._calls, active=~self.finished, grouped=grouped)
        self._calls += 1

    def retire_finished(self, cache: KVCache) -> None:
        """Finished rows keep riding along in the batch; cropping their cache to 0 keeps
        their writes inside it (their outputs are ignored)."""
        cache.crop(torch.where(self.finished, 0, cache.lengths))

    def _stream(self) -> None:
        if self.streamer is None:
            return
        live = self.n_new[~self.finished]
        frontier = int(live.min()) if live.numel() else self.N
        if frontier > self._streamed:
            self.streamer.put(self.new_tokens[:, self._streamed : frontier].clone())
            self._streamed = frontier

    def end(self) -> None:
        """Stream any columns not streamed yet (none once every row finished), then end."""
        if self.streamer is None:
            return
        if self._streamed < self.N:
            self.streamer.put(self.new_tokens[:, self._streamed :].clone())
            self._streamed = self.N
        self.streamer.end()

    def finish(self) -> GenerationResult:
        """Check the watched logits were finite, end the stream, assemble ``sequences`` and
        stop the timer."""
        self.finite.check()
        self.end()
        sequences = assemble_sequences(
            self.input_ids, self.prompt_lengths, self.new_tokens, self.pad, n=self.N
        )
        self.stats.wall_seconds = time.perf_counter() - self.start_time
        return GenerationResult(
            sequences=sequences, stats=self.stats, prompt_lengths=self.prompt_lengths
        )


def decode_one_token(model: Any, tokens: Tensor, cache: Any) -> Tensor:
    """One decode step: tokens (B,) -> next-token logits (B, V); entries stay pending
    (the caller commits, outside any compiled region)."""
    return model(tokens[:, None], cache=cache, commit=False).logits[:, -1]


def decode_one_token_greedy(model: Any, tokens: Tensor, cache: Any) -> tuple[Tensor, Tensor]:
    """One greedy decode step with the pick and the commit inside (compiled as one graph):
    tokens (B,) -> (the argmax next tokens (B,), their logits (B, V)); the cache's
    ``lengths`` advance by one on the device (its host-side bound is refreshed by the
    caller after the loop)."""
    logits = model(tokens[:, None], cache=cache, commit=False).logits[:, -1]  # (B, V)
    cache.lengths.add_(1)
    return logits.argmax(-1), logits


Picker = Callable[[Tensor, Tensor], Tensor]  # (logits (B, V), history (B, L)) -> (B,)
# steps between the EOS checks of decode_n_tokens on accelerators (each check is a sync)
EOS_CHECK_EVERY = 8


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
    watch: FiniteWatch | None = None,
    greedy_step: Callable[[Any, Tensor, Any], tuple[Tensor, Tensor]] | None = None,
) -> Tensor:
    """Pick ``n`` tokens, one decode step each; returns them as (B, n).

    ``history`` (B, L + n) holds the tokens so far (-1 = unused slot; the repetition
    penalty reads it); ``logits`` (B, V) are those of the last prompt token. ``watch``
    records non-finite logits of unfinished rows on the device (the caller checks it).
    ``greedy_step`` (e.g. a compiled :func:`decode_one_token_greedy`) replaces ``step``,
    ``pick`` and the commit when the pick is a plain argmax: it returns the next tokens
    with the logits and commits itself.
    """
    B = logits.shape[0]
    device = logits.device
    out = torch.full((B, n), pad_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    end = history.shape[1] - n  # next free history column, shared by all rows
    watch_eos = eos_ids.numel() > 0
    generated = torch.zeros((), dtype=torch.long, device=device)  # counted on the device
    # a CPU tensor read is no sync: check every step there (stop as soon as all finish)
    check_every = 1 if device.type == "cpu" else EOS_CHECK_EVERY
    picked: Tensor | None = None  # the next tokens a greedy_step already chose
    steps = 0
    for i in range(n):
        if watch is not None:
            watch.update(logits, i, active=~finished if watch_eos else None)
        token = pick(logits, history) if picked is None else picked  # (B,)
        if watch_eos:
            token = torch.where(finished, pad_token_id, token)
        out[:, i] = token
        history[:, end + i] = torch.where(finished, -1, token) if watch_eos else token
        generated += (~finished).sum() if watch_eos else B
        steps += 1
        if streamer is not None:
            streamer.put(token[:, None])
        if watch_eos:
            finished |= torch.isin(token, eos_ids)
            if (i + 1) % check_every == 0 and bool(finished.all()):
                break
        if i + 1 < n:
            if greedy_step is not None:
                picked, logits = greedy_step(model, token, cache)  # committed inside
            else:
                logits = step(model, token, cache)  # (B, V)
                cache.commit(1)
            stats.target_forward_passes += 1
    stats.tokens_generated += int(generated)  # one read, after the loop
    stats.accepted_lengths.extend([1] * steps)
    if greedy_step is not None and hasattr(cache, "set_lengths"):
        cache.set_lengths(cache.lengths)  # refresh the host-side bound the step skipped
    return out


# model -> {(batch, device, greedy, cache slots): (compiled step, cache)}: compiled once
_COMPILED: weakref.WeakKeyDictionary[Any, dict[tuple[int, str, bool, int], tuple[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)

# the smallest static cache of a compiled decode; larger ones double (few shapes, few
# compilations), so a short request does not attend over max_seq_len slots
MIN_COMPILED_CACHE = 256


def compiled_cache_len(needed: int, max_seq_len: int) -> int:
    """Slots of the static cache a compiled decode of ``needed`` positions uses: the next
    power of two >= max(needed, MIN_COMPILED_CACHE), at most ``max_seq_len``."""
    slots = MIN_COMPILED_CACHE
    while slots < needed:
        slots *= 2
    return min(slots, max_seq_len)


def _compiled_setup(
    model: Any, batch_size: int, device: torch.device, greedy: bool = False, needed: int = 0
) -> tuple[Any, Any]:
    """A compiled :func:`decode_one_token` (``greedy``: :func:`decode_one_token_greedy`)
    and a static cache of :func:`compiled_cache_len` slots for ``needed`` positions, built
    once per (model, batch size, device, kind, slots) and reused by later calls (gpt-fast's
    ``setup_caches``): shapes and addresses stay fixed, so nothing recompiles within a
    size and CUDA graphs (``mode="reduce-overhead"`` on CUDA) are recorded once."""
    per_model = _COMPILED.setdefault(model, {})
    slots = compiled_cache_len(needed, int(model.max_seq_len))
    key = (batch_size, str(device), greedy, slots)
    if key not in per_model:
        cache = model.new_cache(batch_size, max_len=slots)
        fn: Callable[..., Any] = decode_one_token_greedy if greedy else decode_one_token
        if device.type == "cuda":  # CUDA graphs need the cache at fixed addresses
            for t in (*getattr(cache, "k", ()), *getattr(cache, "v", ()), cache.lengths):
                torch._dynamo.mark_static_address(t)
            step = torch.compile(fn, mode="reduce-overhead")
        else:
            step = torch.compile(fn)
        per_model[key] = (step, cache)
    step, cache = per_model[key]
    cache.reset()
    return step, cache


def _model_pass(
    model: Any,
    tokens: Tensor,
    cache: Any,
    positions: Tensor | None = None,
    table: Tensor | None = None,
) -> Tensor:
    """``model(tokens, positions=positions, cache=cache, mask=..., commit=False).logits``:
    (B, T) -> (B, T, V); ``table`` (T, T) bool: the visibility inside the pass (after the
    committed context, :func:`ar_core.masks.table`), None = causal."""
    mask = None if table is None else masks.table(table, start=cache.lengths, name="pass")
    return model(tokens, positions=positions, cache=cache, mask=mask, commit=False).logits


# the compiled _model_pass (built on first use: importing ar_core compiles nothing)
_COMPILED_PASS: list[Callable[..., Tensor]] = []
# the graphs of it a process may hold (dynamo's recompile limit is raised to this)
COMPILED_PASS_GRAPHS = 64


def pass_width(n: int, widths: Sequence[int] = ()) -> int:
    """The padded width of an ``n``-token compiled pass: the smallest of ``widths`` (a
    strategy's usual widths, e.g. ``k + 1``, and 1 where one-token passes are common) that
    holds ``n``, else ``n`` itself when it is 1, else the next of 2, 3, 5, 9, 17, ...
    (2^i + 1): a loop whose widths vary compiles a few graphs, not one per width."""
    fits = [w for w in widths if w >= n]
    if fits:
        return min(fits)
    if n <= 1:
        return 1
    width = 2
    while width < n:
        width = 2 * width - 1
    return width


class ModelPass:
    """The cached forward a draft-and-verify loop runs: ``pass_(tokens, cache)`` =
    ``model(tokens, cache=cache, commit=False).logits`` (B, T, V), entries left pending.
    ``pass_(tokens, cache, positions=, table=)``: RoPE positions (B, T) and a (T, T) bool
    visibility table for the T new slots (``table[i, j]``: slot i sees slot j; every slot
    sees the committed context), as lookahead's and token trees' passes need.

    ``compile=True``: one compiled graph per padded width (:func:`pass_width`, ``widths``:
    the strategy's usual widths, never padded); the tokens past T are padding whose
    logits are dropped and whose pending entries are never committed. A cache without
    room for the padding, or a model that is not an ar-core ``Transformer`` with a
    :class:`~ar_core.cache.StaticKVCache` (a ``from_hf`` adapter), runs eagerly: the
    result is the same. Compiled graphs see every cache slot (static shapes): use caches
    of :func:`compiled_cache_len` slots so that shapes repeat across calls. On the CPU a
    compiled multi-token pass pays with :func:`ar_core.quant.prepack` (its linears then
    stay oneDNN calls and inductor fuses the rest).
    """

    def __init__(self, model: Any, *, compile: bool = False, widths: Sequence[int] = ()) -> None:
        self.model = model
        self.widths = tuple(widths)
        from ar_core.model import Transformer  # (a module-level import would be circular)

        self.compile = compile and isinstance(model, Transformer)
        if self.compile and not _COMPILED_PASS:
            _COMPILED_PASS.append(torch.compile(_model_pass, dynamic=False))
        if self.compile:
            # every (model, width, table or not, batch, cache size) is one graph of the one
            # function: dynamo's default limit (8 per function) would send a process that
            # runs a few strategies back to eager passes
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, COMPILED_PASS_GRAPHS)

    def __call__(
        self,
        tokens: Tensor,
        cache: Any,
        *,
        positions: Tensor | None = None,
        table: Tensor | None = None,
    ) -> Tensor:
        B, T = tokens.shape
        if table is not None and (table.dtype != torch.bool or table.shape != (T, T)):
            raise InputError(
                f"ModelPass: table must be a ({T}, {T}) bool tensor for {T} tokens, got "
                f"{tuple(table.shape)} {table.dtype}"
            )
        if not self.compile or not isinstance(cache, StaticKVCache):
            return _model_pass(self.model, tokens, cache, positions, table)
        width = pass_width(T, self.widths)
        # no room for the padding (the host bound may be stale-high: then check exactly)
        if (
            cache.max_length() + width > cache.max_len
            and int(cache.lengths.max()) + width > cache.max_len
        ):
            return _model_pass(self.model, tokens, cache, positions, table)
        if positions is not None and positions.ndim == 1:
            positions = positions[None, :].expand(B, T)
        if not torch.compiler.is_compiling():  # compiled graphs skip the model's checks
            from ar_core.model import check_model_inputs

            check_model_inputs(
                tokens,
                positions,
                cache,
                None,
                vocab_size=int(self.model.vocab_size),
                max_seq_len=int(self.model.max_seq_len),
            )
        if width > T:  # padding: token 0 at the last real position, seeing itself only
            tokens = torch.cat([tokens, tokens.new_zeros(B, width - T)], dim=1)
            if positions is not None:
                positions = torch.cat([positions, positions[:, -1:].expand(B, width - T)], 1)
            if table is not None:
                table = F.pad(table, (0, width - T, 0, width - T), value=False)
                pad = torch.arange(T, width, device=table.device)
                table[pad, pad] = True
        return _COMPILED_PASS[0](self.model, tokens, cache, positions, table)[:, :T]


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
    plain_argmax: bool = False,
) -> GenerationResult:
    """Shared body of ``greedy`` and ``sample`` (``plain_argmax``: ``pick`` is the argmax
    alone, so a compiled step may pick and commit itself)."""
    start = time.perf_counter()
    B, T = input_ids.shape
    N = config.max_new_tokens
    # the prefill writes T entries; row b then writes up to L_b + N - 1
    cache_len = cache_budget(model, input_ids, prompt_lengths, N)
    check_eos(config, model.vocab_size)
    stats = GenerationStats()
    device = input_ids.device
    eos_ids = torch.tensor(config.eos_ids(), dtype=torch.long, device=device)
    # history: prompts (padding as -1) then the new tokens
    cols = torch.arange(T, device=device)[None, :]
    history = torch.full((B, T + N), -1, dtype=torch.long, device=device)
    history[:, :T] = torch.where(cols < prompt_lengths[:, None], input_ids, -1)
    new = torch.empty((B, 0), dtype=torch.long, device=device)
    watch = FiniteWatch(B, device)
    with torch.no_grad():
        if N > 0:
            step: Callable[[Any, Tensor, Any], Tensor] = decode_one_token
            greedy_step = None
            if compile and plain_argmax:
                greedy_step, cache = _compiled_setup(
                    model, B, _model_device(model, input_ids), greedy=True, needed=cache_len
                )
                if not isinstance(cache, StaticKVCache):  # it commits through `lengths`
                    greedy_step = None
            if compile and greedy_step is None:
                step, cache = _compiled_setup(
                    model, B, _model_device(model, input_ids), needed=cache_len
                )
            elif not compile:
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
                watch=watch,
                greedy_step=greedy_step,
            )
    watch.check()  # one sync for the whole decode, not one per token
    if streamer is not None:
        streamer.end()
    sequences = assemble_sequences(input_ids, prompt_lengths, new, config.pad_token_id, n=N)
    stats.wall_seconds = time.perf_counter() - start
    return GenerationResult(sequences=sequences, stats=stats, prompt_lengths=prompt_lengths)


def decode_with_pick(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    pick: Picker,
    streamer: Streamer | None = None,
    compile: bool = False,
) -> GenerationResult:
    """The loop of ``greedy`` and ``sample`` with another pick rule ``pick(logits (B, V),
    history (B, T + N)) -> tokens (B,)``; ``history`` holds each row's prompt (padding as
    -1), then its new tokens (-1 after its EOS). ar-decoding's ``constrained`` strategy
    passes one that masks the tokens its callback forbids."""
    return _run(model, input_ids, config, prompt_lengths, streamer, pick, compile)


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
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor | None = None,
    streamer: Streamer | None = None,
    compile: bool = False,
) -> GenerationResult:
    """Strategy ``greedy``: the argmax at every step (after the repetition penalty, if any)."""
    picker = TokenPicker(config, do_sample=False, device=input_ids.device)
    lengths = _prompt_lengths(input_ids, None, prompt_lengths)
    plain = not picker.processors
    return _run(model, input_ids, config, lengths, streamer, picker.pick, compile, plain)


def sample_strategy(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor | None = None,
    streamer: Streamer | None = None,
    compile: bool = False,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``sample``: processors from the config, then one categorical draw per row
    with an explicit generator (seeded from ``config.seed``); temperature 0 is greedy."""
    picker = TokenPicker(config, generator=generator, device=input_ids.device)
    lengths = _prompt_lengths(input_ids, None, prompt_lengths)
    return _run(model, input_ids, config, lengths, streamer, picker.pick, compile)
