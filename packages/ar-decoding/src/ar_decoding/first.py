"""FiRST: per-layer routers choose, from the prompt, which layers to skip for the whole
decode (strategy ``first``; ``skip_layers=`` for a fixed set; self-speculative decoding
with the skipping model as the draft).

Jain et al., "FiRST: Finetuning Router-Selective Transformers for Input-Adaptive Latency
Reduction" (2024, arXiv:2410.12513); the self-speculative / layer-skip family of Zhang et
al., "A Survey on Parallel Text Generation" (2025).

Routers (:class:`FiRSTRouters`): one per layer, a linear map of the layer's input hidden
state mean-pooled over the prompt to a keep probability ``r_l = sigmoid(.)``. At prefill
each row keeps layer ``l`` iff ``r_l >= 0.5`` (decided layer by layer: a skipped layer
changes the inputs of the later routers); the skip set is then fixed for every decode step,
so the KV cache stays consistent (unlike per-token early exit: a kept layer always has its
keys and values for every position). Training (:func:`train_routers`) is soft:
``y = r * Block(x) + (1 - r) * x`` with the LM loss on the tokens after the prompt plus
``skip_weight * mean(r)`` (the skip regulariser; the paper's exact form is not verified).

:class:`LayerSkipModel` is the ``CausalLM`` view of an ar-core ``Transformer`` under a skip
set (one set, or one per row): layers every row skips are left out of the forward, a
layer only some rows skip is blended with ``torch.where`` (those rows get its input back
exactly). Its cache is the base's (a skipped layer's slots stay unused).

Strategy ``first``: ``routers=`` (decided on the prompt, one extra forward over it) or a
fixed ``skip_layers=``; then ar-core's greedy/sample loop on the skipping model (lossy,
faster), or with ``speculative=True`` chain speculative decoding whose draft is the
skipping model (lossless: the output is the full model's).

``from_hf`` models (``ar_text.hf.HFCausalLM``: Llama-likes, GPT-2, ...) take all of the
above: their decoder layers (found by :func:`ar_decoding.first_hf.hf_layers`) stay in
place and only their ``forward`` is replaced for a call, a skipped layer returning its
input (so it writes and reads no cache entries), a routed one running the same router
logic as an ar-core block.

Notation: B rows, L layers, C width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core import masks
from ar_core.errors import ConfigError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Streamer,
    TokenPicker,
    decode_with_pick,
)
from ar_core.model import ModelOutput, Transformer
from ar_core.protocols import CausalLM, KVCache
from ar_decoding import first_hf
from ar_decoding.speculative import speculative

__all__ = ["FiRSTRouters", "LayerSkipModel", "choose_skip", "first", "train_routers"]


def _layers(model: object) -> nn.ModuleList:
    """The blocks of an ar-core ``Transformer`` or the decoder layers of a ``from_hf``
    model."""
    if isinstance(model, nn.Module) and first_hf.is_hf(model):
        return first_hf.hf_layers(model).layers
    layers = getattr(model, "layers", None)
    if not isinstance(model, Transformer) or not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"FiRST skips the blocks of an ar_core Transformer or the decoder layers of a "
            f"from_hf model (ar_text.hf.from_hf), got {type(model).__name__}"
        )
    return layers


def _first_param(model: nn.Module) -> Tensor:
    return next(model.parameters())


def skip_mask(skip_layers: Any, n_layers: int, batch_size: int | None = None) -> Tensor:
    """A skip set as (L,) bool (ints) or (B, L) bool (a tensor); every row must keep a
    layer and indices must lie in ``[0, L)``."""
    if isinstance(skip_layers, Tensor) and skip_layers.dtype == torch.bool:
        mask = skip_layers.cpu()
        if mask.shape[-1] != n_layers or mask.ndim not in (1, 2):
            raise ConfigError(
                f"a skip mask must be (L,) or (B, L) bool with L = {n_layers}, got "
                f"{tuple(mask.shape)}"
            )
    else:
        ids = [int(i) for i in skip_layers]
        bad = [i for i in ids if not 0 <= i < n_layers]
        if bad:
            raise ConfigError(
                f"skip_layers {bad} are not layers of a {n_layers}-layer model (use 0..{n_layers - 1})"
            )
        mask = torch.zeros(n_layers, dtype=torch.bool)
        mask[ids] = True
    if bool(mask.all(-1).any()):
        raise ConfigError(
            f"the skip set removes every one of the {n_layers} layers (nothing would be "
            f"computed); keep at least one layer"
        )
    return mask


class LayerSkipModel(nn.Module):
    """``model`` (an ar-core ``Transformer`` or a ``from_hf`` model) with the layers of
    ``skip_layers`` skipped: an iterable of layer indices (every row), or a (B, L) bool
    tensor (per row). Follows ``CausalLM``; shares the base's weights and cache layout."""

    def __init__(self, model: nn.Module, skip_layers: Iterable[int] | Tensor) -> None:
        super().__init__()
        self.layers = _layers(model)
        self.model = model
        self.skip = skip_mask(skip_layers, len(self.layers))
        self.vocab_size: int = int(getattr(model, "vocab_size"))  # noqa: B009
        self.max_seq_len: int = int(getattr(model, "max_seq_len"))  # noqa: B009
        every = self.skip if self.skip.ndim == 1 else self.skip.all(0)
        some = torch.zeros_like(every) if self.skip.ndim == 1 else self.skip.any(0) & ~every
        self._kept = int((~every).sum())
        self._hf: dict[int, first_hf.LayerFn] | None = None
        if first_hf.is_hf(model):  # the layers stay in place, their forward is replaced
            self._hf = {}
            for i in range(len(self.layers)):
                if bool(every[i]):
                    self._hf[i] = _skip_fn
                elif bool(some[i]):
                    self._hf[i] = _row_skip_fn(self.skip[:, i])
            self.kept = nn.ModuleList()
            return
        self.kept = nn.ModuleList(
            _RowSkip(layer, self.skip[:, i]) if bool(some[i]) else layer
            for i, layer in enumerate(self.layers)
            if not bool(every[i])
        )

    @property
    def kept_layers(self) -> int:
        return self._kept

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        mask: masks.MaskSpec | None = None,
        commit: bool = True,
    ) -> ModelOutput:
        if self._hf is not None:
            with first_hf.patched(first_hf.hf_layers(self.model), self._hf):
                out: ModelOutput = self.model(
                    tokens, positions=positions, cache=cache, mask=mask, commit=commit
                )
            return out
        with _swapped(self.model, self.kept):
            out = self.model(tokens, positions=positions, cache=cache, mask=mask, commit=commit)
        return out

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        cache: KVCache = self.model.new_cache(batch_size, max_len=max_len)  # type: ignore[operator]
        return cache


