"""Corpora and packing: packed forwards equal per-document forwards; the loss never
crosses a document boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ar_core.errors import ConfigError, InputError
from ar_core.model import Transformer, TransformerConfig
from ar_text.data import (
    PAD_DOC,
    PackedBatches,
    file_corpus,
    folder_corpus,
    pack,
    packed_lm_loss,
    stdlib_corpus,
)

DOCS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [19], [20, 21, 22, 23, 24, 25]]


def reference_pack(
    docs: list[list[int]], seq_len: int, pad_id: int
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Token by token: fill rows, start a new position count at each document or row start."""
    tokens, ids, positions = [], [], []
    row_t: list[int] = []
    row_d: list[int] = []
    row_p: list[int] = []
    flat = [(t, d) for d, doc in enumerate(docs) for t in doc]
    flat += [(pad_id, PAD_DOC)] * (-len(flat) % seq_len)
    for t, d in flat:
        pos = row_p[-1] + 1 if row_d and row_d[-1] == d else 0
        row_t.append(t)
        row_d.append(d)
        row_p.append(pos)
        if len(row_t) == seq_len:
            tokens.append(row_t)
            ids.append(row_d)
            positions.append(row_p)
            row_t, row_d, row_p = [], [], []
    return tokens, ids, positions


@pytest.mark.parametrize("seq_len", [2, 4, 7, 21, 40])
def test_pack_matches_reference(seq_len: int) -> None:
    packed = pack(DOCS, seq_len, pad_id=3)
    tokens, ids, positions = reference_pack(DOCS, seq_len, pad_id=3)
    assert packed.tokens.tolist() == tokens
    assert packed.doc_ids.tolist() == ids
    assert packed.positions.tolist() == positions


def test_pack_errors() -> None:
    with pytest.raises(ConfigError, match="seq_len"):
        pack(DOCS, 1)
    with pytest.raises(InputError, match="non-empty"):
        pack([[], []], 4)


def _model() -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=32, dim=32, n_layers=2, n_heads=4, max_seq_len=16)
    return Transformer(cfg).eval()


def _segments(doc_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of every run of one real document within a row."""
    out = []
    for r, row in enumerate(doc_ids.tolist()):
        start = 0
        for t in range(1, len(row) + 1):
            if t == len(row) or row[t] != row[start]:
                if row[start] != PAD_DOC:
                    out.append((r, start, t))
                start = t
    return out


@torch.no_grad()
def test_packed_forward_equals_per_document_forwards() -> None:
    from ar_core import masks

    model = _model()
    packed = pack(DOCS, 8, pad_id=0)
    logits = model(
        packed.tokens, positions=packed.positions, mask=masks.document(packed.doc_ids)
    ).logits  # (N, T, V)
    segments = _segments(packed.doc_ids)
    assert len(segments) >= 5  # documents split across rows are covered too
    for r, s, e in segments:
        alone = model(packed.tokens[r : r + 1, s:e]).logits[0]  # plain causal, positions 0..
        torch.testing.assert_close(logits[r, s:e], alone, atol=1e-5, rtol=0)
    # without the document mask the packed forward is different (the test can fail)
    plain = model(packed.tokens, positions=packed.positions).logits
    assert not torch.allclose(plain, logits, atol=1e-3)


@torch.no_grad()
def test_loss_ignores_cross_document_targets() -> None:
    model = _model()
    packed = pack(DOCS, 8, pad_id=0)
    batch = (packed.tokens, packed.doc_ids, packed.positions)
    total, count = torch.zeros(()), 0
    for r, s, e in _segments(packed.doc_ids):
        seg = packed.tokens[r, s:e]
        if len(seg) < 2:
            continue
        logits = model(seg[None]).logits[0, :-1]
        total += F.cross_entropy(logits, seg[1:], reduction="sum")
        count += len(seg) - 1
    torch.testing.assert_close(packed_lm_loss(model, batch), total / count, atol=1e-5, rtol=0)
    # the first token of each document is never a target: changing it changes nothing
    # that a cross-document target would see
    changed = packed.tokens.clone()
    first_of_doc = torch.ones_like(packed.doc_ids, dtype=torch.bool)
    first_of_doc[:, 1:] = packed.doc_ids[:, 1:] != packed.doc_ids[:, :-1]
    assert first_of_doc[:, 1:].any()
    changed[:, 1:][first_of_doc[:, 1:]] = 31
    # recompute the reference for the changed tokens: only in-document targets count
    total2, count2 = torch.zeros(()), 0
    for r, s, e in _segments(packed.doc_ids):
        seg = changed[r, s:e]
        if len(seg) >= 2:
            logits = model(seg[None]).logits[0, :-1]
            total2 += F.cross_entropy(logits, seg[1:], reduction="sum")
            count2 += len(seg) - 1
    got = packed_lm_loss(model, (changed, packed.doc_ids, packed.positions))
    torch.testing.assert_close(got, total2 / count2, atol=1e-5, rtol=0)


def test_packed_batches_deterministic() -> None:
    packed = pack(DOCS, 4)
    data = PackedBatches(packed)
    a = data(torch.Generator().manual_seed(1), 6)
    b = data(torch.Generator().manual_seed(1), 6)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    tokens, doc_ids, positions = a
    assert tokens.shape == doc_ids.shape == positions.shape == (6, 4)
    rows = {tuple(r) for r in packed.tokens.tolist()}
    assert all(tuple(r) in rows for r in tokens.tolist())


# -- corpora -----------------------------------------------------------------------------------


def test_stdlib_corpus_deterministic_and_capped() -> None:
    a = stdlib_corpus(max_bytes=200_000, held_out_fraction=0.2)
    b = stdlib_corpus(max_bytes=200_000, held_out_fraction=0.2)
    assert a.train_names == b.train_names and a.held_out_names == b.held_out_names
    assert a.train and a.held_out
    assert not set(a.train_names) & set(a.held_out_names)
    assert a.train_bytes <= 160_000 and a.held_out_bytes <= 40_000
    assert all(n.endswith(".py") and "site-packages" not in n for n in a.train_names)
    # the split is by file name: a bigger cap never moves a file to the other side
    big = stdlib_corpus(max_bytes=600_000, held_out_fraction=0.2)
    assert big.train_bytes > a.train_bytes
    assert not set(a.train_names) & set(big.held_out_names)
    assert not set(a.held_out_names) & set(big.train_names)


def test_folder_corpus_sorted(tmp_path: Path) -> None:
    names = [f"{c}{i}.txt" for c in "zyxwvutsrq" for i in range(3)]
    for n in names:
        (tmp_path / n).write_text(f"text of {n}\n")
    (tmp_path / "skip.md").write_text("not matched")
    c = folder_corpus(tmp_path, "*.txt", held_out_fraction=0.3)
    assert sorted(c.train_names + c.held_out_names) == sorted(names)
    assert c.train_names == sorted(c.train_names) and c.held_out_names == sorted(c.held_out_names)
    assert c.train == [f"text of {n}\n" for n in c.train_names]
    with pytest.raises(ConfigError, match="matches"):
        folder_corpus(tmp_path, "*.rst")


def test_file_corpus(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("abcdefghij" * 10)
    c = file_corpus(path, held_out_fraction=0.1)
    assert c.train[0] + c.held_out[0] == "abcdefghij" * 10
    assert len(c.held_out[0]) == 10
    with pytest.raises(ConfigError, match="does not exist"):
        file_corpus(tmp_path / "missing.txt")
