"""Any-subset speculative decoding, ASSD, on a two-stream any-subset AR model (strategy
``assd``; infilling with :func:`assd_fill`).

Guo & Ermon, "Reviving Any-Subset Autoregressive Models with Principled Parallel Sampling
and Speculative Decoding" (2025, arXiv:2504.20456); the model is ar-core's
:class:`~ar_core.steps.TwoStreamStepModel` (XLNet's two streams, Yang et al. 2019).

An any-subset model gives ``p(x_j | x_S)`` for any conditioning set ``S``. ASSD decodes the
unknown positions of a row in a fixed order ``sigma`` (default: left to right). One
iteration, with ``d`` tokens decoded so far and ``k`` positions next in ``sigma``:

1. **draft** (one network call): the k query-stream outputs at those positions, each
   conditioned only on what is known (given + decoded): ``q_i = p(x_{s+i} | known)``,
   drawn independently;
2. **oracle** (one network call): the same positions under the joint (chain-rule) mask,
   query ``i`` seeing the known tokens and drafts ``0 .. i-1``:
   ``p_i = p(x_{s+i} | known, d_0 .. d_{i-1})``;
3. accept draft ``i`` with probability ``min(1, p_i / q_i)``; at the first rejection draw
   from ``norm(max(p_i - q_i, 0))`` and stop. No bonus token (nothing scored position
   ``k``).

``q_0 = p_0`` (both condition on the known tokens only; the oracle's row 0 is replaced by
the draft's, which are the same numbers mathematically), so the first draft is always
accepted and a rejection still emits its resampled token: an iteration of two calls emits
at least two tokens; with one position left a single draft call is the exact conditional.
Hence **network calls <= tokens** on every row, and the output is distributed exactly as
the model's chain-rule joint in the order ``sigma`` (speculative sampling, Leviathan et al.
2023, per position). Greedy (``temperature=0``): keep drafts while they equal the oracle's
argmax, then the oracle's argmax - the output equals one-position-per-call greedy decoding.

Conditioning convention (what makes draft, oracle and reference agree): the slots are laid
out in the order ``[given | decoded (decode order) | next k | rest]`` and
``TwoStreamStepModel.query_outputs`` runs with step ids ``given = 0``, the j-th decoded
token ``1 + j``, then the draft slots (one shared step in the draft call, one step each in
the oracle call); content sees content of steps <= its own, a query sees content of steps
< its own. Every call is the model's full two-stream forward over the object (no KV
cache: the any-subset models here are small; a call is counted once per batched forward).

Rows of a batch may stand at different counts; rows with the same (given, decoded) counts
share one forward.

Notation: B rows, N positions, g given, d decoded, k draft length, V vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    GenerationStats,
    Streamer,
    assemble_sequences,
    check_eos,
    make_generator,
    positive_int,
    reject_repetition_penalty,
)
from ar_core.sampling import apply_processors, build_processors, logits_to_probs
from ar_core.steps import TwoStreamStepModel
from ar_decoding import verify

__all__ = ["AssdOutput", "assd", "assd_fill"]


@dataclass
class AssdOutput:
    """``tokens`` (B, N) complete; ``calls`` (B,) network calls that included each row;
    ``forwards`` batched forwards run; ``accepted_lengths`` tokens per (iteration, row)."""

    tokens: Tensor
    calls: Tensor
    forwards: int = 0
    accepted_lengths: list[int] = field(default_factory=list)


def _check_model(model: object) -> TwoStreamStepModel:
    if not isinstance(model, TwoStreamStepModel):
        raise ConfigError(
            f"ASSD needs an any-subset two-stream model (ar_core.steps.TwoStreamStepModel), "
            f"got {type(model).__name__}; a causal LM cannot condition on arbitrary subsets"
        )
    return model


def _slot_order(tokens: Tensor, order: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per row: slot -> position (B, N), given positions first (ascending), then the unknown
    positions in ``order``'s order (default ascending); and the given counts (B,)."""
    B, N = tokens.shape
    known = tokens >= 0  # (B, N)
    if order is None:
        order = torch.arange(N, device=tokens.device).expand(B, N)
    else:
        order = order.to(tokens.device)
        if order.shape != (B, N) or not torch.equal(
            order.sort(-1).values, torch.arange(N, device=tokens.device).expand(B, N)
        ):
            raise InputError(
                f"order must be a (B, N) = {(B, N)} permutation of 0..N-1 per row, got "
                f"shape {tuple(order.shape)}"
            )
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=tokens.device).expand(B, N))
    key = torch.where(known, -N + torch.arange(N, device=tokens.device)[None, :], rank)
    return key.argsort(-1), known.sum(-1)


