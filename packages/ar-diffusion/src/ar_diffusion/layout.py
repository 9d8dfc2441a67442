"""Where prompts and new tokens sit in the columns of a diffusion sampler's batch.

The diffusion samplers attend bidirectionally (MDLM, FreeCache) or block-causally
(BD3-LM) over the prompt, so the right padding of ``ar.generate``'s ragged prompts would
be seen by the new tokens. Instead every row is laid out *left-padded*: row b holds
``pad_b = P - P_b`` padding columns, its ``P_b`` prompt tokens, then the ``N`` new
positions, so the new tokens of every row share the columns ``P .. P + N - 1`` (one
block of [MASK] is one column range for the whole batch, and a KV cache slot is a
column). Each row keeps its own RoPE positions (``column - pad_b``: a row's prompt starts
at position 0, as when it runs alone), and padding columns are hidden from every query
by ``masks.key_padding``; a padding query sees only itself (a query that sees no key at
all would give NaN that the next layer's values carry). With prompts of one length
nothing changes: no padding, positions ``0 .. T - 1``, the plain masks.

For block-causal sampling the blocks are cut *backwards* from the end of the prompt
(``block_step_ids``): the new tokens start a block, and the prompt's last block is the
one that may be shorter. With one prompt length that is a multiple of the block size it
equals cutting from position 0.

Notation: B rows, P the padded prompt width, P_b row b's prompt length, N new tokens,
T = P + N columns, L block size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ar_core import masks
from ar_core.errors import InputError

__all__ = ["PromptLayout", "block_step_ids"]


def block_step_ids(prompt_width: int, n_new: int, block_size: int) -> Tensor:
    """Block index of each of the ``prompt_width + n_new`` columns: the prompt columns cut
    into blocks of ``block_size`` backwards from its end (its first block may be shorter),
    the new columns whole blocks after it. (T,) long."""
    L = block_size
    prompt_blocks = (prompt_width + L - 1) // L
    cols = torch.arange(prompt_width)
    return torch.cat(
        [
            prompt_blocks - 1 - (prompt_width - 1 - cols) // L,
            prompt_blocks + torch.arange(n_new) // L,
        ]
    )


@dataclass
class PromptLayout:
    """The left-padded layout of one batch (see the module docstring).

    ``tokens`` (B, P): each row's prompt right-aligned, padding columns hold token 0.
    ``positions`` (B, T) RoPE positions, ``valid`` (B, T) False on padding; both None
    when every prompt has length P (then positions are ``0 .. T - 1``).
    """

    tokens: Tensor
    prompt_lengths: Tensor
    n_new: int
    positions: Tensor | None
    valid: Tensor | None

    @classmethod
    def build(
        cls, model: Any, input_ids: Tensor, prompt_lengths: Tensor, n_new: int, strategy: str
    ) -> PromptLayout:
        """Check that every row's ``P_b + n_new`` positions fit the model (and the padded
        width ``P + n_new``, the columns of the batch), then lay the rows out."""
        P = input_ids.shape[1]
        longest = int(prompt_lengths.max())
        shortest = int(prompt_lengths.min())
        if P + n_new > model.max_seq_len:
            raise InputError(
                f"{strategy}: prompt length {longest} + max_new_tokens {n_new} = "
                f"{P + n_new} positions (padded prompt width {P}) exceed the model's "
                f"max_seq_len={model.max_seq_len}; shorten the prompt or lower max_new_tokens"
            )
        if shortest == P:
            return cls(input_ids, prompt_lengths, n_new, None, None)
        device = input_ids.device
        pad = P - prompt_lengths  # (B,)
        cols = torch.arange(P + n_new, device=device)[None, :]  # (1, T)
        src = (cols[:, :P] - pad[:, None]).clamp_min(0)  # (B, P): prompt index per column
        valid = cols >= pad[:, None]  # (B, T)
        tokens = torch.where(valid[:, :P], input_ids.gather(1, src), 0)  # (B, P)
        positions = (cols - pad[:, None]).clamp_min(0)  # (B, T)
        return cls(tokens, prompt_lengths, n_new, positions, valid)

    @property
    def width(self) -> int:
        """P, the padded prompt width: the first new column."""
        return self.tokens.shape[1]

    @property
    def ragged(self) -> bool:
        return self.valid is not None

    def cols(self, start: int, stop: int) -> Tensor | None:
        """RoPE positions of the columns ``start .. stop - 1``: (B, stop - start), or None
        when the rows are not ragged (the model's default positions are the columns)."""
        if self.positions is None:
            return None
        return self.positions[:, start:stop]

    def _keys(self, structure: masks.MaskSpec, order: Tensor | None = None) -> masks.MaskSpec:
        """``structure`` restricted to real keys; a padding query sees itself only.
        ``order`` (T,): the columns held by the slots, when they are permuted."""
        if self.valid is None:
            return structure
        T = self.valid.shape[1]
        valid = self.valid if order is None else self.valid[:, order]
        own = masks.document(torch.arange(T), causal=False)  # kv == q
        return (structure & masks.key_padding(valid)) | own

    def bidirectional(self, order: Tensor | None = None) -> masks.MaskSpec:
        """Every real column sees every real column (MDLM, FreeCache); ``order`` (T,): the
        column each slot holds when the slots are a permutation of the columns."""
        return self._keys(masks.prefix(self.width + self.n_new), order)

    def all_positions(self) -> Tensor:
        """RoPE positions of every column: (B, T) (``0 .. T - 1`` when not ragged)."""
        if self.positions is not None:
            return self.positions
        T = self.width + self.n_new
        return torch.arange(T, device=self.tokens.device)[None, :].expand(self.tokens.shape[0], T)

    def block_causal(self, block_size: int) -> masks.MaskSpec:
        """Block-causal over :func:`block_step_ids` (BD3-LM sampling)."""
        steps = block_step_ids(self.width, self.n_new, block_size)
        return self._keys(masks.block_causal(steps.to(self.tokens.device)))

    def real_tokens(self, input_ids: Tensor) -> Tensor:
        """The right-padded ``input_ids`` with -1 after each row's prompt (what the mask-id
        check must look at: padding may hold any id)."""
        P = input_ids.shape[1]
        cols = torch.arange(P, device=input_ids.device)[None, :]
        return torch.where(cols < self.prompt_lengths[:, None], input_ids, -1)
