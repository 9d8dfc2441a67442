"""Decoder architectures and pretraining objectives as masks over one ``ar_core.Transformer``.

From "What Language Model Architecture and Pretraining Objective Work Best for Zero-Shot
Generalization?" (Wang et al., 2022, arXiv:2204.05832):

* architectures – the causal decoder (CD: causal mask) and the non-causal / prefix
  decoder (ND: bidirectional over the input prefix, causal after) are the *same*
  ``Transformer``; only the ``MaskSpec`` differs. Both are ANDed with key padding and, for
  packed rows, with the document structure;
* objectives – full LM (FLM, loss on every token), prefix LM (PLM, a random split point
  per row, loss on the targets only) and T5 span corruption (MLM, noise density 0.15,
  mean span length 3, from "Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer", Raffel et al., 2019, arXiv:1910.10683);
* adaptation – CD:FLM -> ND:MLM (non-causal MLM adaptation: the corrupted input is the
  prefix, the sentinel targets follow it) and ND -> CD:FLM (LM adaptation), each a batch
  builder for the new objective on the same model.

Notation: B rows, T positions per row, N tokens of one sequence, V vocabulary.
Labels follow the next-token convention: ``labels[b, t]`` is the token that the logits at
position ``t`` must predict (``tokens[b, t + 1]``), or ``IGNORE`` where there is no loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core import masks
from ar_core.errors import ConfigError, InputError
from ar_core.masks import MaskSpec

IGNORE = -100  # label of a position without loss (F.cross_entropy's ignore_index)


@dataclass(frozen=True)
class LMBatch:
    """One decoder-only training batch: what ``Transformer.forward`` and the loss need."""

    tokens: Tensor  # (B, T) long
    positions: Tensor  # (B, T) long RoPE positions
    labels: Tensor  # (B, T) long next-token targets, IGNORE where no loss
    mask: MaskSpec  # the architecture: CD or ND, AND padding (AND documents)


# ----------------------------------------------------------------------------------
# Masks: the two decoder architectures
# ----------------------------------------------------------------------------------


def _bool_matrix(x: Tensor, what: str) -> Tensor:
    if x.dim() != 2 or x.dtype != torch.bool:
        raise InputError(f"{what} must be a (B, T) bool tensor, got {tuple(x.shape)} {x.dtype}")
    return x.detach().clone()


def key_padding(valid: Tensor) -> MaskSpec:
    """Keys that are real tokens (``ar_core.masks.key_padding``); ``valid``: (B, T) bool."""
    return masks.key_padding(_bool_matrix(valid, "valid"))


def causal_decoder_mask(valid: Tensor, doc_ids: Tensor | None = None) -> MaskSpec:
    """CD: causal AND key padding (AND same document when ``doc_ids`` (B, T) is given)."""
    base = masks.causal() if doc_ids is None else masks.document(doc_ids)
    return base & key_padding(valid)


def non_causal_decoder_mask(prefix_lens: Tensor, valid: Tensor) -> MaskSpec:
    """ND: ``masks.prefix(n)`` with one prefix length per row, AND key padding.

    ``prefix_lens``: (B,) long; ``valid``: (B, T) bool. ``prefix_lens = 0`` is the CD mask.
    """
    return masks.prefix(prefix_lens) & key_padding(valid)


def packed_non_causal_decoder_mask(doc_ids: Tensor, is_input: Tensor, valid: Tensor) -> MaskSpec:
    """ND over packed rows: causal within a document OR bidirectional between the inputs
    of the same document, AND key padding.

    ``doc_ids``: (B, T) long; ``is_input``: (B, T) bool, True on each document's input
    prefix. (``prefix(n) & document(ids)`` would collapse to causal, because
    ``document`` is causal by default; hence the explicit block of same-document inputs.)
    """
    inputs = masks.document_inputs(doc_ids, _bool_matrix(is_input, "is_input"))
    return (masks.document(doc_ids) | inputs) & key_padding(valid)


def document_positions(doc_ids: Tensor) -> Tensor:
    """RoPE positions that restart at 0 in every packed document. (B, T) -> (B, T)."""
    T = doc_ids.shape[1]
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)  # (B, T)
    new_doc = torch.ones_like(doc_ids, dtype=torch.bool)
    new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start = torch.where(new_doc, idx, torch.zeros_like(idx)).cummax(dim=1).values  # (B, T)
    return idx - start


# ----------------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------------


def _row_lengths(tokens: Tensor, lengths: Tensor | None) -> Tensor:
    if tokens.dim() != 2 or tokens.dtype != torch.long:
        raise InputError(f"tokens must be (B, T) long, got {tuple(tokens.shape)} {tokens.dtype}")
    B, T = tokens.shape
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long, device=tokens.device)
    if lengths.shape != (B,) or bool(((lengths < 0) | (lengths > T)).any()):
        raise InputError(f"lengths must be (B,) = ({B},) in [0, {T}], got {lengths.tolist()}")
    return lengths.to(dtype=torch.long, device=tokens.device)


def _next_token_labels(tokens: Tensor, first_target: Tensor, lengths: Tensor) -> Tensor:
    """Labels ``tokens[b, t + 1]`` where ``first_target[b] <= t + 1 < lengths[b]``. (B, T)."""
    T = tokens.shape[1]
    nxt = torch.arange(1, T + 1, device=tokens.device)[None, :]  # (1, T): index of t + 1
    keep = (nxt >= first_target[:, None]) & (nxt < lengths[:, None])  # (B, T)
    shifted = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1)  # (B, T); last column unused
    return torch.where(keep, shifted, torch.full_like(tokens, IGNORE))


def full_lm_batch(tokens: Tensor, lengths: Tensor | None = None) -> LMBatch:
    """CD:FLM – causal mask, loss on every next token of a row's first ``lengths[b]``.

    ``tokens``: (B, T) long, right-padded; ``lengths``: (B,) real lengths (None = all T).
    """
    lengths = _row_lengths(tokens, lengths)
    T = tokens.shape[1]
    valid = torch.arange(T, device=tokens.device)[None, :] < lengths[:, None]  # (B, T)
    positions = torch.arange(T, device=tokens.device).expand_as(tokens)
    labels = _next_token_labels(tokens, torch.ones_like(lengths), lengths)
    return LMBatch(tokens, positions, labels, causal_decoder_mask(valid))


def prefix_lm_batch(
    tokens: Tensor,
    lengths: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    prefix_lens: Tensor | None = None,
) -> LMBatch:
    """ND:PLM – split each row at a uniform random point ``n_b`` in ``[1, len_b - 1]``
    (at least one input and one target token); bidirectional over ``[0, n_b)``, causal
    after; loss only on the targets ``tokens[b, n_b:len_b]``.

    ``prefix_lens`` (B,) fixes the split instead of sampling it.
    """
    lengths = _row_lengths(tokens, lengths)
    if bool((lengths < 2).any()):
        raise InputError(f"prefix LM needs rows of length >= 2, got lengths {lengths.tolist()}")
    if prefix_lens is None:
        u = torch.rand(lengths.shape, generator=generator, device="cpu").to(lengths.device)
        prefix_lens = 1 + (u * (lengths - 1).to(u.dtype)).long().clamp(max=lengths - 2)  # (B,)
    elif prefix_lens.shape != lengths.shape or bool(
        ((prefix_lens < 0) | (prefix_lens > lengths)).any()
    ):
        raise InputError(f"prefix_lens must be (B,) in [0, lengths], got {prefix_lens.tolist()}")
    T = tokens.shape[1]
    valid = torch.arange(T, device=tokens.device)[None, :] < lengths[:, None]  # (B, T)
    positions = torch.arange(T, device=tokens.device).expand_as(tokens)
    labels = _next_token_labels(tokens, prefix_lens.clamp(min=1), lengths)
    return LMBatch(tokens, positions, labels, non_causal_decoder_mask(prefix_lens, valid))


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the positions with a label. logits (B, T, V)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


# ----------------------------------------------------------------------------------
# T5 span corruption
# ----------------------------------------------------------------------------------


def _random_segmentation(
    n_items: int, n_segments: int, generator: torch.Generator | None
) -> Tensor:
    """A uniformly random composition of ``n_items`` into ``n_segments`` non-empty parts.
    Returns (n_segments,) long lengths (T5's ``_random_segmentation``)."""
    cuts = torch.randperm(n_items - 1, generator=generator)[: n_segments - 1]  # cut after these
    bounds = torch.cat([torch.tensor([0]), (cuts + 1).sort().values, torch.tensor([n_items])])
    return bounds.diff()  # (n_segments,)


def noise_mask(
    length: int,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """T5's ``random_spans_noise_mask``: (length,) bool, True on the corrupted tokens.

    ``round(length * noise_density)`` noise tokens (at least 1, at most length - 1) in
    ``round(noise / mean_span_length)`` spans (at least 1); the spans and the gaps between
    them are uniformly random compositions; the sequence starts with a kept token.
    """
    if length < 2:
        raise InputError(f"span corruption needs a sequence of length >= 2, got {length}")
    if not 0.0 < noise_density < 1.0 or mean_span_length < 1.0:
        raise ConfigError(
            f"need 0 < noise_density < 1 and mean_span_length >= 1, got {noise_density}, "
            f"{mean_span_length}"
        )
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_span_length), 1)
    n_spans = min(n_spans, n_noise, length - n_noise)
    noise_lens = _random_segmentation(n_noise, n_spans, generator)  # (S,)
    keep_lens = _random_segmentation(length - n_noise, n_spans, generator)  # (S,)
    interleaved = torch.stack([keep_lens, noise_lens], dim=1).flatten()  # (2S,) keep, noise, ...
    is_noise = torch.arange(2 * n_spans) % 2 == 1  # (2S,)
    return torch.repeat_interleave(is_noise, interleaved)  # (length,)