def _skip_fn(x: Tensor, compute: Callable[[], Tensor]) -> Tensor:
    return x  # the layer does not run: no compute, no cache entries


def _row_skip_fn(skip: Tensor) -> first_hf.LayerFn:
    """The rows of ``skip`` (B,) bool get the layer's input back."""

    def fn(x: Tensor, compute: Callable[[], Tensor]) -> Tensor:
        return torch.where(skip.to(x.device)[:, None, None], x, compute())

    return fn


class _RowSkip(nn.Module):
    """A block that the rows of ``skip`` (B,) bool skip: those rows get its input back."""

    def __init__(self, block: nn.Module, skip: Tensor) -> None:
        super().__init__()
        self.block, self.skip = block, skip

    def forward(self, x: Tensor, *args: Any) -> Tensor:
        return torch.where(self.skip.to(x.device)[:, None, None], x, self.block(x, *args))


@contextmanager
def _swapped(model: nn.Module, layers: nn.ModuleList) -> Iterator[None]:
    original = model.layers
    model.layers = layers
    try:
        yield
    finally:
        model.layers = original


class FiRSTRouters(nn.Module):
    """One router per layer: ``r_l = sigmoid(w_l . mean_prompt(x_l) + b_l)``, the
    probability of keeping layer ``l``; initialised to keep (``b = keep_bias``)."""

    def __init__(self, dim: int, n_layers: int, keep_bias: float = 3.0) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(dim, 1) for _ in range(n_layers))
        for lin in self.linears():
            nn.init.zeros_(lin.weight)
            nn.init.constant_(lin.bias, keep_bias)

    @classmethod
    def for_model(cls, model: nn.Module, keep_bias: float = 3.0) -> FiRSTRouters:
        """Routers for every layer of ``model`` (an ar-core ``Transformer`` or a ``from_hf``
        model), on its device and in its dtype."""
        layers = _layers(model)
        if first_hf.is_hf(model):
            dim = first_hf.hf_layers(model).dim
        else:
            assert isinstance(model, Transformer)
            dim = model.cfg.dim
        w = _first_param(model)
        return cls(dim, len(layers), keep_bias).to(device=w.device, dtype=w.dtype)

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.proj if isinstance(m, nn.Linear)]

    def keep_prob(self, layer: int, x: Tensor, valid: Tensor) -> Tensor:
        """(B,) keep probability of ``layer`` from its input ``x`` (B, T, C) pooled over the
        positions ``valid`` (B, T) bool."""
        w = valid[..., None].to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1).clamp(min=1)
        return torch.sigmoid(self.linears()[layer](pooled)).squeeze(-1)


