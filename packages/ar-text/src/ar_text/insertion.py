"""Insertion language models (ILM): training targets, loss and the insertion sampler.

Patel et al., "Insertion Language Models: Sequence Generation with Arbitrary-Position
Insertions" (2025, arXiv:2505.05755).

* Noise (:func:`drop_tokens`): drop a uniformly drawn number ``k`` of random positions
  (among the droppable ones) from each sequence.
* Targets: the kept sequence is ``[CLS ; kept tokens]``; slot ``g`` stands for the gap
  right after it (slot 0 = insert at the start). The target of a row is the multiset of
  dropped tokens, each placed at its gap, normalised to one distribution over the
  flattened ``(slot x token)`` grid. Stop label: 1 iff nothing was dropped.
* Loss (:func:`ilm_loss`): one softmax over the flattened ``L x V`` logits of a row
  (cross-entropy against that distribution) plus a binary stop classifier on the CLS
  hidden state.
* Model (:class:`InsertionModel`): an :class:`ar_core.Transformer` run with a
  bidirectional, padding-only mask (:func:`padding_mask`), plus a linear stop head.
* Inference (:func:`insert_until_stop`): while ``P(stop) < threshold`` and the row is
  shorter than ``max_len``, sample ``(gap, token)`` jointly from the flattened softmax
  and insert; greedy decoding takes either the argmax pair or (as the authors' predictor
  does) the argmax gap of the gap marginal, then the argmax token in it. Given a partial
  sequence this is infilling of unknown length.

Notation: B batch, N padded length of the clean sequences, L = 1 + N slots (CLS first),
V vocabulary, C model dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core import masks
from ar_core.errors import ConfigError, InputError
from ar_core.model import Transformer, TransformerConfig

__all__ = [
    "InsertionBatch",
    "InsertionModel",
    "InsertionScorer",
    "drop_tokens",
    "ilm_loss",
    "insert_until_stop",
    "padding_mask",
]


@dataclass
class InsertionBatch:
    """A noised batch. ``tokens`` (B, L): ``[CLS ; kept ; PAD...]``; ``lengths`` (B,) valid
    slots (1 + kept); ``targets`` (B, L, V) the normalised (gap x token) distribution (all
    zero in a row where nothing was dropped); ``stop`` (B,) float, 1 iff nothing dropped."""

    tokens: Tensor
    lengths: Tensor
    targets: Tensor
    stop: Tensor


class InsertionScorer(Protocol):
    """What the sampler needs: insertion logits (B, L, V) and stop logits (B,)."""

    def __call__(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]: ...


def padding_mask(lengths: Tensor, n: int) -> masks.MaskSpec:
    """Bidirectional attention over the first ``lengths[b]`` of ``n`` positions of each
    row: ``ar_core.masks.key_padding`` of the valid slots."""
    slots = torch.arange(n, device=lengths.device)[None, :]  # (1, n)
    return masks.key_padding(slots < lengths[:, None])  # (B, n) bool


def _check_ids(tokens: Tensor, what: str) -> None:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InputError(f"{what} must be a (B, N) long tensor, got {shape}")


def drop_tokens(
    tokens: Tensor,
    lengths: Tensor,
    *,
    vocab_size: int,
    cls_id: int,
    pad_id: int,
    generator: torch.Generator,
    droppable: Tensor | None = None,
) -> InsertionBatch:
    """Noise clean sequences ``tokens`` (B, N) (valid prefix ``lengths`` (B,)) for ILM.

    Each row drops ``k ~ Uniform{0, ..., D}`` of its ``D`` droppable positions
    (``droppable`` (B, N) bool, default every valid position), chosen uniformly.
    """
    _check_ids(tokens, "drop_tokens tokens")
    B, N = tokens.shape
    if lengths.shape != (B,) or bool((lengths < 0).any()) or bool((lengths > N).any()):
        raise InputError(f"lengths must be (B,) = ({B},) with values in [0, {N}]")
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        raise InputError(f"token ids must lie in [0, {vocab_size})")
    valid = torch.arange(N)[None, :] < lengths[:, None]  # (B, N)
    drop_ok = valid if droppable is None else (droppable & valid)
    if drop_ok.shape != (B, N):
        raise InputError(f"droppable must be (B, N) = {(B, N)}, got {tuple(drop_ok.shape)}")
    n_ok = drop_ok.sum(1)  # (B,)
    k = (torch.rand(B, generator=generator) * (n_ok + 1)).floor().long().clamp(max=n_ok)  # (B,)
    # a uniform random subset of size k: the k droppable positions with the smallest keys
    keys = torch.rand(B, N, generator=generator).masked_fill(~drop_ok, 2.0)  # (B, N)
    rank = keys.argsort(1).argsort(1)  # (B, N) rank of each position's key
    dropped = drop_ok & (rank < k[:, None])  # (B, N)
    kept = valid & ~dropped
    # slot of every original position: 1 + kept tokens before it (CLS is slot 0);
    # a dropped token at position i goes to the gap after slot (kept before i)
    kept_before = torch.cumsum(kept.long(), 1) - kept.long()  # (B, N)
    L = N + 1
    out = torch.full((B, L), pad_id, dtype=torch.long)
    out[:, 0] = cls_id
    rows = torch.arange(B)[:, None].expand(B, N)
    out[rows[kept], 1 + kept_before[kept]] = tokens[kept]
    targets = torch.zeros(B, L, vocab_size)
    targets.index_put_(
        (rows[dropped], kept_before[dropped], tokens[dropped]),
        torch.ones(int(dropped.sum())),
        accumulate=True,
    )
    targets = targets / k.clamp(min=1).to(targets.dtype)[:, None, None]
    return InsertionBatch(
        tokens=out, lengths=1 + kept.sum(1), targets=targets, stop=(k == 0).float()
    )


class InsertionModel(nn.Module):
    """A bidirectional :class:`Transformer` plus a stop head on the CLS (slot 0) state."""

    def __init__(self, transformer: Transformer) -> None:
        super().__init__()
        self.transformer = transformer
        self.stop_head = nn.Linear(transformer.cfg.dim, 1)

    @property
    def cfg(self) -> TransformerConfig:
        """The inner Transformer's config (``ar_core.checkpoint.save_model`` writes it)."""
        return self.transformer.cfg

    def forward(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Insertion logits (B, L, V) and stop logits (B,) for ``tokens`` (B, L)."""
        out = self.transformer(tokens, mask=padding_mask(lengths, tokens.shape[1]))
        return out.logits, self.stop_head(out.hidden[:, 0]).squeeze(-1)  # (B, L, V), (B,)


def _flat_log_probs(logits: Tensor, lengths: Tensor) -> Tensor:
    """log-softmax over the flattened (slot x token) grid of each row, padded slots
    excluded: (B, L, V) -> (B, L * V)."""
    B, L, V = logits.shape
    slot_ok = torch.arange(L, device=logits.device)[None, :] < lengths[:, None]  # (B, L)
    masked = logits.float().masked_fill(~slot_ok[:, :, None], float("-inf"))
    return masked.reshape(B, L * V).log_softmax(-1)  # (B, L*V)


def ilm_loss(logits: Tensor, stop_logits: Tensor, batch: InsertionBatch) -> Tensor:
    """Insertion cross-entropy (rows with something dropped) + stop BCE (all rows)."""
    B, L, V = logits.shape
    logp = _flat_log_probs(logits, batch.lengths.to(logits.device))  # (B, L*V)
    target = batch.targets.reshape(B, L * V).to(logp.device)
    # 0 * -inf would be nan: targets are zero wherever the mask is -inf
    nll = -(target * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)  # (B,)
    has_drop = batch.stop.to(logp.device) < 0.5
    insert = (nll * has_drop).sum() / has_drop.sum().clamp(min=1)
    stop = F.binary_cross_entropy_with_logits(stop_logits.float(), batch.stop.to(logp.device))
    return insert + stop


def _insert(row: Tensor, length: int, slot: int, token: int) -> Tensor:
    """Insert ``token`` into ``row`` (L,) right after ``slot``; the last pad drops off."""
    new = row.clone()
    new[slot + 2 : length + 1] = row[slot + 1 : length]
    new[slot + 1] = token
    return new


@torch.no_grad()
def insert_until_stop(
    scorer: InsertionScorer,
    tokens: Tensor,
    lengths: Tensor,
    *,
    max_len: int,
    pad_id: int,
    generator: torch.Generator,
    stop_threshold: float = 0.5,
    allowed_tokens: Tensor | None = None,
    min_slot: Tensor | None = None,
    greedy: bool = False,
    greedy_by: Literal["pair", "gap"] = "pair",
) -> tuple[Tensor, Tensor]:
    """Insert jointly sampled (gap, token) pairs until each row stops.

    ``tokens`` (B, T): ``[CLS ; partial sequence ; PAD...]`` with ``lengths`` (B,) valid
    slots. A row stops when ``sigmoid(stop) >= stop_threshold`` or it holds ``max_len``
    slots (CLS included). ``allowed_tokens`` (V,) bool restricts the inserted ids (e.g. no
    CLS/PAD); ``min_slot`` (B,) forbids gaps before that slot (a fixed prompt);
    ``greedy`` takes the most likely pair instead of sampling one: with ``greedy_by="pair"``
    the argmax of the joint (gap x token) distribution; with ``"gap"`` the argmax gap of
    the marginal ``p(gap) = sum_token p(gap, token)``, then the argmax token in that gap
    (the official ILM predictor's top-1/top-1 setting). Sampling is the same either way.
    Returns ``(tokens (B, max_len), lengths (B,))``.
    """
    _check_ids(tokens, "insert_until_stop tokens")
    if not (stop_threshold > 0.0 and stop_threshold <= 1.0):
        raise ConfigError(f"stop_threshold must lie in (0, 1], got {stop_threshold}")
    if greedy_by not in ("pair", "gap"):
        raise ConfigError(f"greedy_by must be 'pair' or 'gap', got {greedy_by!r}")
    B, T = tokens.shape
    if lengths.shape != (B,) or bool((lengths < 1).any()):
        raise InputError(f"lengths must be (B,) = ({B},) with every row >= 1 (the CLS slot)")
    if int(lengths.max()) > max_len or max_len < T:
        raise InputError(
            f"max_len={max_len} is shorter than the input ({T} slots, longest row "
            f"{int(lengths.max())}); raise max_len"
        )
    seq = torch.full((B, max_len), pad_id, dtype=torch.long, device=tokens.device)
    seq[:, :T] = tokens
    lens = lengths.clone().to(tokens.device)
    low = torch.zeros(B, dtype=torch.long) if min_slot is None else min_slot.cpu()
    done = torch.zeros(B, dtype=torch.bool)
    while True:
        done |= lens.cpu() >= max_len
        if bool(done.all()):
            break
        width = int(lens.max())
        logits, stop_logits = scorer(seq[:, :width], lens)  # (B, W, V), (B,)
        done |= torch.sigmoid(stop_logits.float()).cpu() >= stop_threshold
        if bool(done.all()):
            break
        V = logits.shape[-1]
        slot = torch.arange(width, device=logits.device)
        slot_ok = (slot[None, :] >= low.to(logits.device)[:, None]) & (
            slot[None, :] < lens[:, None]
        )  # (B, W)
        bad = ~slot_ok[:, :, None]
        if allowed_tokens is not None:
            bad = bad | ~allowed_tokens.to(logits.device)[None, None, :]
        probs = logits.float().masked_fill(bad, float("-inf")).reshape(B, width * V).softmax(-1)
        if bool(probs[~done.to(probs.device)].isnan().any()):
            raise InputError("no (gap, token) pair is allowed in a running row; check min_slot")
        for b in (~done).nonzero().flatten().tolist():
            row = probs[b].cpu()  # (W*V,), flat index = gap * V + token
            if not greedy:
                g, tok = divmod(int(torch.multinomial(row, 1, generator=generator)), V)
            elif greedy_by == "pair":
                g, tok = divmod(int(row.argmax()), V)
            else:
                grid = row.view(width, V)
                g = int(grid.sum(1).argmax())
                tok = int(grid[g].argmax())
            seq[b] = _insert(seq[b], int(lens[b]), g, tok)
            lens[b] += 1
    return seq, lens