def _logits(
    model: TwoStreamStepModel, tokens: Tensor, order: Tensor, steps: Tensor, s: int, k: int
) -> Tensor:
    return model.query_outputs(tokens, order, steps).logits[:, s : s + k].float()  # (b, k, V)


@torch.no_grad()
def assd_fill(
    model: TwoStreamStepModel,
    tokens: Tensor,
    *,
    k: int = 4,
    order: Tensor | None = None,
    temperature: float = 1.0,
    config: GenerationConfig | None = None,
    generator: torch.Generator | None = None,
) -> AssdOutput:
    """Fill the unknown positions (``-1``) of ``tokens`` (B, N) with ASSD, ``k`` drafts per
    iteration, in the order ``order`` (B, N) (a permutation of positions per row; the known
    positions are skipped; default left to right). ``temperature`` 0 = greedy;
    ``config``: sample with its processors (temperature, top-k/p, ...) instead."""
    model = _check_model(model)
    positive_int(k, "k", "assd")
    if tokens.ndim != 2 or tokens.dtype != torch.long:
        raise InputError(f"tokens must be a (B, N) long tensor, got {tuple(tokens.shape)}")
    B, N = tokens.shape
    model._check_positions(N)
    V = model.vocab_size
    if bool((tokens >= V).any()):
        raise InputError(f"tokens hold ids >= the model's vocabulary {V}; -1 marks unknowns")
    device = model.transformer.device
    values = tokens.to(device).clone()
    slot_order, given = _slot_order(values, order)
    if config is not None:
        processors = build_processors(config)
        greedy = config.temperature == 0
    else:
        if temperature < 0:
            raise ConfigError(f"assd: temperature must be >= 0, got {temperature}")
        processors, greedy = [], temperature == 0

    def probs(logits: Tensor) -> Tensor:
        if config is None:
            return torch.softmax(logits / temperature, -1)
        shape = logits.shape
        return logits_to_probs(apply_processors(processors, logits.reshape(-1, V))).view(shape)

    if not greedy:
        generator = make_generator(config or GenerationConfig(), device, generator)
    out = AssdOutput(tokens=values, calls=torch.zeros(B, dtype=torch.long, device=device))
    decoded = torch.zeros(B, dtype=torch.long, device=device)
    while True:
        todo = given + decoded < N
        if not bool(todo.any()):
            return out
        g, d = int(given[todo][0]), int(decoded[todo][0])
        idx = (todo & (given == g) & (decoded == d)).nonzero().squeeze(1)  # one group
        s, kk = g + d, min(k, N - g - d)
        o = slot_order[idx]  # (b, N)
        x = values[idx].clamp(min=0)  # unknowns hold 0: no query that matters sees them
        ar = torch.arange(N, device=device)
        decode_steps = torch.where(ar < g, 0, ar - g + 1)  # given 0, decoded 1 + j
        draft_steps = torch.where(ar < s, decode_steps, d + 1 + (ar >= s + kk).long())
        q_logits = _logits(model, x, o, draft_steps, s, kk)  # (b, kk, V)
        out.forwards += 1
        out.calls[idx] += 1
        if greedy:
            draft, q = q_logits.argmax(-1), None
        else:
            q = probs(q_logits)
            draft = torch.multinomial(q.view(-1, V), 1, generator=generator).view(-1, kk)
        if kk == 1:  # the draft is the exact conditional
            new, count = draft, torch.ones_like(idx)
        else:
            x = x.scatter(1, o[:, s : s + kk], draft)
            oracle_steps = torch.where(ar < s + kk, decode_steps, d + kk + 1)
            p_logits = _logits(model, x, o, oracle_steps, s, kk)  # (b, kk, V)
            out.forwards += 1
            out.calls[idx] += 1
            if greedy:
                p_logits[:, 0] = q_logits[:, 0]
                n, nxt = verify.accept_greedy(draft, torch.cat([p_logits, p_logits[:, :1]], 1))
            else:
                assert q is not None
                p = probs(p_logits)
                p[:, 0] = q[:, 0]  # the same conditional: the first draft is always kept
                n, nxt = verify.accept_sampling(draft, q, p, generator, bonus=False)
            at = n.clamp(max=kk - 1)[:, None]  # the resampled token replaces draft n
            repl = torch.where(n[:, None] < kk, nxt[:, None], draft.gather(1, at))
            new = draft.scatter(1, at, repl)
            count = torch.where(n < kk, n + 1, n)
        cols = torch.arange(kk, device=device)[None, :]
        keep = cols < count[:, None]  # (b, kk)
        pos = o[:, s : s + kk]
        cur = values[idx]
        values[idx] = cur.scatter(1, pos, torch.where(keep, new, cur.gather(1, pos)))
        decoded[idx] += count
        out.accepted_lengths.extend(count.tolist())


