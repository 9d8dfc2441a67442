"""Set-based prompting: order-independent prompts through positions and a mask.

From "Set-Based Prompting: Provably Solving the Language Model Order Dependency Problem"
(McIlroy-Young et al., 2024, arXiv:2406.06581). A prompt ``[prefix ; {option_0, ...,
option_{K-1}} ; suffix]`` is laid out so that nothing depends on the order of the options:

* every option attends (causally) to the shared prefix and to itself, never to another
  option – ``ar_core.masks.sets``;
* every option's positions start at ``len(prefix)``, so each one is encoded exactly as if
  it came first;
* the suffix sees everything and its positions start at ``len(prefix) + max option len``.

Then each suffix query sees the same set of (key, value) pairs whatever the order; only
the order of the sum over keys changes, so logits agree to the last few ulps and greedy
continuations are identical. No training. The same layout runs on ``ar_core.Transformer``
(``positions=``, ``mask=``) and on Hugging Face decoders (``position_ids=`` and a 4-D
additive ``attention_mask``, which transformers 5.x passes through unchanged to the eager
and SDPA attention functions).

Notation: N prompt tokens, P prefix length, K options, M the longest option, S suffix
length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ar_core import masks
from ar_core.errors import InputError
from ar_core.generation import GenerationConfig, Rows, TokenPicker, prefill
from ar_core.masks import MaskSpec
from ar_core.protocols import CausalLM

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

TokenIds = Sequence[int] | Tensor
# next-token logits (V,) of the last token of a prompt
NextTokenLogits = Callable[["SetPrompt"], Tensor]


@dataclass(frozen=True)
class SetPrompt:
    """The laid-out prompt: tokens, positions and mask, plus the segment lengths."""

    tokens: Tensor  # (N,) long: prefix, options in the given order, suffix
    positions: Tensor  # (N,) long
    mask: MaskSpec  # masks.sets(P, option_lens, S)
    prefix_len: int
    option_lens: tuple[int, ...]
    suffix_len: int
    # (P,), the options, (S,): kept to rebuild the prompt with a longer suffix
    parts: tuple[Tensor, tuple[Tensor, ...], Tensor]

    def __len__(self) -> int:
        return int(self.tokens.numel())


def _ids(x: TokenIds, what: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.long)
    if t.dim() != 1:
        raise InputError(f"{what} must be a 1-D sequence of token ids, got shape {tuple(t.shape)}")
    return t


def build_set_prompt(prefix: TokenIds, options: Sequence[TokenIds], suffix: TokenIds) -> SetPrompt:
    """Lay out ``prefix``, the set ``options`` (each non-empty) and ``suffix``."""
    pre = _ids(prefix, "prefix")
    opts = tuple(_ids(o, f"option {i}") for i, o in enumerate(options))
    suf = _ids(suffix, "suffix")
    if not opts or any(o.numel() == 0 for o in opts):
        raise InputError(
            f"need at least one option, each non-empty; got lengths {[o.numel() for o in opts]}"
        )
    P, S = pre.numel(), suf.numel()
    M = max(o.numel() for o in opts)
    tokens = torch.cat([pre, *opts, suf])  # (N,)
    positions = torch.cat(
        [
            torch.arange(P),  # (P,)
            *(P + torch.arange(o.numel()) for o in opts),  # each option restarts at P
            P + M + torch.arange(S),  # (S,) after the longest option
        ]
    )
    lens = tuple(o.numel() for o in opts)
    return SetPrompt(tokens, positions, masks.sets(P, lens, S), P, lens, S, (pre, opts, suf))


def concatenated_prompt(
    prefix: TokenIds, options: Sequence[TokenIds], suffix: TokenIds
) -> SetPrompt:
    """The control without the scheme: the options concatenated in the given order, causal
    mask, consecutive positions. (A set of one option – the concatenation – is exactly
    that layout.)"""
    pre = _ids(prefix, "prefix")
    joined = torch.cat([_ids(o, f"option {i}") for i, o in enumerate(options)])
    return build_set_prompt(pre, [joined], suffix)


def extend(prompt: SetPrompt, new_tokens: TokenIds) -> SetPrompt:
    """The prompt with ``new_tokens`` appended to its suffix (generated tokens)."""
    pre, opts, suf = prompt.parts
    return build_set_prompt(pre, opts, torch.cat([suf, _ids(new_tokens, "new_tokens")]))


def dense_mask(prompt: SetPrompt) -> Tensor:
    """(N, N) bool, True = query row may attend to key column."""
    n = len(prompt)
    return prompt.mask.to_dense(n, n)[0]


def hf_attention_mask(prompt: SetPrompt, dtype: torch.dtype) -> Tensor:
    """(1, 1, N, N) additive mask for a Hugging Face forward: 0 where visible, the dtype's
    most negative value where not. transformers 5.x returns any 4-D mask unchanged; the
    eager attention *adds* it to the scores (a bool mask would be added as 0/1), SDPA
    accepts either form, so the additive one works for both."""
    visible = dense_mask(prompt)  # (N, N)
    hidden = torch.full(visible.shape, torch.finfo(dtype).min, dtype=dtype)
    return torch.where(visible, torch.zeros((), dtype=dtype), hidden)[None, None]


def _check_suffix(prompt: SetPrompt) -> None:
    if prompt.suffix_len == 0:
        raise InputError(
            "the prompt needs a non-empty suffix: the last token of an option depends on "
            "which option comes last"
        )


def ar_next_token_logits(model: CausalLM, prompt: SetPrompt) -> Tensor:
    """Next-token logits (V,) after the prompt, from an ar model (an ``ar_core.Transformer``
    or ``ar_text.from_hf(...)``; uncached)."""
    _check_suffix(prompt)
    device = getattr(model, "device", torch.device("cpu"))
    out = model(
        prompt.tokens[None].to(device),  # (1, N)
        positions=prompt.positions.to(device),  # (N,)
        mask=prompt.mask,
    )
    return out.logits[0, -1]  # (V,)


def hf_next_token_logits(model: PreTrainedModel, prompt: SetPrompt) -> Tensor:
    """Next-token logits (V,) after the prompt, from a Hugging Face causal LM."""
    _check_suffix(prompt)
    device, dtype = model.device, model.dtype
    out = model(
        input_ids=prompt.tokens[None].to(device),  # (1, N)
        position_ids=prompt.positions[None].to(device),  # (1, N)
        attention_mask=hf_attention_mask(prompt, dtype).to(device),  # (1, 1, N, N)
        use_cache=False,
    )
    return out.logits[0, -1]  # (V,)


def greedy_continuation(
    next_logits: NextTokenLogits, prompt: SetPrompt, n_tokens: int
) -> list[int]:
    """``n_tokens`` greedy tokens, recomputing the set-based forward each step (no cache):
    each new token joins the suffix, which sees the whole set."""
    _check_suffix(prompt)
    out: list[int] = []
    for _ in range(n_tokens):
        token = int(next_logits(prompt).argmax())
        out.append(token)
        prompt = extend(prompt, [token])
    return out


@torch.no_grad()
def greedy_continuation_cached(
    model: CausalLM, prompt: SetPrompt, n_tokens: int
) -> tuple[list[int], Tensor]:
    """``n_tokens`` greedy tokens with a KV cache: ar-core's :func:`~ar_core.generation.prefill`
    of the laid-out prompt (its positions and set mask) fills the cache, then one forward
    per new token at position ``P + M + S + i``, which sees every cached entry (the suffix
    sees the whole set). Tokens are picked by ar-core's :class:`TokenPicker` (greedy) and
    kept by its :class:`Rows`.

    ``model`` follows :class:`~ar_core.protocols.CausalLM`: an ``ar_core.Transformer`` or
    ``ar_text.from_hf(hf_model)``. Returns the tokens and the next-token logits of every
    step (n_tokens, V); both equal those of the uncached :func:`greedy_continuation`
    (tested in float64).
    """
    _check_suffix(prompt)
    if n_tokens < 1:
        raise InputError(f"n_tokens must be >= 1, got {n_tokens}")
    cache = model.new_cache(1, max_len=len(prompt) + n_tokens)
    device = cache.lengths.device
    tokens = prompt.tokens[None].to(device)  # (1, N)
    lengths = torch.tensor([len(prompt)], device=device)  # (1,)
    logits = prefill(
        model, tokens, cache, lengths, positions=prompt.positions.to(device), mask=prompt.mask
    )  # (1, V)
    config = GenerationConfig(max_new_tokens=n_tokens, temperature=0.0)
    picker = TokenPicker(config, do_sample=False)
    rows = Rows(tokens, lengths, config, scratch=0)
    start = prompt.prefix_len + max(prompt.option_lens) + prompt.suffix_len
    steps = [logits[0]]  # (V,) each
    while True:
        token = picker.pick(logits, rows.seq)  # (1,)
        rows.emit(token[:, None], torch.ones_like(token))
        if rows.all_finished():
            break
        out = model(
            token[:, None],  # (1, 1)
            positions=start + rows.n_new[:, None] - 1,  # (1, 1)
            cache=cache,  # causal over cache slots: the new token sees every entry
        )
        logits = out.logits[:, -1]  # (1, V)
        steps.append(logits[0])
    return rows.new_tokens[0].tolist(), torch.stack(steps)  # (n_tokens, V)


__all__ = [
    "SetPrompt",
    "ar_next_token_logits",
    "build_set_prompt",
    "concatenated_prompt",
    "dense_mask",
    "extend",
    "greedy_continuation",
    "greedy_continuation_cached",
    "hf_attention_mask",
    "hf_next_token_logits",
]
