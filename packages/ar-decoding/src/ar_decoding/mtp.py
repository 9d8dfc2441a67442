"""Multi-token prediction with mask tokens, gated LoRA and a sampler head (strategy
``mtp``; linear and quadratic decoding).

Samragh et al., "Your LLM Knows the Future: Uncovering Its Multi-Token Prediction
Potential" (Apple, 2025, arXiv:2507.11851).

Model (:class:`MTPModel`). ``k`` learned mask embeddings ``m_0 .. m_{k-1}`` are appended
after a token ``x_t`` (at RoPE positions ``t+1 .. t+k``); the output at ``m_i`` is trained
to predict ``x_{t+2+i}`` (the base's own output at ``x_t`` predicts ``x_{t+1}``). The
frozen base is adapted by gated LoRA (:mod:`ar_decoding.lora`): the update acts only on
mask tokens, and real tokens never attend to mask tokens, so every next-token output is
exactly the base's. A sampler head (a 2-layer MLP over ``[h(m_i); emb(y_{t+1+i})]``, added
to ``h(m_i)`` and read out by the base's output head) makes the draft chain coherent: each
draft conditions on the token sampled before it.

Training (:func:`train_mtp`, the three losses): per sequence, mask blocks after ``A``
random anchors (one forward; a ``table`` mask: real tokens causal among real tokens, a
block's masks see the real tokens up to their anchor and the earlier masks of their
block). ``mask CE`` (base output head at ``m_i`` vs ``x_{t+2+i}``) + ``sampler CE``
(teacher-forced previous token) + ``consistency`` (MSE between ``h(m_i)`` and the
stop-gradient hidden state of the real token ``x_{t+1+i}``, whose output predicts the
same future token). Only the adapters, the mask embeddings and the sampler learn.

Decoding (one forward per step, lossless). Input: ``[last, d_1 .. d_j]`` (the row's last
token and its drafts) plus mask blocks: **linear** - one block after the row's last draft;
**quadratic** - a block after every real token. The real tokens' outputs verify the
drafts (:func:`ar_decoding.verify.verify_draft`: greedy argmax agreement, or min(1, p/q)
with the sampler's q and the residual); the block anchored at the last accepted token
(quadratic: always present; linear: only when every draft was accepted) gives the next
step's drafts through the sampler chain started at the verified next token. The step's
input holds the real tokens first and the mask blocks after them (the interleaving is in
the RoPE positions and the ``table`` mask), so committing the accepted count keeps exactly
the accepted real tokens in the cache. Output = the base's greedy output / sampling
distribution exactly.

Bases: an ar-core ``Transformer`` or a ``from_hf`` model (``ar_text.hf``; Llama-style
``nn.Linear`` projections and GPT-2's ``Conv1D`` get the gated LoRA; the mask embeddings
enter through a forward hook on the input embeddings, so no model code changes).

Notation: B rows, T tokens, k masks, j drafts this step, C width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core import masks
from ar_core.attention import plan_attention
from ar_core.errors import ConfigError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Rows,
    Streamer,
    TokenPicker,
    cache_budget,
    positive_int,
)
from ar_core.model import ModelOutput, Transformer
from ar_core.protocols import KVCache
from ar_decoding.draft import accepted_tokens, park_finished
from ar_decoding.lora import DEFAULT_TARGETS, HF_TARGETS, add_lora, lora_parameters
from ar_decoding.verify import verify_draft

__all__ = [
    "MTPFeatures",
    "MTPModel",
    "block_layout",
    "mtp",
    "mtp_features",
    "mtp_losses",
    "mtp_losses_on_features",
    "train_mtp",
    "train_mtp_on_features",
]


class MTPModel(nn.Module):
    """A frozen base with ``num_masks`` mask tokens, gated LoRA of ``rank`` (``gated=False``:
    plain LoRA, the control that changes the base) and a sampler head. The base is an
    ar-core ``Transformer`` (LoRA on ``lora.DEFAULT_TARGETS``) or a ``from_hf`` model
    (``ar_text.hf.HFCausalLM``; LoRA on ``lora.HF_TARGETS`` of its decoder, ``nn.Linear`` or
    GPT-2's ``Conv1D``). Called like the base (a ``CausalLM``): plain tokens get the base's
    outputs.

    Mask embeddings enter through a forward hook on the base's input embedding module
    (active only inside :meth:`mixed`), so the base model object carries that hook (and
    the adapters) from then on.

    ``lora_layers`` (an ar-core ``Transformer`` base only; default: every block): the
    adapters sit on the top ``lora_layers`` blocks only, and the masks enter there - the
    mask embeddings are learned inputs of block ``split = n_layers - lora_layers``, and
    the blocks below run on the real tokens alone. Training then never touches the lower
    blocks (their outputs, and the top blocks' keys/values of the real tokens, can be
    computed once per sequence: :func:`mtp_features`, :func:`train_mtp_on_features`), and
    a decode step runs its masks through the top blocks only. The real tokens' outputs
    stay exactly the base's either way."""

    def __init__(
        self,
        base: nn.Module,
        num_masks: int,
        *,
        rank: int = 16,
        gated: bool = True,
        lora_layers: int | None = None,
    ) -> None:
        super().__init__()
        embed, head, lora_root, targets = _parts(base)
        if not isinstance(head, nn.Linear):
            raise ConfigError(
                f"MTPModel: the base's output head is a {type(head).__name__}, not an "
                f"nn.Linear (a prepacked or quantised base?); build the MTPModel first, "
                f"then ar.prepack(mtp_model)"
            )
        positive_int(num_masks, "num_masks", "mtp")
        self.split = _split_layer(base, lora_layers)
        for p in base.parameters():
            p.requires_grad_(False)
        self.base, self.num_masks = base, num_masks
        self.vocab_size = int(base.vocab_size)  # type: ignore[arg-type]
        self.max_seq_len = int(base.max_seq_len)  # type: ignore[arg-type]
        self._io = (embed, head)  # a tuple: not registered again as submodules
        blocks = None if self.split == 0 else range(self.split, len(base.layers))  # type: ignore[arg-type]
        self.gate = add_lora(lora_root, rank, gated=gated, targets=targets, blocks=blocks)
        emb = embed.weight.detach()
        if emb.shape[0] != self.vocab_size and head.weight.shape[0] != self.vocab_size:
            raise ConfigError(
                f"MTPModel: the base's output head has {head.weight.shape[0]} rows for a "
                f"vocabulary of {self.vocab_size}"
            )
        C = emb.shape[1]
        init = emb.mean(0, keepdim=True) + 0.02 * torch.randn(num_masks, C, device=emb.device)
        self.mask_embed = nn.Parameter(init.to(emb.dtype))
        self.sampler = nn.Sequential(nn.Linear(2 * C, C), nn.SiLU(), nn.Linear(C, C))
        last = self.sampler[2]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.sampler.to(device=emb.device, dtype=emb.dtype)
        self._inject: tuple[Tensor, Tensor] | None = None  # (is_mask, mask index) in mixed
        self._head_rows: int | None = None  # in mixed: the output head reads this many slots
        embed.register_forward_hook(self._embed_masks)
        head.register_forward_pre_hook(self._head_input)

    def _embed_masks(self, module: nn.Module, args: object, output: Tensor) -> Tensor | None:
        """Forward hook on the input embeddings: mask slots get their mask embedding."""
        if self._inject is None:
            return None
        is_mask, index = self._inject
        return torch.where(is_mask[..., None], self.mask_embed[index].to(output.dtype), output)

    def _head_input(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Forward pre-hook on the output head: inside a decode step's :meth:`mixed` only
        the real tokens' logits are read, so the head runs on those slots alone."""
        if self._head_rows is None:
            return None
        return (args[0][..., : self._head_rows, :], *args[1:])

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*lora_parameters(self.base), self.mask_embed, *self.sampler.parameters()]

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        mask: masks.MaskSpec | None = None,
        commit: bool = True,
    ) -> ModelOutput:
        return self.base(tokens, positions=positions, cache=cache, mask=mask, commit=commit)  # type: ignore[no-any-return]

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return self.base.new_cache(batch_size, max_len=max_len)  # type: ignore[operator, no-any-return]

    def mixed(
        self,
        tokens: Tensor,
        mask_index: Tensor,
        positions: Tensor,
        mask: masks.MaskSpec,
        cache: KVCache | None = None,
        first_mask: int | None = None,
        real_logits_only: bool = False,
    ) -> ModelOutput:
        """Real tokens and mask tokens together: ``mask_index`` (B, T) is -1 for a real
        token (``tokens`` holds it) and ``i`` for mask ``m_i``; the LoRA acts on masks only.
        ``first_mask``: every slot from this index on is a mask and none before it (the
        layout of :func:`block_layout`), so the LoRA runs on that suffix alone;
        ``real_logits_only`` (with ``first_mask``): the logits cover the real tokens only
        (B, first_mask, V) - a decode step reads the masks' hidden states, not their
        logits. The new cache entries stay pending."""
        if self.split:
            if first_mask is None:
                raise ConfigError(
                    "MTPModel.mixed: a model with lora_layers= takes the real tokens first "
                    "and the masks after them (first_mask=)"
                )
            return self._mixed_split(
                tokens, mask_index, positions, mask, cache, first_mask, real_logits_only
            )
        is_mask = mask_index >= 0  # (B, T)
        ids = torch.where(is_mask, 0, tokens)
        self._inject = (is_mask, mask_index.clamp(min=0))
        if self.gate is not None:
            if first_mask is None:
                self.gate.value = is_mask[..., None]
            else:
                self.gate.start = first_mask
        if real_logits_only and first_mask is not None:
            self._head_rows = first_mask
        try:
            return self.base(ids, positions=positions, cache=cache, mask=mask, commit=False)  # type: ignore[no-any-return]
        finally:
            self._inject = self._head_rows = None
            if self.gate is not None:
                self.gate.value = self.gate.start = None

    def _mixed_split(
        self,
        tokens: Tensor,
        mask_index: Tensor,
        positions: Tensor,
        mask: masks.MaskSpec,
        cache: KVCache | None,
        first_mask: int,
        real_logits_only: bool,
    ) -> ModelOutput:
        """:meth:`mixed` with ``lora_layers``: blocks ``< split`` on the real tokens (the
        first ``first_mask`` slots, causal), then the masks' embeddings appended and the
        top blocks on all slots (``mask``), the adapters on the masks."""
        base = self.base
        assert isinstance(base, Transformer)
        B, T = tokens.shape
        n = first_mask
        if positions.ndim == 1:
            positions = positions[None, :].expand(B, T)
        x = base.tok_embeddings(tokens[:, :n])
        x = _run_blocks(base, x, positions[:, :n], base.layers[: self.split], masks.causal(), cache)
        x = torch.cat([x, self.mask_embed[mask_index[:, n:].clamp(min=0)].to(x.dtype)], 1)
        if self.gate is not None:
            self.gate.start = n
        try:
            x = _run_blocks(base, x, positions, base.layers[self.split :], mask, cache)
        finally:
            if self.gate is not None:
                self.gate.start = None
        hidden = base.norm(x)
        return ModelOutput(
            logits=base.output(hidden[:, :n] if real_logits_only else hidden), hidden=hidden
        )

    def sample_logits(self, hidden: Tensor, prev: Tensor) -> Tensor:
        """The sampler head: ``hidden`` (..., C) of a mask, ``prev`` (...) the token before
        the one it predicts -> logits (..., V)."""
        embed, head = self._io
        z = torch.cat([hidden, F.embedding(prev, embed.weight)], -1)
        return head(hidden + self.sampler(z))  # type: ignore[no-any-return]


