"""Per-row bookkeeping of the multi-token strategies over a ragged batch.

Multi-token strategies (speculative decoding, Leviathan et al. 2023, arXiv:2211.17192;
prompt lookup; Jacobi/lookahead; SJD; LANTERN; beam; constrained) advance each row by a
different number of tokens per step. :class:`Rows` keeps, per row, its new tokens, how
many it has, whether it finished (EOS or ``max_new_tokens``), optionally the whole
sequence so far (prompt + new tokens, for drafting and penalties), and streams tokens in
order. :class:`Picker` picks and verifies tokens the way ``ar_core``'s
``greedy``/``sample`` strategies do, so an accelerated strategy can be exact. The small
helpers below check a strategy's arguments and size its cache.

Streaming: a :class:`~ar_core.generation.Streamer` receives (B, n) columns. Rows advance
by different amounts, so a column is streamed once every unfinished row has produced it
(finished rows contribute ``pad_token_id``, as in ``ar_core``); with one row every
accepted token is streamed at the step that accepted it. The concatenated stream equals
the new tokens of ``sequences``.

Notation: B rows, T padded prompt length, N max_new_tokens, W = T + N + scratch columns,
k tokens offered to a row in one step, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig, GenerationStats, Streamer
from ar_core.sampling import (
    LogitsProcessor,
    RepetitionPenalty,
    apply_processors,
    build_processors,
    check_finite_rows,
    logits_to_probs,
    multinomial_sample_one_no_sync,
)
from ar_decoding.verify import accept_greedy, accept_sampling

__all__ = [
    "Picker",
    "Rows",
    "accepted_tokens",
    "cache_budget",
    "check_eos",
    "make_generator",
    "positive_int",
    "processed_probs",
    "reject_repetition_penalty",
    "retire_finished",
]


class Rows:
    """New tokens (and optionally sequences) of B rows that advance by different counts.

    ``new_tokens`` (B, N) holds each row's new tokens (``pad_token_id`` after its end);
    ``n_new`` (B,) how many it has; ``length`` (B,) its prompt length + ``n_new``;
    ``finished`` (B,) whether it hit EOS or N. With ``scratch`` (an int), ``seq`` (B, W)
    also holds each row's tokens, ``seq[b, :length[b]]`` (-1 marks unused slots), with
    ``scratch`` spare columns for draft tokens; ``scratch=None`` keeps no sequences.
    ``stats.tokens_generated`` counts the appended tokens and ``stats.accepted_lengths``
    gets one entry per (step, row active at the start of the step).
    """

    def __init__(
        self,
        input_ids: Tensor,
        prompt_lengths: Tensor,
        config: GenerationConfig,
        streamer: Streamer | None,
        stats: GenerationStats,
        scratch: int | None = None,
    ) -> None:
        B, T = input_ids.shape
        N = config.max_new_tokens
        device = input_ids.device
        self.N, self.pad, self.streamer, self.stats = N, config.pad_token_id, streamer, stats
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


def cache_budget(
    model: Any, input_ids: Tensor, prompt_lengths: Tensor, n_new: int, extra: int, fix: str
) -> int:
    """Cache slots needed when each step writes up to ``extra + 1`` entries after a row's
    committed context (which holds at most prompt + N - 1 tokens before its last step).
    Raises InputError naming ``fix`` when the model's ``max_seq_len`` is too short."""
    T = input_ids.shape[1]
    need = max(T, int(prompt_lengths.max()) + n_new - 1 + extra)
    if need > model.max_seq_len:
        raise InputError(
            f"prompt length {int(prompt_lengths.max())} + max_new_tokens {n_new} + "
            f"{extra} speculative slots needs {need} positions but the model's max_seq_len is "
            f"{model.max_seq_len}; {fix}"
        )
    return need


def check_eos(config: GenerationConfig, vocab_size: int) -> None:
    for eos in config.eos_ids():
        if not 0 <= eos < vocab_size:
            raise ConfigError(f"eos_token_id {eos} is outside the vocabulary [0, {vocab_size})")


def reject_repetition_penalty(config: GenerationConfig, strategy: str) -> None:
    """The multi-token strategies score many positions at once; CTRL's penalty would need
    a different history per position, which they do not track."""
    if config.repetition_penalty != 1.0:
        raise ConfigError(
            f"strategy {strategy!r} does not support repetition_penalty="
            f"{config.repetition_penalty}; set repetition_penalty=1.0 or use 'greedy'/'sample'"
        )


