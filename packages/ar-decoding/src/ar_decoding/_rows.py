"""Per-row bookkeeping of the multi-token strategies (Jacobi, lookahead, SJD, LANTERN,
beam, constrained): the cache budget, the output buffer that rows fill at different
speeds, EOS, streaming and the final ``sequences`` layout of ``ar_core.generate``.

Notation: B rows, T padded prompt length, N max_new_tokens, V vocabulary, k tokens
offered to a row in one step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig, GenerationStats, Streamer
from ar_core.sampling import LogitsProcessor, apply_processors, logits_to_probs


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


def retire_finished(cache: Any, out: RowOutput) -> None:
    """Finished rows keep riding along in the batch; cropping their cache to 0 keeps their
    writes inside it (their outputs are ignored)."""
    cache.crop(torch.where(out.finished, 0, cache.lengths))


class RowOutput:
    """New tokens of B rows that advance by different counts per step.

    ``tokens`` (B, N) holds each row's new tokens (``pad_token_id`` after its end);
    ``count`` (B,) how many it has; ``finished`` (B,) whether it hit EOS or N. Streaming
    puts the columns every row has reached, so the chunks concatenate to ``tokens``.
    ``stats.accepted_lengths`` gets one entry per (step, active row).
    """

    def __init__(
        self,
        batch: int,
        n_new: int,
        config: GenerationConfig,
        streamer: Streamer | None,
        stats: GenerationStats,
        device: torch.device,
    ) -> None:
        self.n_new = n_new
        self.pad = config.pad_token_id
        self.tokens = torch.full((batch, n_new), self.pad, dtype=torch.long, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device) | (n_new == 0)
        self.eos = torch.tensor(config.eos_ids(), dtype=torch.long, device=device)
        self.streamer, self.stats = streamer, stats
        self._streamed = 0

    @property
    def done(self) -> bool:
        return bool(self.finished.all())

    def push(self, new: Tensor, n: Tensor) -> Tensor:
        """Append the first ``n[b]`` of ``new[b]`` (B, k) to each unfinished row, cut at
        its first EOS and at N; returns how many each row kept (B,)."""
        B, k = new.shape
        j = torch.arange(k, device=new.device)[None, :]  # (1, k)
        valid = (j < n[:, None]) & ~self.finished[:, None]  # (B, k), a prefix per row
        valid &= self.count[:, None] + j < self.n_new
        hit_eos = torch.zeros(B, dtype=torch.bool, device=new.device)
        if self.eos.numel():
            is_eos = torch.isin(new, self.eos) & valid  # (B, k)
            after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after
            valid &= ~after_eos
            hit_eos = is_eos.any(-1)
        kept = valid.sum(-1)  # (B,)
        rows, cols = valid.nonzero(as_tuple=True)
        self.tokens[rows, self.count[rows] + cols] = new[rows, cols]
        active = ~self.finished
        self.stats.tokens_generated += int(kept.sum())
        self.stats.accepted_lengths.extend(kept[active].tolist())
        self.count += kept
        self.finished |= hit_eos | (self.count >= self.n_new)
        self._stream()
        return kept

    def _stream(self) -> None:
        if self.streamer is None:
            return
        ready = int(torch.where(self.finished, self.n_new, self.count).min())
        if ready > self._streamed:
            self.streamer.put(self.tokens[:, self._streamed : ready])
            self._streamed = ready

    def end(self) -> None:
        if self.streamer is None:
            return
        if self._streamed < self.n_new:
            self.streamer.put(self.tokens[:, self._streamed :])
        self.streamer.end()


def assemble(input_ids: Tensor, prompt_lengths: Tensor, new: Tensor, pad: int) -> Tensor:
    """Row b: its prompt, its N new tokens (B, N), then padding: (B, max(lengths) + N)."""
    B, T = input_ids.shape
    n = new.shape[1]
    width = int(prompt_lengths.max()) + n
    seq = torch.full((B, width), pad, dtype=torch.long, device=input_ids.device)
    cols = torch.arange(T, device=input_ids.device)[None, :]
    keep = min(T, width)
    seq[:, :keep] = torch.where(cols < prompt_lengths[:, None], input_ids, pad)[:, :keep]
    if n:
        index = prompt_lengths[:, None] + torch.arange(n, device=input_ids.device)[None, :]
        seq.scatter_(1, index, new)  # (B, N) into (B, width)
    return seq