def _split_layer(base: nn.Module, lora_layers: int | None) -> int:
    """The first block with adapters (0: all of them) for ``lora_layers`` top blocks."""
    if lora_layers is None:
        return 0
    if not isinstance(base, Transformer):
        raise ConfigError(
            f"MTPModel: lora_layers= needs an ar_core Transformer base, got "
            f"{type(base).__name__}; leave lora_layers=None (adapters on every layer)"
        )
    L = base.cfg.n_layers
    if (
        isinstance(lora_layers, bool)
        or not isinstance(lora_layers, int)
        or not 1 <= lora_layers <= L
    ):
        raise ConfigError(
            f"MTPModel: lora_layers must be an int in [1, {L}] (how many of the base's {L} "
            f"top blocks carry the adapters), got {lora_layers!r}"
        )
    return L - lora_layers


class _Prefix:
    """A stand-in KV cache for training on stored features: per block, the keys/values of
    the real tokens (no gradient); a write appends the new entries out of place (autograd
    flows into them; a cache's in-place scatter would invalidate saved tensors)."""

    def __init__(self, kv: dict[int, tuple[Tensor, Tensor]]) -> None:
        self.kv = kv

    def write(self, layer: int, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv[layer]
        return torch.cat([k, k_new.to(k.dtype)], 2), torch.cat([v, v_new.to(v.dtype)], 2)


def _run_blocks(
    base: Transformer,
    x: Tensor,
    positions: Tensor,
    layers: Any,
    mask: masks.MaskSpec,
    cache: KVCache | _Prefix | None,
    prefix_len: int = 0,
) -> Tensor:
    """``layers`` (blocks of ``base``) on ``x`` (B, T, C) at RoPE ``positions`` (B, T), as
    the base's forward runs them (one attention plan for all): after the committed entries
    of ``cache`` (pending writes), or after ``prefix_len`` stored real tokens (``_Prefix``),
    or alone."""
    B, T, _ = x.shape
    if isinstance(cache, _Prefix):
        q_offset = torch.full((B,), prefix_len, dtype=torch.long, device=x.device)
        k_len = prefix_len + T
    elif cache is not None:
        q_offset = cache.lengths
        k_len = min(cache.max_len, cache.max_length() + T)  # type: ignore[attr-defined]
    else:
        q_offset = torch.zeros(B, dtype=torch.long, device=x.device)
        k_len = T
    cos = base.rope_cos[positions][:, None].to(x.dtype)  # (B, 1, T, D)
    sin = base.rope_sin[positions][:, None].to(x.dtype)
    attn = plan_attention(
        backend=base.cfg.attention_backend,
        mask=mask,
        q_offset=q_offset,
        kv_len=q_offset + T,
        q_len=T,
        k_len=k_len,
        device=x.device,
        dtype=x.dtype,
        keys_all_valid=cache is None or isinstance(cache, _Prefix),
    )
    for layer in layers:
        x = layer(x, cos, sin, attn, cache)
    return x


def _parts(base: nn.Module) -> tuple[nn.Embedding, nn.Linear, nn.Module, tuple[str, ...]]:
    """(input embeddings, output head, LoRA root, LoRA targets) of an ar-core
    ``Transformer`` or a ``from_hf`` adapter (an object with the transformers model as
    ``.hf``)."""
    if isinstance(base, Transformer):
        return base.tok_embeddings, base.output, base, DEFAULT_TARGETS
    hf: Any = getattr(base, "hf", None)
    if callable(getattr(hf, "get_input_embeddings", None)):
        embed, head, root = hf.get_input_embeddings(), hf.get_output_embeddings(), hf.base_model
        if isinstance(embed, nn.Embedding) and isinstance(head, nn.Linear):
            return embed, head, root, HF_TARGETS
    raise ConfigError(
        f"MTPModel wraps an ar_core Transformer or a from_hf model (token embeddings and a "
        f"linear output head), got {type(base).__name__}"
    )


def block_layout(num_real: int, anchors: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The layout of ``num_real`` real tokens followed by mask blocks of ``k`` masks, block
    ``a`` after real index ``anchors[b, a]`` (B, A) (-1 = no block). Returns ``mask_index``
    (B, n) (-1 real, i for m_i), ``offset`` (B, n) the RoPE offset from the first real
    token, ``visible`` (B, n, n) and ``block_slot`` (B, A) the slot of each block's m_0;
    n = num_real + A k."""
    B, A = anchors.shape
    device = anchors.device
    n = num_real + A * k
    slot = torch.arange(n, device=device)
    is_mask = slot >= num_real
    block = ((slot - num_real).clamp(min=0) // k)[None, :].expand(B, n)  # (B, n)
    i = (slot - num_real).clamp(min=0) % k  # (n,)
    anchor = anchors.gather(1, block.clamp(max=max(A - 1, 0)))  # (B, n)
    mask_index = torch.where(is_mask[None, :], i[None, :], -1).expand(B, n)
    offset = torch.where(is_mask[None, :], anchor + 1 + i[None, :], slot[None, :])  # (B, n)
    # real -> real: causal; mask (a, i) -> real <= anchor and masks (a, <= i)
    q_real, kv_real = ~is_mask[:, None], ~is_mask[None, :]
    real_real = (q_real & kv_real & (slot[None, :] <= slot[:, None]))[None]
    mask_real = (~q_real & kv_real)[None] & (slot[None, None, :] <= anchor[:, :, None])
    same_block = block[:, :, None] == block[:, None, :]
    mask_mask = (~q_real & ~kv_real)[None] & same_block & (slot[None, :] <= slot[:, None])[None]
    live = (anchor >= 0) | ~is_mask[None, :]  # blocks with anchor -1 see nothing
    visible = (real_real | mask_real | mask_mask) & live[:, :, None]
    visible |= torch.eye(n, dtype=torch.bool, device=device)[None]  # every slot sees itself
    block_slot = num_real + k * torch.arange(A, device=device)[None, :].expand(B, A)
    return mask_index.contiguous(), offset, visible, block_slot


def mtp_losses(
    model: MTPModel, batch: Tensor, anchors: Tensor, consistency: float = 1.0
) -> dict[str, Tensor]:
    """The three losses on ``batch`` (B, T) with mask blocks after real indices ``anchors``
    (A,) (each <= T - k - 2): ``mask_ce``, ``sampler_ce``, ``consistency`` and ``total``."""
    B, T = batch.shape
    k = model.num_masks
    A = anchors.numel()
    mask_index, offset, visible, _ = block_layout(T, anchors[None, :].expand(B, A), k)
    out = model.mixed(
        torch.cat([batch, batch.new_zeros(B, A * k)], 1),
        mask_index,
        offset,
        masks.table(visible[0]),
        first_mask=T,
    )
    h_mask = out.hidden[:, T:].view(B, A, k, -1)  # (B, A, k, C)
    logits_mask = out.logits[:, T:].view(B, A, k, -1)
    return _three_losses(model, h_mask, logits_mask, batch, anchors, out.hidden[:, :T], consistency)


def _three_losses(
    model: MTPModel,
    h_mask: Tensor,
    logits_mask: Tensor,
    batch: Tensor,
    anchors: Tensor,
    h_real_all: Tensor,
    consistency: float,
) -> dict[str, Tensor]:
    """Mask CE, sampler CE and consistency from the masks' hidden states and logits
    (B, A, k, .) and the real tokens' hidden states ``h_real_all`` (B, T, C)."""
    k = model.num_masks
    ahead = anchors[:, None] + torch.arange(k, device=batch.device)[None, :]  # (A, k): t + i
    target = batch[:, ahead + 2]  # (B, A, k): x_{t+2+i}
    prev = batch[:, ahead + 1]  # x_{t+1+i}
    with torch.no_grad():
        h_real = h_real_all.detach()[:, ahead + 1]  # (B, A, k, C)
    V = logits_mask.shape[-1]
    mask_ce = F.cross_entropy(logits_mask.reshape(-1, V).float(), target.reshape(-1))
    sampler_logits = model.sample_logits(h_mask, prev)
    sampler_ce = F.cross_entropy(sampler_logits.reshape(-1, V).float(), target.reshape(-1))
    cons = F.mse_loss(h_mask.float(), h_real.float())
    return {
        "mask_ce": mask_ce,
        "sampler_ce": sampler_ce,
        "consistency": cons,
        "total": mask_ce + sampler_ce + consistency * cons,
    }


def train_mtp(
    model: MTPModel,
    batches: Callable[[torch.Generator, int], Tensor],
    *,
    steps: int = 200,
    batch_size: int = 8,
    anchors: int = 4,
    lr: float = 1e-3,
    consistency: float = 1.0,
    seed: int = 0,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train the adapters, mask embeddings and sampler (the base stays frozen) on
    ``batches(generator, batch_size) -> (B, T)``; ``anchors`` mask blocks per sequence at
    random positions each step. Returns the losses of every step."""
    device = model.mask_embed.device
    k = model.num_masks

    def step_losses(gen: torch.Generator) -> dict[str, Tensor]:
        batch = batches(gen, batch_size).to(device)
        T = batch.shape[1]
        if k + 3 > T:
            raise ConfigError(f"train_mtp: sequences of {T} tokens are too short for k={k} masks")
        a = torch.randperm(T - k - 1, generator=gen)[: min(anchors, T - k - 1)].sort().values
        return mtp_losses(model, batch, a.to(device), consistency)

    return _fit(model, step_losses, steps, lr, seed, progress)


def _fit(
    model: MTPModel,
    step_losses: Callable[[torch.Generator], dict[str, Tensor]],
    steps: int,
    lr: float,
    seed: int,
    progress: Callable[[int, dict[str, float]], None] | None,
) -> list[dict[str, float]]:
    """AdamW on the trainable parameters, ``steps`` steps of ``step_losses(generator)``."""
    positive_int(steps, "steps", "train_mtp")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=0.0)
    history: list[dict[str, float]] = []
    model.train()
    for step in range(steps):
        losses = step_losses(gen)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        history.append({name: float(v.detach()) for name, v in losses.items()})
        if progress is not None:
            progress(step, history[-1])
    model.eval()
    return history


class MTPFeatures(NamedTuple):
    """What the frozen base computes on real tokens, stored once per sequence for
    :func:`train_mtp_on_features`: ``tokens`` (N, T), the keys and values of blocks
    ``split ..`` (N, L - split, Hkv, T, D) and the final (normed) hidden states (N, T, C)."""

    tokens: Tensor
    keys: Tensor
    values: Tensor
    hidden: Tensor


def mtp_features(model: MTPModel, tokens: Tensor, batch_size: int = 8) -> MTPFeatures:
    """:class:`MTPFeatures` of ``tokens`` (N, T) under ``model``'s base (ar-core
    ``Transformer``), ``batch_size`` sequences per forward, no gradients. With
    ``lora_layers`` only the top blocks' keys and values are kept (the masks never enter
    the blocks below)."""
    base = model.base
    if not isinstance(base, Transformer):
        raise ConfigError(
            f"mtp_features needs an ar_core Transformer base, got {type(base).__name__}"
        )
    if tokens.ndim != 2 or tokens.shape[1] < model.num_masks + 3:
        raise ConfigError(
            f"mtp_features: tokens must be (N, T) with T >= k + 3 = {model.num_masks + 3}, "
            f"got shape {tuple(tokens.shape)}"
        )
    positive_int(batch_size, "batch_size", "mtp_features")
    N, T = tokens.shape
    keep = range(model.split, base.cfg.n_layers)
    keys, values, hidden = [], [], []
    with torch.no_grad():
        for i in range(0, N, batch_size):
            x = tokens[i : i + batch_size].to(base.device)
            cache = base.new_cache(x.shape[0], max_len=T)
            hidden.append(base(x, cache=cache).hidden)
            keys.append(torch.stack([cache.k[layer][:, :, :T] for layer in keep], 1))
            values.append(torch.stack([cache.v[layer][:, :, :T] for layer in keep], 1))
    return MTPFeatures(tokens, torch.cat(keys), torch.cat(values), torch.cat(hidden))


def mtp_losses_on_features(
    model: MTPModel, features: MTPFeatures, anchors: Tensor, consistency: float = 1.0
) -> dict[str, Tensor]:
    """:func:`mtp_losses` from stored features (a batch of them): only the mask tokens run,
    through the blocks from ``split`` on, attending to the stored keys and values of the
    real tokens - the same losses as the full forward (up to rounding), without the real
    tokens' compute."""
    base = model.base
    assert isinstance(base, Transformer)
    tokens = features.tokens
    B, T = tokens.shape
    k, A = model.num_masks, anchors.numel()
    mask_index, offset, visible, _ = block_layout(T, anchors[None, :].expand(B, A), k)
    stored = {
        layer: (features.keys[:, i], features.values[:, i])
        for i, layer in enumerate(range(model.split, base.cfg.n_layers))
    }
    x = model.mask_embed[mask_index[:, T:]].to(base.dtype)  # (B, A k, C)
    if model.gate is not None:
        model.gate.start = 0  # every slot of this pass is a mask
    try:
        x = _run_blocks(
            base,
            x,
            offset[:, T:],
            base.layers[model.split :],
            masks.table(visible),
            _Prefix(stored),
            prefix_len=T,
        )
    finally:
        if model.gate is not None:
            model.gate.start = None
    h_mask = base.norm(x).view(B, A, k, -1)
    return _three_losses(
        model, h_mask, base.output(h_mask), tokens, anchors, features.hidden, consistency
    )


def train_mtp_on_features(
    model: MTPModel,
    features: MTPFeatures,
    *,
    steps: int = 200,
    batch_size: int = 8,
    anchors: int = 4,
    anchor_from: int = 0,
    lr: float = 1e-3,
    consistency: float = 1.0,
    seed: int = 0,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """:func:`train_mtp` on stored :class:`MTPFeatures` (:func:`mtp_features`): each step
    draws ``batch_size`` of the stored sequences and ``anchors`` mask blocks at random
    real indices ``>= anchor_from`` (e.g. where the base's own continuation starts: the
    masks learn to predict what the base will say) and runs the masks alone. With
    ``lora_layers`` a step costs the top blocks on the masks only."""
    N, T = features.tokens.shape
    k = model.num_masks
    last = T - k - 2  # the last anchor with k targets inside the sequence
    if (
        isinstance(anchor_from, bool)
        or not isinstance(anchor_from, int)
        or not 0 <= anchor_from <= last
    ):
        raise ConfigError(
            f"train_mtp_on_features: anchor_from must be an int in [0, {last}] for sequences "
            f"of {T} tokens and k={k} masks, got {anchor_from!r}"
        )
    positive_int(anchors, "anchors", "train_mtp_on_features")
    positive_int(batch_size, "batch_size", "train_mtp_on_features")
    span = last - anchor_from + 1

    def step_losses(gen: torch.Generator) -> dict[str, Tensor]:
        rows = torch.randint(0, N, (batch_size,), generator=gen)
        a = anchor_from + torch.randperm(span, generator=gen)[: min(anchors, span)].sort().values
        batch = MTPFeatures(*(t[rows] for t in features))
        return mtp_losses_on_features(model, batch, a.to(features.tokens.device), consistency)

    return _fit(model, step_losses, steps, lr, seed, progress)


def _greedy_chain(model: MTPModel, h: Tensor, first: Tensor, n: int) -> Tensor:
    """:func:`_sampler_chain` for a plain argmax pick: the sampler's first layer splits
    into its hidden half (all ``n`` masks in one matmul) and its token half (one small
    matmul per draft); drafts (B, n)."""
    lin1, act, lin2 = model.sampler
    assert isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear)
    embed, head = model._io
    C = h.shape[-1]
    hidden = h[:, :n]
    pre = F.linear(hidden, lin1.weight[:, :C], lin1.bias)  # (B, n, C)
    w_tok = lin1.weight[:, C:]
    prev = first
    out: list[Tensor] = []
    for i in range(n):
        z = act(pre[:, i] + F.linear(F.embedding(prev, embed.weight), w_tok))
        prev = head(hidden[:, i] + lin2(z)).argmax(-1)
        out.append(prev)
    return torch.stack(out, 1) if out else first.new_empty(first.shape[0], 0)


def _sampler_chain(
    model: MTPModel, h: Tensor, first: Tensor, n: int, rows: Rows, picker: TokenPicker
) -> tuple[Tensor, Tensor | None]:
    """``n`` drafts (B, n) after the verified token ``first`` (B,) from the mask hidden
    states ``h`` (B, k, C), and their probabilities (B, n, V) when sampling."""
    lin1, lin2 = model.sampler[0], model.sampler[2]
    plain = isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear)  # not prepacked
    if picker.greedy and not picker.processors and plain:
        return _greedy_chain(model, h, first, n), None
    drafts = first.new_empty(first.shape[0], n)
    qs: list[Tensor] = []
    prev = first
    for i in range(n):
        token, q = picker.pick_with_probs(
            model.sample_logits(h[:, i], prev), rows.seq, drafts[:, :i]
        )
        drafts[:, i] = token
        if q is not None:
            qs.append(q)
        prev = token
    return drafts, (torch.stack(qs, 1) if qs else None)