def make_generator(
    config: GenerationConfig, device: torch.device, generator: torch.Generator | None
) -> torch.Generator:
    """``generator`` if given, else one seeded from ``config.seed`` (or torch's global RNG)."""
    if generator is not None:
        return generator
    seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
    return torch.Generator(device=device).manual_seed(seed)


def processed_probs(processors: list[LogitsProcessor], logits: Tensor) -> Tensor:
    """The config's processors, then softmax, over logits (..., V) -> probs (..., V) float32."""
    shape = logits.shape
    flat = apply_processors(processors, logits.reshape(-1, shape[-1]))  # (B * K, V)
    return logits_to_probs(flat).reshape(shape)


def positive_int(value: Any, name: str, strategy: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{strategy}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def accepted_tokens(draft: Tensor, n_accepted: Tensor, next_token: Tensor) -> Tensor:
    """The tokens a row gains: its first ``n_accepted`` draft tokens, then ``next_token``:
    (B, k + 1), valid up to column ``n_accepted``."""
    new = torch.cat([draft, next_token[:, None]], dim=1)  # (B, k + 1)
    return new.scatter(1, n_accepted[:, None], next_token[:, None])


def retire_finished(cache: Any, rows: Rows) -> None:
    """Finished rows keep riding along in the batch; cropping their cache to 0 keeps their
    writes inside it (their outputs are ignored)."""
    cache.crop(torch.where(rows.finished, 0, cache.lengths))


class Picker:
    """Chooses and verifies tokens exactly as ar-core's ``greedy``/``sample`` strategies.

    Greedy (``do_sample=False``; default when ``config.temperature == 0``): the argmax
    after the repetition penalty only, as the ``greedy`` strategy. Sampling: every
    processor of the config (temperature, top-k/p, min-p, typical, penalty), applied to
    the target *and* the draft logits, then categorical draws with ``generator``.
    Processors see each position's own history (the sequence plus the draft tokens
    before it), so the repetition penalty stays exact inside a draft.
    """

    def __init__(
        self,
        config: GenerationConfig,
        do_sample: bool | None,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> None:
        self.greedy = not (config.temperature > 0 if do_sample is None else do_sample)
        self.processors: list[LogitsProcessor]
        if self.greedy:
            penalty = config.repetition_penalty
            self.processors = [RepetitionPenalty(penalty)] if penalty != 1.0 else []
            self.generator = generator
        else:
            self.processors = build_processors(config)
            self.generator = make_generator(config, device, generator)

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

    def pick(self, logits: Tensor, seq: Tensor, draft: Tensor | None = None) -> Tensor:
        """One token per row from (B, V) logits after the tokens ``seq`` (+ ``draft``)."""
        token, _ = self.pick_with_probs(logits, seq, draft)
        return token

    def pick_with_probs(
        self, logits: Tensor, seq: Tensor, draft: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(token (B,), probs (B, V) or None when greedy)."""
        history = seq if draft is None else torch.cat([seq, draft], 1)
        processed = self.process(logits[:, None], history)[:, 0]  # (B, V)
        if self.greedy:
            return processed.argmax(-1), None
        probs = logits_to_probs(processed)
        return multinomial_sample_one_no_sync(probs, self.generator), probs

    def verify(
        self,
        draft: Tensor,
        q_probs: Tensor | None,
        target_logits: Tensor,
        seq: Tensor,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``n_accepted`` (B,), ``next_token`` (B,) for ``draft`` (B, k) against the
        target's raw logits (B, k+1, V); ``q_probs`` (B, k, V) are the draft's probabilities
        (None: a deterministic draft, i.e. one-hot q)."""
        processed = self.process(target_logits, seq, draft)  # (B, k+1, V)
        if self.greedy:
            return accept_greedy(draft, processed, lengths=lengths)
        if q_probs is None:  # a deterministic draft: q = one-hot of the drafted token
            V = target_logits.shape[-1]
            q_probs = torch.zeros(*draft.shape, V, device=draft.device)
            q_probs.scatter_(-1, draft[..., None].clamp(0, V - 1), 1.0)
        p_probs = logits_to_probs(processed)
        return accept_sampling(draft, q_probs, p_probs, self.generator, lengths=lengths)