def span_corrupt(
    tokens: Tensor,
    sentinel_ids: Sequence[int] | Tensor,
    generator: torch.Generator | None = None,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """T5 span corruption of one sequence ``tokens`` (N,) long.

    Returns ``inputs``: the kept tokens with each noise span replaced by one sentinel
    (``sentinel_ids[i]`` for span ``i``), and ``targets``: ``sentinel_ids[i]`` followed by
    span ``i``, for every span in order. Sentinels must not occur in ``tokens`` (so that
    :func:`span_uncorrupt` inverts this exactly).
    """
    if tokens.dim() != 1:
        raise InputError(f"span_corrupt takes one sequence (N,), got shape {tuple(tokens.shape)}")
    sentinels = torch.as_tensor(sentinel_ids, dtype=torch.long)
    if bool(torch.isin(tokens, sentinels).any()):
        raise InputError("tokens contain a sentinel id; sentinels must be reserved ids")
    noise = noise_mask(
        tokens.numel(),
        noise_density=noise_density,
        mean_span_length=mean_span_length,
        generator=generator,
    ).to(tokens.device)  # (N,)
    span_start = noise & ~torch.cat([noise.new_zeros(1), noise[:-1]])  # (N,) first token of a span
    span_idx = span_start.long().cumsum(0) - 1  # (N,) index of the span a noise token is in
    n_spans = int(span_start.sum())
    if n_spans > sentinels.numel():
        raise ConfigError(
            f"{n_spans} noise spans need as many sentinel ids, got {sentinels.numel()}"
        )
    sent = sentinels.to(tokens.device)[span_idx.clamp(min=0)]  # (N,) the sentinel of each span
    # inputs: each kept token, and a span's sentinel in place of its first token
    inputs = torch.where(span_start, sent, tokens)[~noise | span_start]  # (N_in,)
    # targets: a span's sentinel before its first token, then the span
    starts = span_start.nonzero().squeeze(1)  # (S,)
    tgt = torch.cat([tokens[noise], sent[starts]])  # noise tokens, then the sentinels
    order_key = torch.cat([noise.nonzero().squeeze(1) * 2 + 1, starts * 2])  # sentinel first
    targets = tgt[order_key.argsort()]  # (N_tgt,)
    return inputs, targets


def span_uncorrupt(inputs: Tensor, targets: Tensor, sentinel_ids: Sequence[int] | Tensor) -> Tensor:
    """The exact inverse of :func:`span_corrupt`: put every span of ``targets`` back in
    place of its sentinel in ``inputs``. (N_in,), (N_tgt,) -> (N,)."""
    sentinels = torch.as_tensor(sentinel_ids, dtype=torch.long).tolist()
    is_sentinel = set(sentinels)
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for tok in targets.tolist():
        if tok in is_sentinel:
            current = spans.setdefault(tok, [])
        elif current is None:
            raise InputError("targets must start with a sentinel id")
        else:
            current.append(tok)
    out: list[int] = []
    for tok in inputs.tolist():
        if tok in is_sentinel:
            if tok not in spans:
                raise InputError(f"sentinel {tok} of the inputs is missing from the targets")
            out.extend(spans[tok])
        else:
            out.append(tok)
    return torch.tensor(out, dtype=inputs.dtype, device=inputs.device)


# ----------------------------------------------------------------------------------
# Adaptation between architectures/objectives (Wang et al. 2022, section 5)
# ----------------------------------------------------------------------------------


def mlm_adaptation_batch(
    tokens: Tensor,
    lengths: Tensor | None,
    sentinel_ids: Sequence[int] | Tensor,
    *,
    pad_id: int,
    generator: torch.Generator | None = None,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> LMBatch:
    """CD:FLM -> ND:MLM (non-causal MLM adaptation) on the same decoder.

    Each row becomes ``[span-corrupted inputs ; sentinel targets]``: the inputs are the
    bidirectional prefix, the targets follow causally and carry the loss. Rows are
    right-padded with ``pad_id`` to the longest one.
    """
    lengths = _row_lengths(tokens, lengths)
    rows, prefix = [], []
    for b in range(tokens.shape[0]):
        inputs, targets = span_corrupt(
            tokens[b, : int(lengths[b])],
            sentinel_ids,
            generator,
            noise_density=noise_density,
            mean_span_length=mean_span_length,
        )
        rows.append(torch.cat([inputs, targets]))  # (N_in + N_tgt,)
        prefix.append(inputs.numel())
    new_lengths = torch.tensor([r.numel() for r in rows], device=tokens.device)
    T = int(new_lengths.max())
    seq = torch.full((len(rows), T), pad_id, dtype=torch.long, device=tokens.device)
    for b, r in enumerate(rows):
        seq[b, : r.numel()] = r
    prefix_lens = torch.tensor(prefix, device=tokens.device)
    return prefix_lm_batch(seq, new_lengths, prefix_lens=prefix_lens)


def lm_adaptation_batch(tokens: Tensor, lengths: Tensor | None = None) -> LMBatch:
    """ND (PLM or MLM) -> CD:FLM (LM adaptation): the same weights, trained on the causal
    mask with a loss on every next token."""
    return full_lm_batch(tokens, lengths)


__all__ = [
    "IGNORE",
    "LMBatch",
    "causal_decoder_mask",
    "document_positions",
    "full_lm_batch",
    "key_padding",
    "lm_adaptation_batch",
    "lm_loss",
    "mlm_adaptation_batch",
    "noise_mask",
    "non_causal_decoder_mask",
    "packed_non_causal_decoder_mask",
    "prefix_lm_batch",
    "span_corrupt",
    "span_uncorrupt",
]