def mtp(
    model: MTPModel,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    num_draft_tokens: int | None = None,
    quadratic: bool = False,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``mtp`` on an :class:`MTPModel` (trained with :func:`train_mtp`):
    ``num_draft_tokens`` (default and at most ``model.num_masks``) drafts per step,
    ``quadratic`` interleaves a mask block after every draft. Lossless: greedy output =
    the base's greedy output; sampling = the base's distribution."""
    if not isinstance(model, MTPModel):
        raise ConfigError(
            f"strategy 'mtp' needs an MTPModel (MTPModel(base, k) trained with train_mtp), "
            f"got {type(model).__name__}"
        )
    k = model.num_masks
    j_max = k if num_draft_tokens is None else num_draft_tokens
    positive_int(j_max, "num_draft_tokens", "mtp")
    if j_max > k:
        raise ConfigError(f"mtp: num_draft_tokens={j_max} exceeds the model's {k} mask tokens")
    k = j_max  # a block needs only the masks of the drafts it feeds: m_0 .. m_{j_max - 1}
    device = input_ids.device
    picker = TokenPicker(config, do_sample, generator, device)
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=j_max + 1)
    stats = rows.stats
    width = (j_max + 1) * (k + 1) if quadratic else j_max + 1 + k  # a step's writes
    cache_len = cache_budget(
        model, input_ids, prompt_lengths, config.max_new_tokens, extra=width, extra_required=False
    )
    if rows.all_finished():
        return rows.finish()
    B = input_ids.shape[0]
    with torch.no_grad():
        cache = model.new_cache(B, max_len=cache_len)
        logits = model(input_ids, cache=cache, commit=False).logits
        cache.commit(prompt_lengths)
        stats.target_forward_passes += 1
        logits = logits[rows.rows, prompt_lengths - 1]
        rows.watch(logits)
        first = picker.pick(logits, rows.seq)
        rows.emit(first[:, None], torch.ones_like(first))
        park_finished(rows, cache)
        drafts = input_ids.new_zeros(B, 0)
        q: Tensor | None = None
        lengths = torch.zeros(B, dtype=torch.long, device=device)  # valid drafts per row
        layouts: dict[tuple[Any, ...], tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        while not rows.all_finished():
            live = ~rows.finished
            room = cache_len - int(rows.length[live].max()) + 1  # slots from the last token
            j = drafts.shape[1]
            n_real = j + 1
            if quadratic:
                anchors = torch.arange(n_real, device=device).expand(B, n_real)
            else:
                anchors = lengths[:, None]
            if n_real + anchors.shape[1] * k > room:  # no room for masks: one plain token
                out = model(rows.last()[:, None], cache=cache, commit=False)
                stats.target_forward_passes += 1
                rows.watch(out.logits)
                nxt = picker.pick(out.logits[:, 0], rows.seq)
                cache.commit(rows.emit(nxt[:, None], torch.ones_like(nxt)))
                park_finished(rows, cache)
                drafts, q, lengths = drafts[:, :0], None, torch.zeros_like(lengths)
                continue
            key = (n_real, tuple(map(tuple, anchors.tolist())))
            if key not in layouts:  # a handful of layouts per decode: built once each
                layouts[key] = block_layout(n_real, anchors, k)
            mask_index, offset, visible, block_slot = layouts[key]
            start = cache.lengths.clone()  # (B,) slot of the last token
            tokens = torch.cat([rows.last()[:, None], drafts], 1)  # (B, j + 1)
            tokens = torch.cat([tokens, tokens.new_zeros(B, mask_index.shape[1] - n_real)], 1)
            out = model.mixed(
                tokens,
                mask_index,
                start[:, None] + offset,
                masks.table(visible, start=start),
                cache=cache,
                first_mask=n_real,
                real_logits_only=True,
            )
            stats.target_forward_passes += 1
            real_logits = out.logits[:, :n_real]  # (B, j + 1, V)
            rows.watch(real_logits)
            n, nxt = verify_draft(picker, drafts, q, real_logits, rows.seq, lengths=lengths)
            counts = rows.emit(accepted_tokens(drafts, n, nxt), n + 1)
            cache.commit(counts)  # real tokens come first in the step: already in place
            # the next drafts: from the block anchored at the last accepted real token
            if quadratic:
                block = n  # (B,) block index = real index
                has = torch.ones_like(n, dtype=torch.bool)
            else:
                block = torch.zeros_like(n)
                has = n == lengths
            m0 = block_slot.gather(1, block[:, None]).squeeze(1)  # (B,)
            idx = m0[:, None] + torch.arange(k, device=device)[None, :]  # (B, k)
            h = out.hidden.gather(1, idx[..., None].expand(B, k, out.hidden.shape[-1]))
            park_finished(rows, cache)
            j_next = max(0, min(j_max, int(rows.remaining().max()) - 1))
            drafts, q = _sampler_chain(model, h, nxt.clamp(min=0), j_next, rows, picker)
            lengths = torch.where(has & ~rows.finished, j_next, 0)
    return rows.finish()