class _Routed(nn.Module):
    """A block under its router: soft ``r * Block(x) + (1 - r) * x``, or hard (record the
    per-row decision, skip with ``torch.where``)."""

    def __init__(self, block: nn.Module, index: int, state: dict[str, Any]) -> None:
        super().__init__()
        self.block, self.index, self.state = block, index, state

    def forward(self, x: Tensor, *args: Any) -> Tensor:
        return _route(self.state, self.index, x, lambda: self.block(x, *args))


def _route(state: dict[str, Any], index: int, x: Tensor, compute: Callable[[], Tensor]) -> Tensor:
    """Layer ``index`` under its router, ``compute()`` running the layer on ``x`` (the
    logic of :class:`_Routed`, for ar-core blocks and ``from_hf`` layers alike)."""
    routers: FiRSTRouters = state["routers"]
    r = routers.keep_prob(index, x, state["valid"])  # (B,)
    if state["soft"]:
        state["probs"].append(r)
        g, gate = r, state["gate"]
        if gate != "soft":  # a hard 0/1 forward, r's gradient (straight-through)
            if gate == "bernoulli":
                hard = torch.bernoulli(r.detach(), generator=state["generator"])
            else:
                hard = (r >= 0.5).to(r.dtype)
            g = hard + r - r.detach()
        return g[:, None, None] * compute() + (1 - g[:, None, None]) * x
    keep = r >= 0.5
    state["keep"].append(keep)
    if not bool(keep.any()):
        return x
    return torch.where(keep[:, None, None], compute(), x)


def _routed_forward(
    model: nn.Module,
    routers: FiRSTRouters,
    tokens: Tensor,
    valid: Tensor,
    soft: bool,
    gate: str = "soft",
    generator: torch.Generator | None = None,
) -> tuple[ModelOutput, dict[str, Any]]:
    state: dict[str, Any] = {
        "routers": routers,
        "valid": valid,
        "soft": soft,
        "gate": gate,
        "generator": generator,
        "probs": [],
        "keep": [],
    }
    layers = _layers(model)
    if first_hf.is_hf(model):

        def routed(i: int) -> first_hf.LayerFn:
            return lambda x, compute: _route(state, i, x, compute)

        fns = {i: routed(i) for i in range(len(layers))}
        with first_hf.patched(first_hf.hf_layers(model), fns):
            out: ModelOutput = model(tokens)
        return out, state
    routed_layers = nn.ModuleList(_Routed(block, i, state) for i, block in enumerate(layers))
    with _swapped(model, routed_layers):
        out = model(tokens)
    return out, state


@torch.no_grad()
def choose_skip(
    model: nn.Module, routers: FiRSTRouters, input_ids: Tensor, prompt_lengths: Tensor
) -> Tensor:
    """Each row's skip set from its prompt: (B, L) bool (True = skip), decided layer by
    layer. A row whose routers would skip every layer keeps its most probable layer."""
    T = input_ids.shape[1]
    valid = torch.arange(T, device=input_ids.device)[None, :] < prompt_lengths[:, None]
    _, state = _routed_forward(model, routers, input_ids, valid, soft=False)
    skip = ~torch.stack(state["keep"], 1)  # (B, L)
    every = skip.all(1)
    if bool(every.any()):
        skip[every, 0] = False  # the first layer: the rest saw its input unchanged
    return skip


