"""Medusa: extra decoding heads on the base model's last hidden state draft a token tree
that the base verifies in ONE forward with ar-core's ``tree`` mask (strategy ``medusa``).

Cai et al., "Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding
Heads" (2024, arXiv:2401.10774); the draft-head family of Zhang et al., "A Survey on
Parallel Text Generation" (2025).

Heads. :class:`MedusaHeads` holds ``k`` heads; head ``i`` (0-based) maps the final-norm
hidden state ``h_t`` (the one whose LM-head output predicts ``x_{t+1}``) to logits for
``x_{t+2+i}``: a residual SiLU block ``h + SiLU(W h)`` (W zero-initialised) followed by
a vocabulary projection initialised from the base's output head (Medusa-1's design).
:func:`train_medusa_heads` trains them on a frozen base's hidden states (Medusa-1: the
base is never updated), with the loss ``sum_i 0.8^i CE_i``. For a base too slow to run on
every training batch, :func:`base_features` runs it once over a set of sequences (ideally
its own greedy continuations: what the heads will be asked to predict, Medusa-2's
self-distillation) and :func:`train_medusa_heads_on_features` trains the heads on those
stored hidden states only (the same loss; many cheap steps).

Decoding. The base's last hidden state gives the next token (the base's own pick) and
the heads give candidates for the ``D <= k`` tokens after it: the tree has static shape
``expansion = (e_1, .., e_D)`` (:class:`ar_decoding.tree_speculative.Tree`); level ``d``
holds head ``d - 1``'s top-``e_d`` tokens under every node of level ``d - 1`` (greedy), or
``e_d`` i.i.d. draws from that head's distribution (sampling). The base scores all ``M``
nodes at once; greedy keeps the deepest path that equals the base's argmax at every step
(output = greedy decoding exactly), sampling runs SpecInfer's multi-step speculative
sampling (:func:`~ar_decoding.tree_speculative.accept_tree_sampling`), so the output has
the base's distribution exactly (Medusa's "typical acceptance" is not lossless and is not
used). The hidden state at the accepted node feeds the heads of the next step, so a step
is one base forward plus the (cheap) heads.

The cache follows :mod:`ar_decoding.draft`'s invariant (``length - 1`` entries between
steps); the accepted path is compacted with ``cache.move_entries`` as in
:mod:`ar_decoding.tree_speculative`.

Notation: B rows, k heads, D tree depth, M tree nodes, C width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core import masks
from ar_core.errors import ConfigError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    Rows,
    Streamer,
    TokenPicker,
    cache_budget,
)
from ar_core.protocols import CausalLM
from ar_core.quant import PackedLinear
from ar_core.sampling import logits_to_probs
from ar_decoding.draft import accepted_tokens, park_finished
from ar_decoding.tree_speculative import (
    Tree,
    _check_expansion,
    _processed,
    accept_tree_greedy,
    accept_tree_sampling,
    move_path,
)

__all__ = [
    "MedusaHeads",
    "base_features",
    "default_expansion",
    "medusa",
    "medusa_loss",
    "train_medusa_heads",
    "train_medusa_heads_on_features",
]


class MedusaHeads(nn.Module):
    """``num_heads`` Medusa heads over hidden states of width ``dim``, vocabulary
    ``vocab_size``. ``forward(hidden (..., C)) -> logits (..., k, V)``."""

    def __init__(self, dim: int, vocab_size: int, num_heads: int) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("vocab_size", vocab_size), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"MedusaHeads: {name} must be an int >= 1, got {value!r}")
        self.dim, self.vocab_size, self.num_heads = dim, vocab_size, num_heads
        self.res = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_heads))
        self.out = nn.ModuleList(nn.Linear(dim, vocab_size, bias=False) for _ in range(num_heads))
        for lin in self.residuals():  # each head starts as the base's own next-token head
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def residuals(self) -> list[nn.Linear]:
        return [m for m in self.res if isinstance(m, nn.Linear)]

    def projections(self) -> list[nn.Linear]:
        return [m for m in self.out if isinstance(m, nn.Linear)]

    @classmethod
    def for_model(cls, model: Any, num_heads: int) -> MedusaHeads:
        """Heads sized for ``model`` (an ar-core ``Transformer``, plain or prepacked by
        ``ar_core.quant.prepack``), the projections copied from its output head."""
        out = getattr(model, "output", None)
        if isinstance(out, nn.Linear):
            weight = out.weight.detach()
        elif isinstance(out, PackedLinear):
            weight = out.weight_t.t()  # (V, C): the float weight, transposed back
        else:
            raise ConfigError(
                f"MedusaHeads.for_model needs a model with an `output` nn.Linear head "
                f"(ar_core.Transformer, or one prepacked by ar_core.quant.prepack), got "
                f"{type(model).__name__} with output {type(out).__name__}; build "
                f"MedusaHeads(dim, vocab_size, num_heads) yourself"
            )
        vocab_size, dim = weight.shape
        heads = cls(int(dim), int(vocab_size), num_heads)
        with torch.no_grad():
            for lin in heads.projections():
                lin.weight.copy_(weight)
        return heads.to(device=weight.device, dtype=weight.dtype)

    def forward(self, hidden: Tensor) -> Tensor:
        # the ModuleLists themselves: the heads may be prepacked for decoding
        outs = [o(hidden + F.silu(r(hidden))) for r, o in zip(self.res, self.out, strict=True)]
        return torch.stack(outs, dim=-2)  # (..., k, V)


def check_heads(model: CausalLM, heads: object) -> MedusaHeads:
    if not isinstance(heads, MedusaHeads):
        raise ConfigError(
            f"strategy 'medusa' needs heads=MedusaHeads (trained with train_medusa_heads), got "
            f"{type(heads).__name__}"
        )
    if heads.vocab_size != model.vocab_size:
        raise ConfigError(
            f"the Medusa heads predict a vocabulary of {heads.vocab_size} ids but the model's "
            f"is {model.vocab_size}; train heads for this model (MedusaHeads.for_model(model, k))"
        )
    return heads


def medusa_loss(heads: MedusaHeads, hidden: Tensor, tokens: Tensor, decay: float = 0.8) -> Tensor:
    """``sum_i decay^i CE(head_i(h_t), x_{t+2+i})`` over a batch: ``hidden`` (B, T, C) the
    base's final hidden states of ``tokens`` (B, T)."""
    logits = heads(hidden)  # (B, T, k, V)
    T = tokens.shape[1]
    total = hidden.new_zeros(())
    for i in range(heads.num_heads):
        shift = i + 2
        if shift >= T:
            break
        pred = logits[:, : T - shift, i]  # (B, T - shift, V)
        total = total + decay**i * F.cross_entropy(
            pred.reshape(-1, pred.shape[-1]).float(), tokens[:, shift:].reshape(-1)
        )
    return total


