"""Declarative attention masks: ``MaskSpec`` and its constructors.

A mask is a predicate ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` in the
FlexAttention convention (True = the query may attend to the key), from
"FlexAttention: A Programming Model for Generating Optimized Attention Kernels"
(Dong et al., 2024, arXiv:2412.05496). Indices are *absolute* positions in the
sequence; a backend that runs a chunk of queries at ``q_offset`` calls
``mask_mod(b, h, q_offset[b] + i, j)``.

``mask_mod`` is vectorised: it receives broadcastable index tensors (or 0-d tensors
under ``torch.vmap`` when FlexAttention builds a ``BlockMask``) and uses tensor ops
only, no data-dependent Python control flow. Captured tensors (step ids, parents) are
indexed, never iterated.

Constructors and the idea each one implements:

* ``causal()`` – the classic left-to-right LM.
* ``prefix(n)`` – prefix-LM / non-causal decoder (T5, "UniLM", Dong et al. 2019).
* ``block_causal(step_ids)`` – step-wise AR: block diffusion, VAR, ACDiT.
* ``block_diffusion(n, block_size)`` – the vectorised training mask of block diffusion
  over ``[x_t ; x_0]`` (BD3-LM, Arriola et al. 2025, arXiv:2503.09573).
* ``two_stream(step_ids)`` – content/query streams, XLNet (Yang et al. 2019,
  arXiv:1906.08237) and any-order AR.
* ``sliding_window(w)`` – local attention (Longformer, Mistral).
* ``sets(prefix_len, option_lens, suffix_len)`` – set-based prompting, "Order-Independence
  Without Fine Tuning" (McIlroy-Young et al., 2024, arXiv:2406.06581).
* ``tree(parents, start)`` – speculative tree verification (SpecInfer, Miao et al. 2023,
  arXiv:2305.09781; Medusa).
* ``document(ids)`` – packed sequences: causal within one document;
  ``document_inputs(ids, is_input)`` – bidirectional among one document's inputs
  (packed non-causal decoders, Wang et al. 2022).
* ``key_padding(valid)`` – keys that are real tokens.
* ``table(visible, start)`` – a block whose visibility is given as a boolean table,
  causal context before it (lookahead decoding's block, SequenceMatch's backtracking).
* ``context_and_self(end)`` and ``two_stream_decode(...)`` – the cache-side masks of one
  step call of a two-stream step model (queries read the context and themselves).

Every mask of every package is built here: a package that needs a new pattern adds a
constructor (with a content-based ``cache_key``: equal keys must mean equal masks, so
keys are built from values, never from ``id()``).

Notation: ``q``/``kv`` absolute query/key indices; ``N`` the length a mask covers.
Constructors clamp their lookups into captured tensors to ``[0, N)`` so that padded
blocks of a kernel never index out of range; ``to_dense`` and the attention backends
refuse queries and keys that lie beyond ``N`` (``MaskSpec.length``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ar_core.errors import ConfigError

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
# Builds the mask_mod for a device (the captured tensors must live where the indices live).
MaskModFactory = Callable[[torch.device], MaskMod]


@dataclass(frozen=True, eq=False)
class MaskSpec:
    """A declarative attention mask.

    Args:
        mask_mod: ``(b, h, q_idx, kv_idx) -> bool tensor``, True = may attend.
        name: a readable name (shown in errors and benchmarks).
        is_causal: True only for the plain causal mask (backends' fast path).
        cache_key: hashable identity of the mask (equal keys = equal masks). Defaults to
            the ``mask_mod`` object itself.
        length: number of absolute positions the mask is defined on (None = unbounded).
        factory: rebuilds ``mask_mod`` for another device; None = ``mask_mod`` works on
            every device (it captures no tensors).
    """

    mask_mod: MaskMod
    name: str
    is_causal: bool = False
    cache_key: Hashable = None
    length: int | None = None
    factory: MaskModFactory | None = field(default=None, repr=False)
    _per_device: dict[str, MaskMod] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cache_key is None:
            object.__setattr__(self, "cache_key", ("mask_mod", self.mask_mod))
        if self.length is not None and self.length < 0:
            raise ConfigError(f"MaskSpec {self.name!r}: length must be >= 0, got {self.length}")

    # -- device -------------------------------------------------------------------------
    def mask_mod_for(self, device: torch.device | str) -> MaskMod:
        """The ``mask_mod`` whose captured tensors live on ``device`` (built once per device)."""
        if self.factory is None:
            return self.mask_mod
        key = str(torch.device(device))
        mod = self._per_device.get(key)
        if mod is None:
            mod = self.factory(torch.device(device))
            self._per_device[key] = mod
        return mod

    # -- combinators --------------------------------------------------------------------
    def __and__(self, other: MaskSpec) -> MaskSpec:
        return _combine(self, other, "&")

    def __or__(self, other: MaskSpec) -> MaskSpec:
        return _combine(self, other, "|")

    # -- dense form -------------------------------------------------------------------
    def check_range(self, q_end: int, kv_end: int) -> None:
        """Raise ``ConfigError`` when queries up to ``q_end`` or keys up to ``kv_end``
        (exclusive, absolute) lie beyond the positions this mask is defined on."""
        if self.length is None:
            return
        if q_end > self.length or kv_end > self.length:
            raise ConfigError(
                f"mask {self.name!r} covers {self.length} positions but attention asks for "
                f"queries up to {q_end} and keys up to {kv_end}; build the mask for the "
                f"full sequence length"
            )

    def to_dense(
        self,
        q_len: int,
        kv_len: int,
        q_offset: int | Tensor = 0,
        batch_size: int = 1,
        *,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The mask as a (B, q_len, kv_len) bool tensor: ``out[b, i, j] = mask_mod(b, 0,
        q_offset[b] + i, j)``. ``q_offset``: an int or a (B,) long tensor."""
        if device is None:
            device = q_offset.device if isinstance(q_offset, Tensor) else torch.device("cpu")
        offsets = _batch_offsets(q_offset, batch_size, device)  # (B,)
        if q_len < 0 or kv_len < 0:
            raise ConfigError(f"to_dense needs q_len, kv_len >= 0, got {q_len}, {kv_len}")
        if q_len > 0 and kv_len > 0 and not torch.compiler.is_compiling():
            self.check_range(int(offsets.max()) + q_len, kv_len)
        b = torch.arange(offsets.shape[0], device=device)[:, None, None]  # (B, 1, 1)
        h = torch.zeros((), dtype=torch.long, device=device)
        q = offsets[:, None, None] + torch.arange(q_len, device=device)[None, :, None]  # (B, Tq, 1)
        kv = torch.arange(kv_len, device=device)[None, None, :]  # (1, 1, Tk)
        out = self.mask_mod_for(device)(b, h, q, kv)
        return out.to(torch.bool).expand(offsets.shape[0], q_len, kv_len).contiguous()

    def __repr__(self) -> str:
        return f"MaskSpec({self.name})"


def _batch_offsets(q_offset: int | Tensor, batch_size: int, device: torch.device | str) -> Tensor:
    """``q_offset`` as a (B,) long tensor on ``device``."""
    if isinstance(q_offset, Tensor):
        if q_offset.dim() != 1:
            raise ConfigError(
                f"q_offset must be an int or a (B,) tensor, got shape {tuple(q_offset.shape)}"
            )
        return q_offset.to(device=device, dtype=torch.long)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return torch.full((batch_size,), int(q_offset), dtype=torch.long, device=device)


def _combine(a: MaskSpec, b: MaskSpec, op: str) -> MaskSpec:
    if not isinstance(b, MaskSpec):
        raise ConfigError(f"can only combine a MaskSpec with a MaskSpec, got {type(b).__name__}")

    def factory(device: torch.device) -> MaskMod:
        mod_a, mod_b = a.mask_mod_for(device), b.mask_mod_for(device)
        if op == "&":

            def both(bi: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
                return mod_a(bi, h, q, kv) & mod_b(bi, h, q, kv)

            return both

        def either(bi: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return mod_a(bi, h, q, kv) | mod_b(bi, h, q, kv)

        return either

    lengths = [n for n in (a.length, b.length) if n is not None]
    return _spec(
        factory,
        name=f"({a.name} {op} {b.name})",
        cache_key=(op, a.cache_key, b.cache_key),
        is_causal=a.is_causal and b.is_causal,
        length=min(lengths) if lengths else None,
        device=torch.device("cpu"),
    )


def _spec(
    factory: MaskModFactory,
    *,
    name: str,
    cache_key: Hashable,
    is_causal: bool = False,
    length: int | None = None,
    device: torch.device,
) -> MaskSpec:
    """A MaskSpec whose ``mask_mod`` is built by ``factory`` (on ``device`` first)."""
    return MaskSpec(
        mask_mod=factory(device),
        name=name,
        is_causal=is_causal,
        cache_key=cache_key,
        length=length,
        factory=factory,
    )


def _int_vector(values: Tensor | Sequence[int], what: str) -> Tensor:
    """A validated 1-D integer tensor (a private copy, so later edits by the caller cannot
    make a cached mask stale)."""
    t = torch.as_tensor(values)
    if t.dim() != 1:
        raise ConfigError(f"{what} must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ConfigError(f"{what} must not be empty")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ConfigError(f"{what} must hold integers, got dtype {t.dtype}")
    return t.detach().to(torch.long).clone()


def _key(t: Tensor) -> tuple[int, ...]:
    return tuple(int(x) for x in t.flatten().tolist())


# ----------------------------------------------------------------------------------
# Constructors
# ----------------------------------------------------------------------------------


def causal() -> MaskSpec:
    """Query ``q`` sees key ``kv`` iff ``kv <= q``."""

    def causal_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return kv <= q

    return MaskSpec(causal_mod, name="causal", is_causal=True, cache_key=("causal",))


def prefix(n: int | Tensor) -> MaskSpec:
    """Prefix-LM: bidirectional within the first ``n`` positions, causal after.

    ``n``: an int, or a (B,) long tensor with one prefix length per row.
    """
    per_row = isinstance(n, Tensor)
    if isinstance(n, Tensor):
        if n.dim() != 1 or n.dtype.is_floating_point or n.dtype == torch.bool:
            raise ConfigError(
                f"prefix lengths must be an int or a (B,) integer tensor, got shape "
                f"{tuple(n.shape)} and dtype {n.dtype}"
            )
        lengths = n.detach().to(device="cpu", dtype=torch.long).clone()
    else:
        lengths = torch.tensor(int(n), dtype=torch.long)
    if bool((lengths < 0).any()):
        raise ConfigError(f"prefix length must be >= 0, got {lengths.tolist()}")

    def factory(device: torch.device) -> MaskMod:
        lengths_d = lengths.to(device)  # a tensor, not a constant: no recompile per length

        def prefix_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            n_b = lengths_d[b] if per_row else lengths_d
            # A query after the prefix sees all of it causally anyway.
            return (kv <= q) | (kv < n_b)

        return prefix_mod

    return _spec(
        factory,
        name=f"prefix({lengths.tolist()})",
        cache_key=("prefix", per_row, _key(lengths)),
        device=torch.device("cpu"),
    )


def block_causal(step_ids: Tensor | Sequence[int]) -> MaskSpec:
    """Step-wise AR: position ``i`` sees ``j`` iff ``step(j) <= step(i)``.

    ``step_ids``: (N,) integers, the step of each position (``Plan.step_ids()``).
    """
    steps = _int_vector(step_ids, "block_causal step_ids")
    n = steps.numel()

    def factory(device: torch.device) -> MaskMod:
        s = steps.to(device)

        def block_causal_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return s[kv.clamp(0, n - 1)] <= s[q.clamp(0, n - 1)]

        return block_causal_mod

    return _spec(
        factory,
        name=f"block_causal(N={n})",
        cache_key=("block_causal", _key(steps)),
        length=n,
        device=steps.device,
    )


def block_diffusion(n: int, block_size: int) -> MaskSpec:
    """Block diffusion's training mask over ``[x_t (n) ; x_0 (n)]`` (2n positions), one
    forward for every block (BD3-LM, Arriola et al. 2025, arXiv:2503.09573, section 3.2).

    With ``block(i) = (i mod n) // block_size``:

    * noisy ``q`` sees noisy ``kv`` iff both are in the same block (block-diagonal);
    * noisy ``q`` sees clean ``kv`` iff ``block(kv) < block(q)`` (the clean prefix);
    * clean ``q`` sees clean ``kv`` iff ``block(kv) <= block(q)`` (block-causal);
    * clean never sees noisy.
    """
    if n < 1 or block_size < 1:
        raise ConfigError(
            f"block_diffusion needs n >= 1 and block_size >= 1, got {n}, {block_size}"
        )
    if n % block_size:
        raise ConfigError(
            f"block_diffusion: block_size={block_size} does not divide the length n={n}; "
            f"use a length that is a multiple of the block size"
        )

    def block_diffusion_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        q_c, kv_c = q.clamp(0, 2 * n - 1), kv.clamp(0, 2 * n - 1)
        q_noisy, kv_noisy = q_c < n, kv_c < n
        block_q, block_kv = (q_c % n) // block_size, (kv_c % n) // block_size
        noisy_noisy = q_noisy & kv_noisy & (block_q == block_kv)
        noisy_clean = q_noisy & ~kv_noisy & (block_kv < block_q)
        clean_clean = ~q_noisy & ~kv_noisy & (block_kv <= block_q)
        return noisy_noisy | noisy_clean | clean_clean

    return MaskSpec(
        block_diffusion_mod,
        name=f"block_diffusion(n={n}, block={block_size})",
        cache_key=("block_diffusion", n, block_size),
        length=2 * n,
    )


def two_stream(step_ids: Tensor | Sequence[int], *, query_sees_own_step: bool = False) -> MaskSpec:
    """Two-stream attention over ``[content (N) ; query (N)]`` (2N positions).

    * content ``i`` sees content ``j`` iff ``step(j) <= step(i)``;
    * query ``i`` sees content ``j`` iff ``step(j) < step(i)``, and itself;
      with ``query_sees_own_step`` also the queries of its own step;
    * content never sees queries.
    """
    steps = _int_vector(step_ids, "two_stream step_ids")
    n = steps.numel()

    def factory(device: torch.device) -> MaskMod:
        s = steps.to(device)

        def two_stream_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            q_c, kv_c = q.clamp(0, 2 * n - 1), kv.clamp(0, 2 * n - 1)
            q_is_query, kv_is_query = q_c >= n, kv_c >= n
            s_q, s_kv = s[q_c % n], s[kv_c % n]
            content_content = ~q_is_query & ~kv_is_query & (s_kv <= s_q)
            query_content = q_is_query & ~kv_is_query & (s_kv < s_q)
            same_query = q_is_query & kv_is_query
            if query_sees_own_step:  # a Python constant, fixed at construction
                query_query = same_query & (s_kv == s_q)
            else:
                query_query = same_query & (kv_c == q_c)
            return content_content | query_content | query_query

        return two_stream_mod

    return _spec(
        factory,
        name=f"two_stream(N={n}, own_step={query_sees_own_step})",
        cache_key=("two_stream", query_sees_own_step, _key(steps)),
        length=2 * n,
        device=steps.device,
    )


def sliding_window(w: int) -> MaskSpec:
    """Causal local attention: ``kv <= q`` and ``q - kv < w``."""
    if w < 1:
        raise ConfigError(f"sliding_window needs a window w >= 1, got {w}")

    def sliding_window_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv <= q) & (q - kv < w)

    return MaskSpec(sliding_window_mod, name=f"sliding_window({w})", cache_key=("window", w))


def sets(prefix_len: int, option_lens: Sequence[int], suffix_len: int = 0) -> MaskSpec:
    """Set-based prompting over ``[prefix ; option_0 ; ... ; option_{K-1} ; suffix]``.

    Options attend causally to the shared prefix and to themselves, never to each other;
    the prefix is causal; the suffix sees everything causally. (The model should also give
    every option the same position ids; that is not the mask's job.)
    """
    lens = [int(x) for x in option_lens]
    if prefix_len < 0 or suffix_len < 0:
        raise ConfigError(
            f"sets needs prefix_len >= 0 and suffix_len >= 0, got {prefix_len}, {suffix_len}"
        )
    if not lens or any(x < 1 for x in lens):
        raise ConfigError(f"sets needs at least one option, each of length >= 1, got {lens}")
    k = len(lens)
    # segment of each position: -1 prefix, 0..K-1 options, K suffix
    segments = torch.cat(
        [
            torch.full((prefix_len,), -1, dtype=torch.long),
            *(torch.full((x,), i, dtype=torch.long) for i, x in enumerate(lens)),
            torch.full((suffix_len,), k, dtype=torch.long),
        ]
    )
    n = segments.numel()

    def factory(device: torch.device) -> MaskMod:
        seg = segments.to(device)

        def sets_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            seg_q, seg_kv = seg[q.clamp(0, n - 1)], seg[kv.clamp(0, n - 1)]
            visible = (seg_kv == seg_q) | (seg_kv == -1) | (seg_q == k)
            return (kv <= q) & visible

        return sets_mod

    return _spec(
        factory,
        name=f"sets({prefix_len}, {lens}, {suffix_len})",
        cache_key=("sets", prefix_len, tuple(lens), suffix_len),
        length=n,
        device=torch.device("cpu"),
    )


def _ancestors(parents: Tensor) -> Tensor:
    """(M, M) bool: ``anc[i, j]`` iff node ``j`` is node ``i`` or one of its ancestors.
    Needs ``parents[i] < i`` (a topological order), so one pass suffices."""
    m = parents.numel()
    anc = torch.eye(m, dtype=torch.bool)
    for i, p in enumerate(parents.tolist()):
        if p >= 0:
            anc[i] |= anc[p]
    return anc


def tree(parents: Tensor | Sequence[int], start: int | Tensor) -> MaskSpec:
    """Speculative tree verification.

    ``parents``: (M,) long, the parent node of each of the M tree nodes, -1 for a root
    (whose parent is the committed context); parents come before children
    (``parents[i] < i``). ``start``: int or (B,) long, the absolute index of node 0.
    A node sees every key before ``start`` (the context), its ancestors and itself.
    Queries before ``start`` (the context itself) are causal. With a per-row ``start``
    the mask covers ``max(start) + M`` positions; in a row whose tree ends earlier, the
    positions past its last node are not nodes: no node sees them and they see nothing.
    """
    par = _int_vector(parents, "tree parents").cpu()
    m = par.numel()
    node = torch.arange(m)
    bad = (par >= node) | (par < -1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ConfigError(
            f"tree parents must satisfy -1 <= parents[i] < i (parents before children); "
            f"got parents[{i}] = {int(par[i])}"
        )
    anc = _ancestors(par)  # (M, M)
    if isinstance(start, Tensor):
        if start.dim() != 1 or start.dtype.is_floating_point:
            raise ConfigError(
                f"tree start must be an int or a (B,) long tensor, got shape "
                f"{tuple(start.shape)} and dtype {start.dtype}"
            )
        starts = start.detach().to(device="cpu", dtype=torch.long).clone()
    else:
        starts = torch.tensor([int(start)], dtype=torch.long)
    if bool((starts < 0).any()):
        raise ConfigError(f"tree start must be >= 0, got {starts.tolist()}")
    per_row = isinstance(start, Tensor)

    def factory(device: torch.device) -> MaskMod:
        anc_d, starts_d = anc.to(device), starts.to(device)

        def tree_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            s = starts_d[b] if per_row else starts_d[0]
            q_node, kv_node = (q - s).clamp(0, m - 1), (kv - s).clamp(0, m - 1)
            in_context = (q < s) & (kv <= q)
            q_is_node, kv_is_node = (q >= s) & (q - s < m), (kv >= s) & (kv - s < m)
            node_sees = q_is_node & ((kv < s) | (kv_is_node & anc_d[q_node, kv_node]))
            return in_context | node_sees

        return tree_mod

    return _spec(
        factory,
        name=f"tree(M={m})",
        cache_key=("tree", _key(par), _key(starts), per_row),
        length=int(starts.max()) + m,
        device=torch.device("cpu"),
    )


def document(ids: Tensor | Sequence[int], *, causal: bool = True) -> MaskSpec:
    """Packed sequences: only within the same document, and causal unless ``causal=False``
    (then every position sees its whole document: bidirectional encoders, packed
    non-causal decoders built as ``document(ids) | (document(ids, causal=False) & ...)``).

    ``ids``: (N,) document id of each position, shared by all rows, or (B, N) per row.
    """
    doc = torch.as_tensor(ids)
    if doc.dim() not in (1, 2) or doc.shape[-1] == 0:
        raise ConfigError(f"document ids must be (N,) or (B, N), got shape {tuple(doc.shape)}")
    if doc.dtype.is_floating_point or doc.dtype.is_complex or doc.dtype == torch.bool:
        raise ConfigError(f"document ids must hold integers, got dtype {doc.dtype}")
    doc = doc.detach().to(torch.long).clone()
    n = doc.shape[-1]
    per_row = doc.dim() == 2

    def factory(device: torch.device) -> MaskMod:
        d = doc.to(device)

        def document_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            q_c, kv_c = q.clamp(0, n - 1), kv.clamp(0, n - 1)
            same = d[b, q_c] == d[b, kv_c] if per_row else d[q_c] == d[kv_c]
            return (kv <= q) & same if causal else same

        return document_mod

    return _spec(
        factory,
        name=f"document(N={n}{'' if causal else ', causal=False'})",
        cache_key=("document", causal, tuple(doc.shape), _key(doc)),
        length=n,
        device=doc.device,
    )


def key_padding(valid: Tensor | Sequence[bool]) -> MaskSpec:
    """Keys that are real tokens: query ``q`` of row ``b`` may see key ``kv`` iff
    ``valid[b, kv]`` (``valid[kv]`` for (N,)). ``valid``: (N,) or (B, N) bool, False on
    padding. Combine it with the structure: ``causal() & key_padding(valid)``."""
    v = torch.as_tensor(valid)
    if v.dim() not in (1, 2) or v.shape[-1] == 0:
        raise ConfigError(f"key_padding needs (N,) or (B, N) flags, got shape {tuple(v.shape)}")
    if v.dtype != torch.bool:
        raise ConfigError(
            f"key_padding needs a bool tensor (True = real token), got dtype {v.dtype}"
        )
    v = v.detach().clone()
    n = v.shape[-1]
    per_row = v.dim() == 2

    def factory(device: torch.device) -> MaskMod:
        v_d = v.to(device)

        def key_padding_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            kv_c = kv.clamp(0, n - 1)
            keep = v_d[b, kv_c] if per_row else v_d[kv_c]
            return keep & (q >= 0)  # broadcast to the query axis

        return key_padding_mod

    return _spec(
        factory,
        name=f"key_padding(N={n})",
        cache_key=("key_padding", tuple(v.shape), _key(v.to(torch.long))),
        length=n,
        device=v.device,
    )


def _digest(t: Tensor) -> str:
    """A content hash of a tensor (shape, dtype and values) for cache keys."""
    data = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(str((tuple(data.shape), str(data.dtype))).encode())
    h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


def table(
    visible: Tensor, *, start: int | Tensor | Sequence[int] = 0, name: str = "table"
) -> MaskSpec:
    """A block whose visibility is a table, after a causal context.

    ``visible``: (n, n) or (B, n, n) bool, ``visible[b, i, j]`` = slot ``i`` of the block
    sees slot ``j``. The block of row ``b`` starts at absolute index ``start`` (an int or
    (B,) per row). Query ``q`` sees key ``kv`` iff both lie in the block and the table says
    so, or ``kv < start[b]`` and ``kv <= q`` (causal context before the block). With
    ``start = 0`` the mask covers exactly n positions (``length = n``). The cache key is a
    hash of the table's values and the starts, never an object's identity.
    """
    if torch.compiler.is_compiling():  # a compiled pass builds it from its inputs
        return _traced_table(visible, start, name)
    v = torch.as_tensor(visible)
    if v.dtype != torch.bool:
        raise ConfigError(f"table needs a bool visibility table, got dtype {v.dtype}")
    if v.dim() not in (2, 3) or v.shape[-1] != v.shape[-2] or v.shape[-1] == 0:
        raise ConfigError(f"table needs an (n, n) or (B, n, n) table, got shape {tuple(v.shape)}")
    v = v.detach().clone()
    n = v.shape[-1]
    per_row = v.dim() == 3
    per_row_start = not isinstance(start, int)
    if isinstance(start, int):
        starts = torch.tensor([start])
    else:
        starts = _int_vector(start, "table start")
    if bool((starts < 0).any()):
        raise ConfigError(f"table start must be >= 0, got {starts.tolist()}")
    if per_row and per_row_start and starts.numel() != v.shape[0]:
        raise ConfigError(
            f"table: {v.shape[0]} per-row tables but {starts.numel()} starts; give one per row"
        )

    def factory(device: torch.device) -> MaskMod:
        return _table_mod(v.to(device), starts.to(device), per_row, per_row_start)

    return _spec(
        factory,
        name=f"{name}(n={n})",
        cache_key=("table", name, _digest(v), _key(starts), per_row_start),
        length=None if per_row_start or int(starts[0]) else n,
        device=v.device,
    )


def _table_mod(visible: Tensor, starts: Tensor, per_row: bool, per_row_start: bool) -> MaskMod:
    """The ``mask_mod`` of :func:`table`: ``visible`` (n, n) or (B, n, n), ``starts`` (B,)
    per row or (1,) for all."""
    n = visible.shape[-1]

    def table_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        s = starts[b] if per_row_start else starts[0]
        rq, rk = q - s, kv - s
        inside = (rq >= 0) & (rq < n) & (rk >= 0) & (rk < n)
        rq_c, rk_c = rq.clamp(0, n - 1), rk.clamp(0, n - 1)
        seen = visible[b, rq_c, rk_c] if per_row else visible[rq_c, rk_c]
        return (inside & seen) | ((kv < s) & (kv <= q))

    return table_mod


def _traced_table(visible: Tensor, start: int | Tensor | Sequence[int], name: str) -> MaskSpec:
    """:func:`table` inside a compiled graph: the same ``mask_mod`` without the checks,
    the content hash or the length, which read values on the host (a compiled pass's
    caller validated its inputs). (n, n) tables only; ``start`` an int or a (B,) tensor."""
    if visible.dim() != 2:
        raise ConfigError("a compiled table mask takes one (n, n) table for every row")
    per_row_start = isinstance(start, Tensor)
    starts = start if isinstance(start, Tensor) else torch.tensor([start])
    return MaskSpec(
        mask_mod=_table_mod(visible, starts, False, per_row_start),
        name=f"{name}(n={visible.shape[-1]})",
        cache_key=("table", name, "traced"),
    )


def document_inputs(ids: Tensor, is_input: Tensor) -> MaskSpec:
    """Bidirectional block of each packed document's input prefix: ``q`` sees ``kv`` iff
    both are inputs (``is_input``) of the same document (``ids``); both (B, N). Combine
    with ``document(ids)`` for a packed non-causal decoder."""
    d, inp = torch.as_tensor(ids), torch.as_tensor(is_input)
    if d.dim() != 2 or inp.shape != d.shape or d.shape[-1] == 0:
        raise ConfigError(
            f"document_inputs needs ids and is_input of one (B, N) shape, got "
            f"{tuple(d.shape)} and {tuple(inp.shape)}"
        )
    if inp.dtype != torch.bool:
        raise ConfigError(f"document_inputs needs a bool is_input, got dtype {inp.dtype}")
    d, inp = d.detach().to(torch.long).clone(), inp.detach().clone()
    n = d.shape[1]

    def factory(device: torch.device) -> MaskMod:
        d_d, i_d = d.to(device), inp.to(device)

        def inputs_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            q_c, kv_c = q.clamp(0, n - 1), kv.clamp(0, n - 1)
            return (d_d[b, q_c] == d_d[b, kv_c]) & i_d[b, q_c] & i_d[b, kv_c]

        return inputs_mod

    return _spec(
        factory,
        name=f"document_inputs(N={n})",
        cache_key=("document_inputs", _digest(d), _digest(inp)),
        length=n,
        device=d.device,
    )


def context_and_self(end: int) -> MaskSpec:
    """Cache-side mask of one step call of a two-stream step model: key ``kv`` is visible
    iff ``kv < end`` (the committed context and this call's content) or ``kv == q`` (a
    query sees itself)."""
    if end < 0:
        raise ConfigError(f"context_and_self needs end >= 0, got {end}")

    def context_and_self_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv < end) | (kv == q)

    return MaskSpec(context_and_self_mod, name=f"context_and_self({end})", cache_key=("cas", end))


def two_stream_decode(written_from: Tensor, seq_start: Tensor, n_content: int) -> MaskSpec:
    """Cache-side mask of a two-stream step model decoded as a causal LM (one position a
    step; ar-vision's ``CausalLMAdapter``), over rows of different lengths.

    Row ``b`` writes ``n_content`` content entries from cache index ``written_from[b]``,
    then one query per new token. Content at index ``q`` sees ``kv <= max(q, 1)`` (causal;
    the first two entries, ``[BOS]`` and the conditioning, see each other). Query ``i``
    sees the context through the ``i``-th new content entry (cache index
    ``seq_start[b] + i + 1``) and itself. ``written_from``, ``seq_start``: (B,) long.
    """
    w = _int_vector(written_from, "written_from")
    s = _int_vector(seq_start, "seq_start")
    if w.shape != s.shape:
        raise ConfigError(
            f"two_stream_decode: written_from {tuple(w.shape)} and seq_start {tuple(s.shape)} "
            f"must both be (B,)"
        )

    def factory(device: torch.device) -> MaskMod:
        w_d, s_d = w.to(device), s.to(device)

        def two_stream_decode_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            rel = q - w_d[b]
            is_query = rel >= n_content
            limit = s_d[b] + (rel - n_content) + 1  # the content this query reads through
            query_ok = (kv <= limit) | (kv == q)
            content_ok = kv <= torch.clamp(q, min=1)
            return torch.where(is_query, query_ok, content_ok)

        return two_stream_decode_mod

    return _spec(
        factory,
        name=f"two_stream_decode(content={n_content})",
        cache_key=("two_stream_decode", _key(w), _key(s), n_content),
        device=written_from.device if isinstance(written_from, Tensor) else torch.device("cpu"),
    )


__all__ = [
    "MaskMod",
    "MaskSpec",
    "block_causal",
    "block_diffusion",
    "causal",
    "context_and_self",
    "document",
    "document_inputs",
    "key_padding",
    "prefix",
    "sets",
    "sliding_window",
    "table",
    "tree",
    "two_stream",
    "two_stream_decode",
]
