"""Edit-format training data: the renamed copy is exactly ``snippet.replace(old, new)`` of
whole lines of the training text, nothing else reaches the rows, and the share of edit rows
follows ``fraction`` (binomial test, seed 0, two-sided at 4 standard deviations, a level
of about 6e-5)."""

from __future__ import annotations

import keyword
import re

import pytest
import torch

from ar_decoding.benchmarks.edit_data import (
    SUFFIXES,
    edit_example,
    edit_text,
    mixed_batches,
)

HEAD = b"# Before:\n"
REQUEST = re.compile(rb"\n# After renaming `([a-z0-9_]+)` to `([a-z0-9_]+)`:\n")


def code(prefix: str, n: int) -> bytes:
    """``n`` lines of Python-like code whose identifiers all start with ``prefix``."""
    g = torch.Generator().manual_seed(len(prefix))
    lines = []
    for i in range(n):
        a, b = (int(v) for v in torch.randint(0, 9, (2,), generator=g))
        lines.append(f"    {prefix}_v{a} = {prefix}_fn{b}({prefix}_v{(a + i) % 9}, {i})\n")
    return "".join(lines).encode()


def examples(row: bytes) -> list[tuple[bytes, bytes, bytes, bytes]]:
    """(snippet, old, new, copy) of every complete example packed in an edit row."""
    out = []
    for chunk in row.split(HEAD)[1:]:
        m = REQUEST.search(chunk)
        if m is None:  # cut before the request
            continue
        rest = chunk[m.end() :]
        if not rest.endswith(b"\n\n"):  # cut inside the copy
            continue
        out.append((chunk[: m.start()], m.group(1), m.group(2), rest[:-2]))
    return out


def test_edit_example_renames_whole_lines_of_the_text() -> None:
    text = code("alpha", 400)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        found = edit_example(text, g, 40, 120)
        assert found is not None
        snippet, old, new = found
        assert snippet in text and 40 <= len(snippet) <= 120
        assert (
            snippet.endswith(b"\n") and text[text.find(snippet) - 1 : text.find(snippet)] == b"\n"
        )
        assert old in snippet and old.decode() not in keyword.kwlist and old != b"self"
        assert new[len(old) :] in SUFFIXES and new.startswith(old)
        ex = edit_text(snippet, old, new)
        assert ex.endswith(snippet.replace(old, new))


def test_rows_hold_only_training_text_and_exact_copies() -> None:
    train, held = code("alpha", 600), code("omega", 600)
    data = torch.tensor(list(train), dtype=torch.long)
    sample = mixed_batches(data, 256, 0.5, 40, 120)
    batch = sample(torch.Generator().manual_seed(0), 64)
    assert batch.shape == (64, 257) and batch.dtype == torch.long
    seen = 0
    for row in batch.tolist():
        raw = bytes(row)
        assert b"omega" not in raw and held[:20] not in raw
        if raw.startswith(HEAD):
            for snippet, old, new, copy in examples(raw):
                assert snippet in train and copy == snippet.replace(old, new)
                seen += 1
        else:  # a plain window: a slice of the training bytes
            assert raw in train
    assert seen >= 20


def test_fraction_of_edit_rows_is_binomial() -> None:
    data = torch.tensor(list(code("alpha", 300)), dtype=torch.long)
    n, p = 3000, 0.3
    sample = mixed_batches(data, 32, p, 20, 60)
    batch = sample(torch.Generator().manual_seed(0), n)
    edits = sum(bytes(row[: len(HEAD)].tolist()) == HEAD for row in batch)
    assert abs(edits - n * p) <= 4 * (n * p * (1 - p)) ** 0.5, edits
    for frac, want in ((0.0, 0), (1.0, 50)):
        rows = mixed_batches(data, 32, frac, 20, 60)(torch.Generator().manual_seed(1), 50)
        assert sum(bytes(r[: len(HEAD)].tolist()) == HEAD for r in rows) == want


def test_bad_settings_name_the_problem() -> None:
    data = torch.tensor(list(code("alpha", 50)), dtype=torch.long)
    with pytest.raises(ValueError, match="fraction"):
        mixed_batches(data, 32, 1.5)
    with pytest.raises(ValueError, match="seq_len"):
        mixed_batches(data[:10], 32, 0.5)
    with pytest.raises(ValueError, match="min_len"):
        edit_example(b"x" * 1000, torch.Generator(), 50, 10)
    with pytest.raises(ValueError, match="identifier"):
        mixed_batches(torch.tensor(list(b"1 + 2\n" * 200)), 32, 1.0, 5, 20)(torch.Generator(), 1)