def train_routers(
    model: nn.Module,
    routers: FiRSTRouters,
    batches: Callable[[torch.Generator, int], Tensor],
    *,
    prompt_len: int,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 1e-2,
    skip_weight: float = 0.5,
    seed: int = 0,
    gate: Literal["soft", "hard", "bernoulli"] = "soft",
) -> list[dict[str, float]]:
    """Soft-gated training of the routers only (the base stays frozen): LM cross-entropy on
    the tokens after the first ``prompt_len`` + ``skip_weight * mean keep probability``.

    ``gate``: ``"soft"`` blends ``r * Block(x) + (1 - r) * x`` (FiRST's soft gating);
    ``"hard"`` runs the forward with inference's decisions (keep iff ``r >= 0.5``) and
    ``"bernoulli"`` with sampled ones (keep with probability ``r``), both taking the
    gradient through ``r`` (straight-through). A soft gate of 0.3 still passes 30% of a
    block, so soft training can favour sets that fail once the decision is hard; a sampled
    gate sees each layer skipped often enough to learn what skipping it costs (see
    :mod:`ar_decoding.first_tasks`, where it is measured)."""
    if gate not in ("soft", "hard", "bernoulli"):
        raise ConfigError(
            f"train_routers: gate must be 'soft', 'hard' or 'bernoulli', got {gate!r}"
        )
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(routers.parameters(), lr=lr, weight_decay=0.0)
    for p in model.parameters():
        p.requires_grad_(False)
    device = _first_param(model).device
    history: list[dict[str, float]] = []
    for _ in range(steps):
        batch = batches(gen, batch_size).to(device)
        T = batch.shape[1] - 1
        valid = torch.arange(T, device=batch.device)[None, :].expand(batch.shape[0], T) < prompt_len
        out, state = _routed_forward(
            model, routers, batch[:, :-1], valid, soft=True, gate=gate, generator=gen
        )
        logits = out.logits[:, prompt_len - 1 :]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, prompt_len:].flatten())
        keep = torch.stack(state["probs"], 1).mean()
        loss = ce + skip_weight * keep
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"ce": float(ce.detach()), "keep": float(keep.detach())})
    return history


def first(
    model: nn.Module,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    routers: FiRSTRouters | None = None,
    skip_layers: Iterable[int] | Tensor | None = None,
    speculative_draft: bool = False,
    num_draft_tokens: int = 4,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``first`` on ``model`` (an ar-core ``Transformer`` or a ``from_hf`` model):
    skip the layers chosen by ``routers`` on each prompt (one extra forward over the
    prompts, counted as a draft pass) or the fixed ``skip_layers``; decode with ar-core's
    greedy/sample loop on the skipping model, or, with ``speculative_draft=True``, by
    speculative decoding with the skipping model as the draft of the full model
    (``num_draft_tokens`` per step; lossless)."""
    layers = _layers(model)
    if (routers is None) == (skip_layers is None):
        raise ConfigError("strategy 'first' takes routers=FiRSTRouters or skip_layers=[...], one")
    if routers is not None:
        if len(routers.proj) != len(layers):
            raise ConfigError(
                f"the routers are for {len(routers.proj)} layers, the model has {len(layers)}"
            )
        skip = choose_skip(model, routers, input_ids, prompt_lengths)
    else:
        assert skip_layers is not None
        skip = skip_mask(skip_layers, len(layers))
    if skip.ndim == 2 and bool((skip == skip[:1]).all()):
        skip = skip[0]  # one set for the whole batch: skipped layers are left out
    skipping = LayerSkipModel(model, skip)
    if speculative_draft:
        result = speculative(
            cast(CausalLM, model),
            input_ids,
            config,
            prompt_lengths=prompt_lengths,
            streamer=streamer,
            draft_model=skipping,
            num_draft_tokens=num_draft_tokens,
            do_sample=do_sample,
            generator=generator,
        )
    else:
        picker = TokenPicker(config, do_sample, generator, input_ids.device)
        result = decode_with_pick(
            skipping, input_ids, config, prompt_lengths=prompt_lengths, pick=picker.pick,
            streamer=streamer,
        )  # fmt: skip
    if routers is not None:
        result.stats.draft_forward_passes += 1
    return result
