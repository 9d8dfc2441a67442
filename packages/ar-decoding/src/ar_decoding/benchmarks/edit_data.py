"""Edit-format training data: teach a small byte-level model to copy.

The decoding benchmark's edit workload (``edit_prompts`` in
:mod:`ar_decoding.benchmarks.decoding`) asks for a code snippet again with one identifier
renamed. A model trained on plain code windows does not repeat the snippet, so prompt
lookup has nothing to accept. :func:`edit_example` builds the same request from the
*training* text (a snippet, the rename request, the renamed copy) and
:func:`mixed_batches` mixes rows of packed edit examples with plain windows, with the
``(generator, batch_size) -> (B, T+1)`` contract of ``decoding.batches``.

Measured (2-core CPU, the benchmark's 2 x 256 base, 400 Trainer steps of 2048 bytes, half
the rows edit examples, as 4 x 512 with 80-220-byte snippets or 8 x 256 with 40-110): the
model does not learn to copy at that budget. On held-out edit examples its bits per byte
on the renamed copy (3.58, 3.33) stay above those on the snippet itself (3.32, 3.15), and
its greedy code completions fall into runs of spaces.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable

import torch

IDENT = re.compile(rb"\b[a-z_][a-z0-9_]{3,}\b")
SKIP = {b"self", *(k.encode() for k in keyword.kwlist)}
# new names: the benchmark asks for ``_v2``; the others make the model read the request
SUFFIXES: tuple[bytes, ...] = (b"_v2", b"_new", b"_2", b"_old", b"_tmp", b"_x")


def edit_text(snippet: bytes, old: bytes, new: bytes) -> bytes:
    """The edit example for ``snippet`` in the benchmark's format: ``# Before:``, the
    snippet, the rename request, the renamed copy (``snippet.replace(old, new)``)."""
    return (
        b"# Before:\n" + snippet + b"\n# After renaming `" + old + b"` to `" + new
        + b"`:\n" + snippet.replace(old, new)
    )  # fmt: skip


def edit_example(
    text: bytes,
    gen: torch.Generator,
    min_len: int = 80,
    max_len: int = 220,
    suffixes: tuple[bytes, ...] = SUFFIXES,
    tries: int = 20,
) -> tuple[bytes, bytes, bytes] | None:
    """(snippet, old, new) from a random place of ``text``: whole lines of ``min_len`` to
    ``max_len`` bytes, ``old`` a random identifier of the snippet (>= 4 characters, not a
    keyword or ``self``), ``new`` = ``old`` + a random suffix. None when ``tries`` random
    places give no such snippet."""
    if not 0 < min_len <= max_len:
        raise ValueError(
            f"snippet lengths must satisfy 0 < min_len <= max_len, got {min_len}, {max_len}"
        )
    if len(text) < 2 * max_len:
        raise ValueError(
            f"text of {len(text)} bytes is too short for snippets of {max_len}: give >= {2 * max_len}"
        )
    for _ in range(tries):
        at = int(torch.randint(0, len(text) - max_len, (1,), generator=gen))
        begin = text.find(b"\n", at, at + max_len) + 1
        if begin == 0:
            continue
        want = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        end = text.rfind(b"\n", begin, begin + want) + 1
        snippet = text[begin:end]
        if end - begin < min_len or not snippet.strip() or not snippet.isascii():
            continue
        names = sorted({m for m in IDENT.findall(snippet) if m not in SKIP})
        if not names:
            continue
        old = names[int(torch.randint(0, len(names), (1,), generator=gen))]
        new = old + suffixes[int(torch.randint(0, len(suffixes), (1,), generator=gen))]
        return snippet, old, new
    return None


def edit_row(text: bytes, gen: torch.Generator, length: int, min_len: int, max_len: int) -> bytes:
    """``length`` bytes of edit examples packed one after another (separated by a blank
    line; the last one is cut)."""
    row = bytearray()
    while len(row) < length:
        found = edit_example(text, gen, min_len, max_len)
        if found is None:
            raise ValueError(
                f"no snippet of {min_len}-{max_len} ASCII bytes with an identifier found in the text"
            )
        row += edit_text(*found) + b"\n\n"
    return bytes(row[:length])


def mixed_batches(
    data: torch.Tensor,
    seq_len: int,
    fraction: float,
    min_len: int = 80,
    max_len: int = 220,
) -> Callable[[torch.Generator, int], torch.Tensor]:
    """A batch sampler over the training bytes ``data`` (1-D long tensor): each row is,
    with probability ``fraction``, ``seq_len + 1`` bytes of packed edit examples built from
    ``data`` (:func:`edit_row`), else a random plain window of ``data``. Returns
    ``(generator, batch_size) -> (B, seq_len + 1)``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if data.dim() != 1 or data.numel() <= seq_len + 1:
        raise ValueError(
            f"data must be 1-D with more than seq_len + 1 = {seq_len + 1} bytes, got shape {tuple(data.shape)}"
        )
    text = bytes(data.tolist()) if fraction > 0 else b""

    def sample(gen: torch.Generator, batch_size: int) -> torch.Tensor:
        edit = torch.rand(batch_size, generator=gen) < fraction
        start = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=gen)
        rows = []
        for is_edit, s in zip(edit.tolist(), start.tolist()):
            if is_edit:
                row = edit_row(text, gen, seq_len + 1, min_len, max_len)
                rows.append(torch.tensor(list(row), dtype=torch.long))
            else:
                rows.append(data[s : s + seq_len + 1])
        return torch.stack(rows)  # (B, T+1)

    return sample