def train_medusa_heads(
    model: Any,
    batches: Callable[[torch.Generator, int], Tensor],
    *,
    num_heads: int = 4,
    heads: MedusaHeads | None = None,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[MedusaHeads, list[float]]:
    """Medusa-1 training: the base ``model`` is frozen (run under ``no_grad``), only the
    heads learn. ``batches(generator, batch_size) -> (B, T)`` token ids. Returns the heads
    and the loss of every step; ``progress(step, loss)`` is called after each."""
    heads = MedusaHeads.for_model(model, num_heads) if heads is None else heads
    check_heads(model, heads)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()

    def step_loss() -> Tensor:
        batch = batches(gen, batch_size).to(heads.projections()[0].weight.device)
        with torch.no_grad():
            hidden = model(batch).hidden  # (B, T, C)
        return medusa_loss(heads, hidden, batch)

    losses = _fit_heads(heads, step_loss, steps, lr, progress)
    model.train(was_training)
    return heads, losses


def _fit_heads(
    heads: MedusaHeads,
    step_loss: Callable[[], Tensor],
    steps: int,
    lr: float,
    progress: Callable[[int, float], None] | None,
) -> list[float]:
    """``steps`` AdamW steps on the heads (the base is frozen) of ``step_loss()``; the loss
    of every step; ``progress(step, loss)`` after each."""
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    heads.train()
    for step in range(steps):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    heads.eval()
    return losses


@torch.no_grad()
def base_features(model: Any, tokens: Tensor, batch_size: int = 16) -> Tensor:
    """The frozen base's final hidden states (N, T, C) of ``tokens`` (N, T), computed
    ``batch_size`` rows at a time (the features :func:`train_medusa_heads_on_features`
    trains on; ``model`` may be prepacked)."""
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 3:
        raise ConfigError(
            f"base_features: tokens must be (N, T) with N >= 1 and T >= 3 (a head predicts "
            f"2 or more tokens ahead), got {tuple(tokens.shape)}"
        )
    was_training = model.training
    model.eval()
    parts = [
        model(tokens[i : i + batch_size]).hidden for i in range(0, tokens.shape[0], batch_size)
    ]
    model.train(was_training)
    return torch.cat(parts)


def train_medusa_heads_on_features(
    heads: MedusaHeads,
    hidden: Tensor,
    tokens: Tensor,
    *,
    steps: int = 200,
    batch_size: int = 8,
    window: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Medusa-1 training on stored features: ``hidden`` (N, T, C) the frozen base's final
    hidden states of ``tokens`` (N, T) (:func:`base_features`). Each step draws
    ``batch_size`` rows and, with ``window``, one random span of ``window`` positions of
    them, and takes a step on :func:`medusa_loss` - the loss
    :func:`train_medusa_heads` computes when the base runs on those rows (tested), without
    running the base. Returns the loss of every step; ``progress(step, loss)`` after each."""
    if hidden.ndim != 3 or tokens.shape != hidden.shape[:2]:
        raise ConfigError(
            f"train_medusa_heads_on_features: hidden must be (N, T, C) and tokens (N, T) for "
            f"the same N, T; got hidden {tuple(hidden.shape)}, tokens {tuple(tokens.shape)}"
        )
    if hidden.shape[-1] != heads.dim:
        raise ConfigError(
            f"the features have width {hidden.shape[-1]} but the heads take {heads.dim}; "
            f"compute them with the base the heads were built for"
        )
    N, T = tokens.shape
    span = T if window is None else window
    if not 3 <= span <= T:
        raise ConfigError(f"window must be in [3, {T}] (the features' length), got {window}")
    gen = torch.Generator().manual_seed(seed)
    hidden = hidden.detach()

    def step_loss() -> Tensor:
        rows = torch.randperm(N, generator=gen)[: min(batch_size, N)]
        start = int(torch.randint(0, T - span + 1, (), generator=gen))
        window_of = slice(start, start + span)
        return medusa_loss(heads, hidden[rows, window_of], tokens[rows, window_of])

    return _fit_heads(heads, step_loss, steps, lr, progress)


def default_expansion(num_heads: int) -> tuple[int, ...]:
    """The default tree: 3 candidates from the first head, 2 from the second, then 1."""
    return (3, 2, 1, 1, 1, 1, 1, 1)[:num_heads] + (1,) * max(0, num_heads - 8)


def _draft(
    heads: MedusaHeads, hidden: Tensor, rows: Rows, tree: Tree, picker: TokenPicker
) -> tuple[Tensor, Tensor | None]:
    """Tree tokens (B, M) (node 0 = the row's last token) from the heads on ``hidden``
    (B, C), and the heads' probabilities at the internal nodes (B, M_internal, V) when
    sampling (node u at level d - 1 uses head d - 1)."""
    B, M = hidden.shape[0], tree.size
    tokens = torch.zeros(B, M, dtype=torch.long, device=hidden.device)
    tokens[:, 0] = rows.last()
    head_logits = heads(hidden)  # (B, k, V)
    q_levels: list[Tensor] = []
    for d, e in enumerate(tree.expansion, start=1):
        n = tree.levels[d - 1].stop - tree.levels[d - 1].start  # parents at level d - 1
        if picker.greedy:
            top = head_logits[:, d - 1].topk(e, dim=-1).indices  # (B, e)
            children = top[:, None, :].expand(B, n, e)
        else:
            q = picker.probs(head_logits[:, d - 1])  # (B, V), the same for every parent
            q_levels.append(q[:, None, :].expand(B, n, q.shape[-1]))
            draws = torch.multinomial(q, n * e, replacement=True, generator=picker.generator)
            children = draws.view(B, n, e)
        tokens[:, tree.levels[d]] = children.reshape(B, n * e)
    return tokens, (torch.cat(q_levels, 1) if q_levels else None)


def medusa(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    heads: MedusaHeads | None = None,
    expansion: Sequence[int] | None = None,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``medusa``: tree drafts from ``heads`` (a :class:`MedusaHeads` for this
    model's vocabulary), verified by ``model`` in one forward per step. ``expansion``
    (children per node at each depth, at most ``heads.num_heads`` levels) defaults to
    :func:`default_expansion`. ``do_sample`` None = sample iff ``config.temperature > 0``;
    sampling draws the tree from the heads and verifies losslessly."""
    heads = check_heads(model, heads)
    exp = default_expansion(heads.num_heads) if expansion is None else _check_expansion(expansion)
    if len(exp) > heads.num_heads:
        raise ConfigError(
            f"medusa: a tree of depth {len(exp)} needs {len(exp)} heads, the heads have "
            f"{heads.num_heads}; shorten expansion={exp} or train more heads"
        )
    if not picker_ok(config, do_sample):
        raise ConfigError(
            "medusa: sampling draws children from the heads and runs the config's processors "
            "on each node's history; set repetition_penalty=1.0"
        )
    device = input_ids.device
    tree = Tree.build(exp)
    tree = Tree(
        tree.expansion,
        tree.parents.to(device),
        tree.depth.to(device),
        tree.paths.to(device),
        tree.levels,
    )
    D, M = len(tree.expansion), tree.size
    picker = TokenPicker(config, do_sample, generator, device)
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=D + 1)
    stats = rows.stats
    cache_len = cache_budget(
        model, input_ids, prompt_lengths, config.max_new_tokens, extra=M, extra_required=False
    )
    if rows.all_finished():
        return rows.finish()
    B = input_ids.shape[0]
    with torch.no_grad():
        cache = model.new_cache(B, max_len=cache_len)
        out = model(input_ids, cache=cache, commit=False)
        cache.commit(prompt_lengths)
        stats.target_forward_passes += 1
        last = prompt_lengths - 1
        logits, hidden = out.logits[rows.rows, last], out.hidden[rows.rows, last]  # (B, V), (B, C)
        rows.watch(logits)
        first = picker.pick(logits, rows.seq)
        rows.emit(first[:, None], torch.ones_like(first))
        park_finished(rows, cache)
        while not rows.all_finished():
            live = ~rows.finished
            if cache_len - int(rows.length[live].max()) < M:  # no room for a tree: one token
                out = model(rows.last()[:, None], cache=cache, commit=False)
                stats.target_forward_passes += 1
                rows.watch(out.logits)
                nxt = picker.pick(out.logits[:, 0], rows.seq)
                cache.commit(rows.emit(nxt[:, None], torch.ones_like(nxt)))
                park_finished(rows, cache)
                hidden = out.hidden[:, 0]
                continue
            tokens, q = _draft(heads, hidden, rows, tree, picker)
            root = cache.lengths.clone()  # (B,) slot of the root (the last token)
            out = model(
                tokens,
                positions=root[:, None] + tree.depth[None, :],
                cache=cache,
                mask=masks.tree(tree.parents, root),
                commit=False,
            )  # logits (B, M, V)
            stats.target_forward_passes += 1
            rows.watch(out.logits)
            scores = _processed(picker, out.logits, rows, tokens, tree, 0)  # (B, M, V)
            if picker.greedy:
                best, nxt = accept_tree_greedy(tokens, scores.argmax(-1), tree)
            else:
                assert q is not None
                best, nxt = accept_tree_sampling(
                    tokens, q, logits_to_probs(scores), tree, picker.generator
                )
            n = tree.depth[best]  # (B,) accepted head tokens
            path = tree.paths[best]  # (B, D)
            counts = rows.emit(accepted_tokens(tokens.gather(1, path), n, nxt), n + 1)
            move_path(cache, root, path)
            cache.commit(counts)
            park_finished(rows, cache)
            hidden = out.hidden[rows.rows, best]  # (B, C) at the accepted node
    return rows.finish()


def picker_ok(config: GenerationConfig, do_sample: bool | None) -> bool:
    """Sampling with the repetition penalty would need per-node histories for the heads'
    draws; greedy applies it exactly (per-node histories in :func:`_processed`)."""
    sampling = config.temperature > 0 if do_sample is None else do_sample
    return not sampling or config.repetition_penalty == 1.0
