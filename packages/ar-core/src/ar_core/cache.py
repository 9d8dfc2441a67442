"""A preallocated (static-shape) key/value cache with per-row lengths.

The gpt-fast idea (Accelerating Generative AI with PyTorch II: GPT, Fast, PyTorch blog,
2023): allocate the cache once at its final size so every decode step has the same
shapes, which is what makes ``torch.compile`` of the decode step pay off.

On top of that, what the strategies of ``ar`` need:

* per-row ``lengths`` for ragged batches (right-padded prompts of different lengths);
* *pending vs committed* entries: :meth:`StaticKVCache.write` stores new entries after
  the committed ones without committing them, so a forward with ``commit=False`` can be
  repeated (a diffusion block re-encoded many times) and :meth:`commit` makes them
  context;
* :meth:`crop` keeps the buffers (tensor identity) and only lowers ``lengths``
  (speculative decoding rolls back rejected draft tokens this way);
* :meth:`fork` copies rows into an independent cache (beams, trees);
* :meth:`move_entries` copies entries between slots of each row in every layer (a tree
  path or a lookahead branch moved next to the context it extends), and
  :meth:`set_lengths` sets every row's committed count (a view that keeps its own
  bookkeeping, like ar-vision's causal-LM adapter). Nothing outside this class writes
  the buffers: strategies go through these methods.

:class:`StaticKVCache` implements the :class:`~ar_core.protocols.KVCache` protocol.

Notation: B batch rows, H key/value heads, S = max_len, D head dim, T new entries,
L layers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.errors import InputError

__all__ = ["StaticKVCache"]


class StaticKVCache:
    """Keys and values of every layer, ``k[layer]``/``v[layer]`` of shape (B, H, S, D).

    ``lengths`` (B,) long counts the committed entries of each row. The buffers are
    allocated once and never reallocated; ``crop`` and ``commit`` only change
    ``lengths``.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (
            ("n_layers", n_layers),
            ("batch_size", batch_size),
            ("n_kv_heads", n_kv_heads),
            ("head_dim", head_dim),
            ("max_len", max_len),
        ):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"StaticKVCache: {name} must be a positive int, got {value!r}")
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.max_len = max_len
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        # one storage per kind; k[layer] is a view (L, B, H, S, D) -> (B, H, S, D)
        self._k = torch.zeros(shape, dtype=dtype, device=device)
        self._v = torch.zeros(shape, dtype=dtype, device=device)
        self.k: list[Tensor] = list(self._k.unbind(0))
        self.v: list[Tensor] = list(self._v.unbind(0))
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self._k.device)
        # Host-side upper bound of lengths.max(): lets write() check for overflow without
        # a device sync on every layer of every step (the exact value is read only when
        # the bound says the write might overflow).
        self._max_length_bound = 0

    @classmethod
    def for_config(
        cls,
        config: object,
        batch_size: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> StaticKVCache:
        """A cache shaped for any config with ``n_layers``, ``n_kv_heads`` (or
        ``kv_heads``) and ``head_dim`` attributes (a ``TransformerConfig``, an adapter's
        own config); no model needed."""
        try:
            n_layers = int(config.n_layers)  # type: ignore[attr-defined]
            heads = getattr(config, "kv_heads", None) or config.n_kv_heads  # type: ignore[attr-defined]
            head_dim = int(config.head_dim)  # type: ignore[attr-defined]
        except AttributeError as exc:
            raise InputError(
                f"StaticKVCache.for_config needs n_layers, n_kv_heads (or kv_heads) and "
                f"head_dim on the config; {type(config).__name__} lacks {exc.name!r}"
            ) from None
        return cls(n_layers, batch_size, int(heads), head_dim, max_len, dtype, device)

    # -- properties -------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self._k.dtype

    @property
    def device(self) -> torch.device:
        return self._k.device

    def max_length(self) -> int:
        """The longest committed row (an upper bound kept on the host; no device sync)."""
        return self._max_length_bound

    # -- writing ----------------------------------------------------------------------
    def _check_room(self, n_new: int) -> None:
        if self._max_length_bound + n_new <= self.max_len:
            return
        exact = int(self.lengths.max())  # the bound may be stale after crop(tensor)
        self._max_length_bound = exact
        if exact + n_new > self.max_len:
            row = int(self.lengths.argmax())
            raise InputError(
                f"KV cache overflow: row {row} holds {exact} entries and {n_new} more do not "
                f"fit in max_len={self.max_len} ({exact} + {n_new} > {self.max_len}); "
                f"create the cache with a larger max_len (model.new_cache(batch_size, max_len=...))"
            )

    def write_positions(self, n_new: int) -> Tensor:
        """Cache slots the next ``n_new`` entries of each row go to: (B, n_new) long."""
        steps = torch.arange(n_new, device=self.lengths.device)
        return self.lengths[:, None] + steps[None, :]  # (B, T)

    def write(self, layer: int, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Store T pending entries per row at ``lengths[b] .. lengths[b] + T - 1``.

        ``k_new``, ``v_new``: (B, H, T, D). Returns the full buffers ``(k[layer], v[layer])``
        of shape (B, H, S, D). Nothing is committed (see :meth:`commit`).
        """
        if k_new.shape != v_new.shape:
            raise InputError(
                f"KV cache write: k has shape {tuple(k_new.shape)} but v has {tuple(v_new.shape)}"
            )
        B, H, T, D = k_new.shape
        if (self.batch_size, self.n_kv_heads, self.head_dim) != (B, H, D):
            raise InputError(
                f"KV cache write: got (B, H, T, D) = {tuple(k_new.shape)} but the cache holds "
                f"B={self.batch_size}, H={self.n_kv_heads}, D={self.head_dim}"
            )
        if not torch.compiler.is_compiling():  # the host-side bound is not traced
            self._check_room(T)
        k_buf, v_buf = self.k[layer], self.v[layer]
        index = self.write_positions(T)[:, None, :, None].expand(B, H, T, D)  # (B, H, T, D)
        k_buf.scatter_(2, index, k_new.to(k_buf.dtype))
        v_buf.scatter_(2, index, v_new.to(v_buf.dtype))
        return k_buf, v_buf

    # -- lengths ----------------------------------------------------------------------
    def commit(self, n: int | Tensor) -> None:
        """Make ``n`` pending entries of each row (or ``n[b]`` of row b) context."""
        if isinstance(n, Tensor):
            n = n.to(device=self.lengths.device, dtype=torch.long)
            if n.ndim != 1 or n.shape[0] != self.batch_size:
                raise InputError(
                    f"KV cache commit: n must be an int or a ({self.batch_size},) tensor, "
                    f"got shape {tuple(n.shape)}"
                )
            new_lengths = self.lengths + n
            bound = int(new_lengths.max())
        else:
            new_lengths = self.lengths + n
            bound = self._max_length_bound + n
        if bound > self.max_len:
            exact = int(new_lengths.max())
            if exact > self.max_len:
                raise InputError(
                    f"KV cache commit: a row would hold {exact} entries, more than "
                    f"max_len={self.max_len}; create the cache with a larger max_len"
                )
        self.lengths.copy_(new_lengths)
        self._max_length_bound = min(bound, self.max_len)

    def crop(self, n: int | Tensor) -> None:
        """Keep at most ``n`` (or ``n[b]``) committed entries per row; buffers stay put."""
        if isinstance(n, Tensor):
            n = n.to(device=self.lengths.device, dtype=torch.long)
            torch.minimum(self.lengths, n, out=self.lengths)
        else:
            if n < 0:
                raise InputError(f"KV cache crop: n must be >= 0, got {n}")
            self.lengths.clamp_(max=n)
            self._max_length_bound = min(self._max_length_bound, n)

    def set_lengths(self, lengths: Tensor) -> None:
        """Set every row's committed count to ``lengths`` (B,) (in ``[0, max_len]``); the
        buffers are kept. For a view over this cache with its own bookkeeping."""
        lengths = torch.as_tensor(lengths).to(device=self.lengths.device, dtype=torch.long)
        if lengths.shape != (self.batch_size,):
            raise InputError(
                f"KV cache set_lengths: lengths must be ({self.batch_size},), got "
                f"{tuple(lengths.shape)}"
            )
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > self.max_len:
            raise InputError(
                f"KV cache set_lengths: lengths must lie in [0, {self.max_len}], got {lo}..{hi}"
            )
        self.lengths.copy_(lengths)
        self._max_length_bound = hi

    def move_entries(self, src: Tensor, dst: Tensor) -> None:
        """Copy the entries at slots ``src`` (B, m) to slots ``dst`` (B, m) of each row, in
        every layer; lengths are unchanged (commit or crop after). All sources are read
        before any destination is written, so the two may overlap."""
        src = torch.as_tensor(src).to(device=self.device, dtype=torch.long)
        dst = torch.as_tensor(dst).to(device=self.device, dtype=torch.long)
        if src.ndim != 2 or src.shape != dst.shape or src.shape[0] != self.batch_size:
            raise InputError(
                f"KV cache move_entries: src and dst must both be ({self.batch_size}, m), got "
                f"{tuple(src.shape)} and {tuple(dst.shape)}"
            )
        if src.numel() == 0:
            return
        if not torch.compiler.is_compiling():
            lo = int(torch.minimum(src.min(), dst.min()))
            hi = int(torch.maximum(src.max(), dst.max()))
            if lo < 0 or hi >= self.max_len:
                raise InputError(
                    f"KV cache move_entries: slots must lie in [0, {self.max_len}), got {lo}..{hi}"
                )
        L, B, H, _, D = self._k.shape
        m = src.shape[1]
        gather = src[None, :, None, :, None].expand(L, B, H, m, D)
        scatter = dst[None, :, None, :, None].expand(L, B, H, m, D)
        for buf in (self._k, self._v):  # (L, B, H, S, D): one gather and scatter per kind
            buf.scatter_(3, scatter, buf.gather(3, gather))

    def reset(self) -> None:
        """Forget every entry (lengths = 0); the buffers are kept."""
        self.lengths.zero_()
        self._max_length_bound = 0

    def fork(self, index: Tensor | None = None) -> StaticKVCache:
        """An independent copy; ``index`` (long, (B',)) selects (and may repeat) rows."""
        if index is None:
            index = torch.arange(self.batch_size, device=self.device)
        index = index.to(device=self.device, dtype=torch.long)
        if index.ndim != 1 or index.numel() == 0:
            raise InputError(f"KV cache fork: index must be a non-empty 1-d tensor, got {index}")
        out = StaticKVCache.__new__(StaticKVCache)
        out.n_layers, out.n_kv_heads, out.head_dim = self.n_layers, self.n_kv_heads, self.head_dim
        out.max_len, out.batch_size = self.max_len, int(index.numel())
        out._k = self._k.index_select(1, index)  # (L, B', H, S, D), a copy
        out._v = self._v.index_select(1, index)
        out.k, out.v = list(out._k.unbind(0)), list(out._v.unbind(0))
        out.lengths = self.lengths.index_select(0, index)
        out._max_length_bound = self._max_length_bound
        return out

    def __repr__(self) -> str:
        return (
            f"StaticKVCache(n_layers={self.n_layers}, batch_size={self.batch_size}, "
            f"n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, max_len={self.max_len}, "
            f"dtype={self.dtype}, device={self.device})"
        )
