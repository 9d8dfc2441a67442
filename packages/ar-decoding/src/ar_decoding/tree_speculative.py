"""Tree speculative decoding: the draft proposes a token tree, the target verifies every
branch in ONE forward with a tree attention mask (strategy ``tree-speculative``).

Miao et al., "SpecInfer: Accelerating Large Language Model Serving with Tree-based
Speculative Inference and Verification" (2024, arXiv:2305.09781); tree verification as
catalogued by Zhang et al., "A Survey on Parallel Text Generation" (2025).

The tree has a static shape given by ``expansion = (e_1, .., e_D)``: the root (the row's
last token) has e_1 children, each level-1 node e_2 children, and so on (D levels,
M = 1 + e_1 + e_1 e_2 + ... nodes, numbered level by level; children of a node are
contiguous). Greedy drafting takes the draft's top-e children; sampling draws e children
i.i.d. from the draft's q. The draft builds it with one forward per level (tree mask);
the target scores all M nodes in one forward: node i sits at cache slot ``start + i``
and RoPE position ``start + depth(i)`` (``start`` = the root's slot = ``length - 1``),
and ``ar_core.masks.tree(parents, start)`` lets it see the committed context, its
ancestors and itself.

Acceptance. Greedy: the deepest node whose path matches the target's argmax at every
step (siblings are distinct, so at most one child of a node matches); the next token is
the target's argmax there - output = greedy decoding exactly. Sampling (SpecInfer's
multi-step speculative sampling): at node u, try its children in order, accepting child
x with probability min(1, p(x)/q(x)); after each rejection p <- norm(max(p - q, 0)); if
all are rejected the next token is drawn from the final p; at a leaf from p_u (bonus).
This preserves the target distribution exactly (SpecInfer, Theorem 4.2).

Cache compaction: after verification each cache holds the tree in level order; the
accepted path (depth 1..n) is moved into slots ``start + 1 .. start + n``
(``cache.move_entries``; keys already carry the RoPE rotation of their final positions,
so moving them is exact), then the cache is cropped/committed to the accepted length.
The step's other helpers (caches' invariant, first token, catch-up) are in
:mod:`ar_decoding.draft`.

Notation: B rows, M tree nodes, D depth, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

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
from ar_core.protocols import CausalLM, KVCache
from ar_core.sampling import logits_to_probs
from ar_decoding.draft import (
    accepted_tokens,
    catch_up,
    check_draft_model,
    first_step,
    park_finished,
)
from ar_decoding.verify import residual_distribution

__all__ = ["Tree", "tree_speculative"]


@dataclass(frozen=True)
class Tree:
    """Static topology: ``parents`` (M,), ``depth`` (M,), ``paths`` (M, D) = the nodes at
    depth 1..D on the way to each node (0-padded), ``levels[l]`` = slice of level l."""

    expansion: tuple[int, ...]
    parents: Tensor
    depth: Tensor
    paths: Tensor
    levels: tuple[slice, ...]

    @classmethod
    def build(cls, expansion: tuple[int, ...]) -> Tree:
        parents, depth, levels = [-1], [0], [slice(0, 1)]
        prev = [0]
        for d, e in enumerate(expansion, start=1):
            first = len(parents)
            level = []
            for p in prev:
                for _ in range(e):
                    level.append(len(parents))
                    parents.append(p)
                    depth.append(d)
            levels.append(slice(first, len(parents)))
            prev = level
        D = len(expansion)
        paths = torch.zeros(len(parents), max(D, 1), dtype=torch.long)
        for i in range(1, len(parents)):
            node, d = i, depth[i]
            while node > 0:
                paths[i, d - 1] = node
                node, d = parents[node], d - 1
        return cls(expansion, torch.tensor(parents), torch.tensor(depth), paths, tuple(levels))

    @property
    def size(self) -> int:
        return int(self.parents.numel())


def _check_expansion(expansion: Sequence[int]) -> tuple[int, ...]:
    exp = tuple(expansion)
    if not exp or any(not isinstance(e, int) or e < 1 for e in exp):
        raise ConfigError(
            f"tree expansion must be a non-empty sequence of ints >= 1 (children per node at "
            f"each depth), got {expansion!r}; e.g. expansion=(2, 2, 1, 1)"
        )
    return exp


def move_path(cache: KVCache, root: Tensor, path: Tensor) -> None:
    """Move the cache entries of the nodes ``path`` (B, n) (slots ``root + path``) to slots
    ``root + 1 .. root + n``, right after each row's root slot ``root`` (B,)."""
    n = path.shape[1]
    dst = root[:, None] + 1 + torch.arange(n, device=path.device)[None, :]  # (B, n)
    cache.move_entries(root[:, None] + path, dst)


