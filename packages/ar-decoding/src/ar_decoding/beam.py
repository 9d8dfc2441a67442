"""Beam search: keep the ``num_beams`` most likely partial sequences per row.

The classic decoder of sequence-to-sequence models (Sutskever, Vinyals & Le, "Sequence
to Sequence Learning with Neural Networks", 2014, arXiv:1409.3215), with the length
penalty of Wu et al., "Google's Neural Machine Translation System" (2016,
arXiv:1609.08144) in its Hugging Face form: a finished hypothesis scores
``sum log p / (new tokens) ** length_penalty``.

Per step and row: every live beam is extended by every token (``K * V`` candidates,
scored by summed log-probability). Candidates ending in EOS become finished hypotheses
(the row keeps its ``num_beams`` best); the best ``num_beams`` other candidates are the
new live beams, and the KV cache rows are reordered to their parents with
``cache.fork(index)``. After ``max_new_tokens`` steps the live beams are finished too,
and each row returns its best hypothesis (EOS, then ``pad_token_id``). With
``num_beams = 1`` and no EOS this is greedy; with ``num_beams >= V ** (N - 1)`` every
sequence survives and the result is the exhaustive optimum.

Scores use the raw log-softmax of the model (temperature and filters do not apply;
``repetition_penalty`` is refused). Streaming emits the winner at the end.

Notation: B rows, K beams, V vocabulary, N max_new_tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.errors import ConfigError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Rows,
    Streamer,
    cache_budget,
    check_eos,
    positive_int,
    prefill,
    reject_repetition_penalty,
)
from ar_core.protocols import CausalLM

__all__ = ["beam"]

NEG_INF = float("-inf")


def _add_finished(
    fin_scores: Tensor, fin_seqs: Tensor, scores: Tensor, seqs: Tensor
) -> tuple[Tensor, Tensor]:
    """Merge new finished hypotheses (B, M) / (B, M, N) into the best K kept (B, K)."""
    K = fin_scores.shape[1]
    all_scores = torch.cat([fin_scores, scores], dim=1)  # (B, K + M)
    all_seqs = torch.cat([fin_seqs, seqs], dim=1)  # (B, K + M, N)
    top, index = all_scores.topk(K, dim=1)  # (B, K)
    return top, all_seqs.gather(1, index[..., None].expand(-1, -1, all_seqs.shape[2]))


def beam(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    num_beams: int = 4,
    length_penalty: float = 1.0,
) -> GenerationResult:
    """Strategy ``beam``: the best of ``num_beams`` hypotheses per row (4: a common MT
    default); ``length_penalty`` > 1 favours longer finished hypotheses, < 1 shorter."""
    reject_repetition_penalty(config, "beam")
    K = positive_int(num_beams, "num_beams", "beam")
    if not isinstance(length_penalty, int | float) or isinstance(length_penalty, bool):
        raise ConfigError(f"beam: length_penalty must be a number, got {length_penalty!r}")
    check_eos(config, model.vocab_size)
    B, _ = input_ids.shape
    N, V = config.max_new_tokens, model.vocab_size
    device = input_ids.device
    cache_len = cache_budget(model, input_ids, prompt_lengths, N, fix="lower max_new_tokens")
    eos = torch.tensor(config.eos_ids(), dtype=torch.long, device=device)
    out = Rows(input_ids, prompt_lengths, config, streamer)
    stats = out.stats
    with torch.no_grad():
        if N > 0:
            cache = model.new_cache(B, max_len=cache_len)
            logits = prefill(model, input_ids, cache, prompt_lengths)  # (B, V)
            stats.target_forward_passes += 1
            out.watch(logits)
            rows = torch.arange(B, device=device)
            cache = cache.fork(rows.repeat_interleave(K))  # (B K) rows, beam k of row b at b K + k
            logp = torch.log_softmax(logits.float(), -1).repeat_interleave(K, 0)  # (B K, V)
            live = torch.full((B, K), NEG_INF, device=device)
            live[:, 0] = 0.0  # one live beam at the start: no duplicate hypotheses
            seqs = torch.full((B, K, N), config.pad_token_id, dtype=torch.long, device=device)
            fin_scores = torch.full((B, K), NEG_INF, device=device)
            fin_seqs = seqs.clone()
            is_eos = torch.zeros(V, dtype=torch.bool, device=device)
            is_eos[eos] = True
            for t in range(N):
                cand = live[..., None] + logp.view(B, K, V)  # (B, K, V)
                if eos.numel():  # EOS extensions finish: score them, keep them out of the beam
                    ended = cand[..., is_eos].flatten(1)  # (B, K * E)
                    parent = torch.arange(K, device=device).repeat_interleave(eos.numel())
                    ended_seqs = seqs[:, parent].clone()  # (B, K * E, N)
                    ended_seqs[:, :, t] = eos.repeat(K)
                    norm = float(t + 1) ** length_penalty
                    fin_scores, fin_seqs = _add_finished(
                        fin_scores, fin_seqs, ended / norm, ended_seqs
                    )
                    cand = cand.masked_fill(is_eos, NEG_INF)
                live, flat = cand.flatten(1).topk(K, dim=1)  # (B, K)
                parent, token = flat // V, flat % V  # (B, K)
                seqs = seqs.gather(1, parent[..., None].expand(B, K, N)).clone()
                seqs[:, :, t] = token
                if t + 1 == N or bool(torch.isneginf(live).all()):
                    break
                cache = cache.fork((rows[:, None] * K + parent).flatten())
                step_logits = model(token.flatten()[:, None], cache=cache).logits[:, -1]
                stats.target_forward_passes += 1
                out.watch(step_logits, grouped=True)  # beam k of row b at b K + k
                logp = torch.log_softmax(step_logits.float(), -1)  # (B K, V)
            norm = float(t + 1) ** length_penalty
            fin_scores, fin_seqs = _add_finished(fin_scores, fin_seqs, live / norm, seqs)
            best = fin_scores.argmax(1)  # (B,)
            winner = fin_seqs[rows, best]  # (B, N)
            out.emit(winner, torch.full((B,), N, device=device))
    return out.finish()
