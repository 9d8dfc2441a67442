"""UniGenX-style generation of sequences that interleave discrete tokens and numbers.

Zhang et al., "UniGenX: Unified Generation of Sequence and Structure with Autoregressive
Diffusion" (2025, arXiv:2503.06687): one causal LM reads and writes a sequence in which
some positions are *numeric slots*. The slot's input is the embedding of a ``[NUM]``
token plus a projection of its value; where the next token is ``[NUM]``, a small
diffusion head (:class:`~ar_diffusion.heads.DiffusionHead`, MAR-style) conditioned on
the same hidden state samples the value, which is fed back as the slot's input. The
loss is the next-token cross-entropy plus the head's loss at the numeric slots.

Notation: B batch, L length, W width. ``tokens`` (B, L) ids (``num_id`` at the slots),
``values`` (B, L) floats (read only at the slots).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError
from ar_core.model import build_transformer

from .heads import DiffusionHead, FlowHead, GMMHead, MSEHead

__all__ = ["UniGenX"]


class UniGenX(nn.Module):
    """A causal ``ar_core`` Transformer over ``vocab_size`` ids, the last being ``[NUM]``,
    with a continuous ``head`` (default: a 1-D DiffusionHead) for the numeric slots."""

    def __init__(
        self,
        vocab_size: int,
        *,
        width: int = 64,
        layers: int = 2,
        heads: int = 2,
        max_len: int = 64,
        head: DiffusionHead | FlowHead | GMMHead | MSEHead | None = None,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ConfigError(
                f"UniGenX: vocab_size must be >= 2 (data ids + [NUM]), got {vocab_size}"
            )
        self.num_id = vocab_size - 1
        self.transformer = build_transformer(
            vocab_size=vocab_size,
            dim=width,
            n_layers=layers,
            n_heads=heads,
            max_seq_len=max_len,
            ffn_hidden=2 * width,
        )
        self.value_in = nn.Linear(1, width)
        self.head = head if head is not None else DiffusionHead(1, width, width=64, depth=2)
        if self.head.dim != 1:
            raise ConfigError("UniGenX: head must be a ContinuousHead over 1-D values (dim=1)")
        if self.head.cond_dim != width:
            raise ConfigError(
                f"UniGenX: head.cond_dim={self.head.cond_dim} must equal width={width}"
            )

    def embeddings(self, tokens: Tensor, values: Tensor) -> Tensor:
        """(B, L) ids and values -> (B, L, W): token embedding, plus the value at slots."""
        emb: Tensor = self.transformer.tok_embeddings(tokens)
        is_num = (tokens == self.num_id)[..., None]
        return emb + is_num * self.value_in(values[..., None].float())

    def _check(self, tokens: Tensor, values: Tensor) -> None:
        if tokens.shape != values.shape or tokens.dim() != 2:
            raise InputError(
                f"UniGenX: tokens and values must both be (B, L), got {tuple(tokens.shape)} "
                f"and {tuple(values.shape)}"
            )
        slots = tokens == self.num_id
        if not torch.isfinite(values[slots]).all():
            raise InputError("UniGenX: a numeric slot holds NaN/inf; drop or impute it")

    def loss(self, tokens: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """(next-token cross-entropy, head loss at the numeric slots), both means."""
        self._check(tokens, values)
        out = self.transformer(tokens, query_embeds=self.embeddings(tokens, values))
        ce = nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        slot = tokens[:, 1:] == self.num_id  # the next position is a slot
        h = out.hidden[:, :-1][slot]  # (S, W): the state before each slot
        return ce, self.head.loss(h, values[:, 1:][slot][:, None]).mean()

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        new_tokens: int,
        *,
        generator: torch.Generator | None = None,
        head_steps: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sample ``new_tokens`` after ``prompt`` (B, P) ids (no slots) with the KV cache;
        at a slot the head samples the value from the same hidden state and it is fed
        back. Returns (tokens (B, P + n), values (B, P + n), 0 off the slots)."""
        if (prompt == self.num_id).any():
            raise InputError("UniGenX.generate: the prompt must not contain numeric slots")
        B, P = prompt.shape
        cache = self.transformer.new_cache(B, P + new_tokens)
        tokens = prompt.clone()
        values = torch.zeros(B, P, device=prompt.device)
        out = self.transformer(prompt, cache=cache, query_embeds=self.embeddings(prompt, values))
        for _ in range(new_tokens):
            h = out.hidden[:, -1]  # (B, W)
            probs = out.logits[:, -1].float().softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            val = self.head.sample(h, generator=generator, steps=head_steps)  # (B, 1)
            val = torch.where(nxt == self.num_id, val, torch.zeros_like(val))
            tokens = torch.cat([tokens, nxt], 1)
            values = torch.cat([values, val], 1)
            out = self.transformer(nxt, cache=cache, query_embeds=self.embeddings(nxt, val[:, 0:1]))
        return tokens, values
