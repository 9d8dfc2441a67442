"""Per-row bookkeeping of a draft-and-verify loop over a ragged batch.

Draft-then-verify strategies (speculative decoding, Leviathan et al. 2023,
arXiv:2211.17192; prompt lookup) advance each row by a different number of tokens per
step. :class:`Rows` keeps, per row, the sequence so far, its length, its new tokens,
whether it finished (EOS or ``max_new_tokens``), and streams tokens in order. It also
picks and verifies tokens the way ``ar_core``'s ``greedy``/``sample`` strategies do
(:class:`Picker`), so an accelerated strategy can be exact.

Streaming: a :class:`~ar_core.generation.Streamer` receives (B, n) columns. Rows advance
by different amounts, so a column is streamed once every unfinished row has produced it
(finished rows contribute ``pad_token_id``, as in ``ar_core``); with one row every
accepted token is streamed at the step that accepted it. The concatenated stream equals
the new tokens of ``sequences``.

Notation: B rows, T padded prompt length, N max_new_tokens, W = T + N + scratch columns,
k draft tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

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

__all__ = ["Picker", "Rows", "assemble"]


class Rows:
    """Sequences, lengths and outputs of B rows (see the module docstring)."""

    def __init__(
        self,
        input_ids: Tensor,
        prompt_lengths: Tensor,
        config: GenerationConfig,
        streamer: Streamer | None,
        stats: GenerationStats,
        scratch: int,
    ) -> None:
        B, T = input_ids.shape
        N = config.max_new_tokens
        device = input_ids.device
        self.N, self.pad, self.streamer, self.stats = N, config.pad_token_id, streamer, stats
        self.eos = torch.tensor(config.eos_ids(), dtype=torch.long, device=device)
        self.rows = torch.arange(B, device=device)
        cols = torch.arange(T, device=device)[None, :]
        # row b's tokens are seq[b, :length[b]]; -1 marks unused slots
        self.seq = torch.full((B, T + N + scratch), -1, dtype=torch.long, device=device)
        self.seq[:, :T] = torch.where(cols < prompt_lengths[:, None], input_ids, -1)
        self.length = prompt_lengths.clone()  # (B,)
        self.n_new = torch.zeros(B, dtype=torch.long, device=device)  # (B,)
        self.out = torch.full((B, N), self.pad, dtype=torch.long, device=device)  # (B, N)
        self.finished = torch.full((B,), N == 0, dtype=torch.bool, device=device)
        self._streamed = 0

    def all_finished(self) -> bool:
        return bool(self.finished.all())

    def remaining(self) -> Tensor:
        """New tokens each row may still emit: (B,), 0 for finished rows."""
        return torch.where(self.finished, 0, self.N - self.n_new)

    def last(self) -> Tensor:
        """Each row's last token: (B,)."""
        return self.seq[self.rows, self.length - 1]

    def emit(self, tokens: Tensor, counts: Tensor) -> Tensor:
        """Append ``tokens[b, :counts[b]]`` to row b, cut at EOS and ``max_new_tokens``.

        ``tokens`` (B, m); returns the counts really appended (B,), 0 for finished rows.
        """
        m = tokens.shape[1]
        steps = torch.arange(m, device=tokens.device)[None, :]  # (1, m)
        active = ~self.finished
        counts = torch.where(active, torch.minimum(counts, self.N - self.n_new), 0)
        if self.eos.numel():
            is_eos = torch.isin(tokens, self.eos) & (steps < counts[:, None])  # (B, m)
            hit = is_eos.any(-1)
            first = is_eos.long().argmax(-1)  # first EOS (0 when none)
            counts = torch.where(hit, first + 1, counts)
            self.finished |= hit
        b, j = (steps < counts[:, None]).nonzero(as_tuple=True)
        self.seq[b, self.length[b] + j] = tokens[b, j]
        self.out[b, self.n_new[b] + j] = tokens[b, j]
        self.length += counts
        self.n_new += counts
        self.finished |= self.n_new >= self.N
        self.stats.tokens_generated += int(counts.sum())
        self.stats.accepted_lengths.extend(counts[active].tolist())
        self._stream()
        return counts

    def _stream(self) -> None:
        if self.streamer is None:
            return
        live = self.n_new[~self.finished]
        frontier = int(live.min()) if live.numel() else self.N
        if frontier > self._streamed:
            self.streamer.put(self.out[:, self._streamed : frontier].clone())
            self._streamed = frontier


def assemble(input_ids: Tensor, prompt_lengths: Tensor, out: Tensor, pad: int) -> Tensor:
    """Row b: its prompt, its N new tokens ``out[b]``, then padding: (B, max(L) + N)."""
    B, T = input_ids.shape
    N = out.shape[1]
    seq = torch.full((B, int(prompt_lengths.max()) + N), pad, dtype=torch.long)
    seq = seq.to(input_ids.device)
    cols = torch.arange(T, device=input_ids.device)[None, :]
    keep = min(T, seq.shape[1])
    seq[:, :keep] = torch.where(cols < prompt_lengths[:, None], input_ids, pad)[:, :keep]
    if N:
        index = prompt_lengths[:, None] + torch.arange(N, device=input_ids.device)  # (B, N)
        seq.scatter_(1, index, out)
    return seq


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
            if generator is None:
                seed = config.seed
                if seed is None:
                    seed = int(torch.randint(0, 2**62, ()).item())
                generator = torch.Generator(device=device).manual_seed(seed)
            self.generator = generator

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