def assd(
    model: TwoStreamStepModel,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    num_draft_tokens: int = 4,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``assd``: ``config.max_new_tokens`` tokens after each prompt, left to right,
    by :func:`assd_fill` on a :class:`~ar_core.steps.TwoStreamStepModel` (rows grouped by
    prompt length: each group is one object of prompt + new positions). ASSD always fills
    every position; a row's tokens after its first EOS become ``pad_token_id``.
    ``stats.target_forward_passes`` counts batched network calls."""
    model = _check_model(model)
    positive_int(num_draft_tokens, "num_draft_tokens", "assd")
    reject_repetition_penalty(config, "assd")
    check_eos(config, model.vocab_size)
    sampling = config.temperature > 0 if do_sample is None else do_sample
    cfg = config if sampling else config.model_copy(update={"temperature": 0.0})
    stats = GenerationStats()
    N = config.max_new_tokens
    B = input_ids.shape[0]
    device = input_ids.device
    new = torch.full((B, N), config.pad_token_id, dtype=torch.long, device=device)
    start = time.perf_counter()
    if N > 0:
        gen = make_generator(cfg, model.transformer.device, generator) if sampling else None
        for length in sorted(set(prompt_lengths.tolist())):
            rows = (prompt_lengths == length).nonzero().squeeze(1)
            x = torch.full((rows.numel(), length + N), -1, dtype=torch.long, device=device)
            x[:, :length] = input_ids[rows, :length]
            res = assd_fill(model, x, k=num_draft_tokens, config=cfg, generator=gen)
            new[rows] = res.tokens[:, length:].to(device)
            stats.target_forward_passes += res.forwards
            stats.accepted_lengths += res.accepted_lengths
    eos = torch.tensor(config.eos_ids(), dtype=torch.long, device=device)
    if eos.numel() and N:
        hit = torch.isin(new, eos).long()
        after = (hit.cumsum(-1) - hit) > 0
        new = torch.where(after, config.pad_token_id, new)
        stats.tokens_generated = int((~after).sum())
    else:
        stats.tokens_generated = B * N
    if streamer is not None:
        if N:
            streamer.put(new.clone())
        streamer.end()
    sequences = assemble_sequences(input_ids, prompt_lengths, new, config.pad_token_id, n=N)
    stats.wall_seconds = time.perf_counter() - start
    return GenerationResult(sequences=sequences, stats=stats, prompt_lengths=prompt_lengths)