def _node_histories(rows: Rows, tokens: Tensor, tree: Tree, nodes: range) -> list[Tensor]:
    """Per node: the row's sequence plus the tokens on the path to it (repetition penalty)."""
    out = []
    for i in nodes:
        d = int(tree.depth[i])
        path = tokens.gather(1, tree.paths[i, :d].expand(tokens.shape[0], d))
        out.append(torch.cat([rows.seq, path], 1))
    return out


def _processed(
    picker: TokenPicker, logits: Tensor, rows: Rows, tokens: Tensor, tree: Tree, first: int
) -> Tensor:
    """Processed logits (B, n, V) of nodes ``first .. first + n - 1``."""
    if not picker.processors:
        return logits
    hist = _node_histories(rows, tokens, tree, range(first, first + logits.shape[1]))
    return torch.cat([picker.process(logits[:, j : j + 1], h) for j, h in enumerate(hist)], dim=1)


def draft_tree(
    draft_model: CausalLM, cache: KVCache, rows: Rows, tree: Tree, picker: TokenPicker
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Tokens of all M nodes (B, M) (node 0 = last token), the draft's probabilities at the
    internal nodes (B, M_internal, V) when sampling, and the root slots (B,)."""
    stats = rows.stats
    B, M = rows.seq.shape[0], tree.size
    tokens = torch.zeros(B, M, dtype=torch.long, device=rows.seq.device)
    tokens[:, 0] = rows.last()
    logits = catch_up(draft_model, cache, rows)[:, None]  # (B, 1, V) at the root
    stats.draft_forward_passes += 1
    root = cache.lengths - 1  # (B,) slot of the root
    mask = masks.tree(tree.parents, root)
    q_levels: list[Tensor] = []
    for d, e in enumerate(tree.expansion, start=1):
        parent_level = tree.levels[d - 1]
        scores = _processed(picker, logits, rows, tokens, tree, parent_level.start)  # (B, n, V)
        n = scores.shape[1]
        if picker.greedy:
            children = scores.topk(e, dim=-1).indices  # (B, n, e)
        else:
            q = logits_to_probs(scores)  # (B, n, V)
            q_levels.append(q)
            flat = q.reshape(B * n, -1)
            children = torch.multinomial(flat, e, replacement=True, generator=picker.generator)
        level = tree.levels[d]
        tokens[:, level] = children.reshape(B, n * e)
        if d < len(tree.expansion):  # leaves are never fed to the draft
            pos = root[:, None] + d  # (B, 1)
            logits = draft_model(
                tokens[:, level], positions=pos.expand(B, n * e), cache=cache, mask=mask
            ).logits  # (B, n*e, V)
            stats.draft_forward_passes += 1
    q_all = torch.cat(q_levels, 1) if q_levels else None
    return tokens, q_all, root


def accept_tree_greedy(tokens: Tensor, target: Tensor, tree: Tree) -> tuple[Tensor, Tensor]:
    """Deepest node whose path equals the target's argmax: (node (B,), next token (B,))."""
    B = tokens.shape[0]
    ok = torch.zeros_like(tokens, dtype=torch.bool)
    ok[:, 0] = True
    for level in tree.levels[1:]:
        par = tree.parents[level]
        ok[:, level] = ok[:, par] & (tokens[:, level] == target[:, par])
    score = torch.where(ok, tree.depth[None, :] + 1, 0)  # (B, M)
    best = score.argmax(-1)  # (B,)
    return best, target[torch.arange(B), best]


def accept_tree_sampling(
    tokens: Tensor, q: Tensor, p: Tensor, tree: Tree, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """SpecInfer's multi-step speculative sampling down the tree: (node (B,), next (B,)).

    ``q`` (B, M_internal, V): draft probabilities at internal nodes (children were drawn
    i.i.d. from them); ``p`` (B, M, V): target probabilities at every node."""
    B = p.shape[0]
    rows = torch.arange(B, device=p.device)
    node = torch.zeros(B, dtype=torch.long, device=p.device)
    done = torch.zeros(B, dtype=torch.bool, device=p.device)
    next_token = torch.full((B,), -1, dtype=torch.long, device=p.device)
    for d, e in enumerate(tree.expansion, start=1):
        level = tree.levels[d]
        parent_first = tree.levels[d - 1].start
        p_u = p[rows, node]  # (B, V) target at the current node
        q_u = q[rows, node]  # (B, V) internal nodes are numbered first
        moved = torch.zeros(B, dtype=torch.bool, device=p.device)
        first_child = level.start + (node - parent_first) * e  # (B,)
        for c in range(e):
            child = first_child + c  # (B,)
            child = torch.where(done, 0, child)  # rows that stopped earlier: ignored
            x = tokens[rows, child]
            u = torch.rand(B, generator=generator, device=p.device)
            px, qx = p_u[rows, x], q_u[rows, x]
            take = ~done & ~moved & (u * qx < px)
            node = torch.where(take, child, node)
            moved |= take
            p_u = torch.where(~moved[:, None], residual_distribution(p_u, q_u), p_u)
        stop = ~done & ~moved  # every child rejected: draw from the residual
        if bool(stop.any()):
            draw = torch.multinomial(p_u, 1, generator=generator).squeeze(1)
            next_token = torch.where(stop, draw, next_token)
        done |= stop
        if bool(done.all()):
            return node, next_token
    bonus = torch.multinomial(p[rows, node], 1, generator=generator).squeeze(1)
    return node, torch.where(done, next_token, bonus)


def tree_speculative(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor,
    streamer: Streamer | None = None,
    draft_model: CausalLM | None = None,
    expansion: Sequence[int] | None = None,
    depth: int = 4,
    branching: int = 2,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Strategy ``tree-speculative``. The tree is ``expansion`` (children per node at each
    depth) or, by default, ``(branching,) + (1,) * (depth - 1)``: ``branching`` chains that
    share the root (small trees pay on a CPU, where every node costs target compute)."""
    draft = check_draft_model(model, draft_model, "tree-speculative")
    if expansion is None:
        if (
            not isinstance(depth, int)
            or depth < 1
            or not isinstance(branching, int)
            or branching < 1
        ):
            raise ConfigError(
                f"depth and branching must be ints >= 1, got depth={depth!r}, branching={branching!r}"
            )
        expansion = (branching,) + (1,) * (depth - 1)
    tree = Tree.build(_check_expansion(expansion))
    D, M = len(tree.expansion), tree.size
    device = input_ids.device
    tree = Tree(
        tree.expansion,
        tree.parents.to(device),
        tree.depth.to(device),
        tree.paths.to(device),
        tree.levels,
    )
    picker = TokenPicker(config, do_sample, generator, device)
    rows = Rows(input_ids, prompt_lengths, config, streamer, scratch=D + 1)
    stats = rows.stats
    cache_len = cache_budget(
        [model, draft],
        input_ids,
        prompt_lengths,
        config.max_new_tokens,
        extra=M,
        extra_required=False,
    )
    if rows.all_finished():  # max_new_tokens = 0
        return rows.finish()
    with torch.no_grad():
        target_cache, draft_cache = first_step([model, draft], rows, picker, cache_len)
        while not rows.all_finished():
            live = ~rows.finished
            if cache_len - int(rows.length[live].max()) < M:  # no room for a tree: one token
                logits = model(rows.last()[:, None], cache=target_cache, commit=False).logits
                stats.target_forward_passes += 1
                rows.watch(logits)
                nxt = picker.pick(logits[:, 0], rows.seq)
                counts = rows.emit(nxt[:, None], torch.ones_like(nxt))
                target_cache.commit(counts)
                park_finished(rows, target_cache, draft_cache)
                continue
            tokens, q, d_root = draft_tree(draft, draft_cache, rows, tree, picker)
            root = target_cache.lengths.clone()  # (B,) root slot
            positions = root[:, None] + tree.depth[None, :]  # (B, M)
            logits = model(
                tokens,
                positions=positions,
                cache=target_cache,
                mask=masks.tree(tree.parents, root),
                commit=False,
            ).logits  # (B, M, V)
            stats.target_forward_passes += 1
            rows.watch(logits)
            scores = _processed(picker, logits, rows, tokens, tree, 0)  # (B, M, V)
            if picker.greedy:
                best, nxt = accept_tree_greedy(tokens, scores.argmax(-1), tree)
            else:
                assert q is not None
                best, nxt = accept_tree_sampling(
                    tokens, q, logits_to_probs(scores), tree, picker.generator
                )
            n = tree.depth[best]  # (B,) accepted draft tokens
            path = tree.paths[best]  # (B, D)
            emitted = accepted_tokens(tokens.gather(1, path), n, nxt)  # (B, D+1)
            counts = rows.emit(emitted, n + 1)
            # the target cache: root + accepted path into place, then commit
            move_path(target_cache, root, path)
            target_cache.commit(counts)
            # the draft cache holds root + levels 1..D-1: same move, keep what is valid
            move_path(draft_cache, d_root, path[:, : max(D - 1, 0)])
            valid = d_root + 1 + torch.minimum(n, torch.full_like(n, D - 1))
            draft_cache.crop(torch.minimum(valid, d_root + counts))
            park_finished(rows, target_cache, draft_cache)
    return rows.finish()
