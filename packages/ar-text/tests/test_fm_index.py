"""FM-index: count, locate and continuations equal brute-force search (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ar_core.errors import InputError
from ar_text.fm_index import FMIndex


def brute_locate(docs: list[list[int]], p: list[int]) -> list[tuple[int, int]]:
    m = len(p)
    return [
        (d, i) for d, doc in enumerate(docs) for i in range(len(doc) - m + 1) if doc[i : i + m] == p
    ]


def brute_continuations(docs: list[list[int]], p: list[int]) -> list[int]:
    m = len(p)
    out = {doc[i + m] for doc in docs for i in range(len(doc) - m) if doc[i : i + m] == p}
    return sorted(out)


docs_st = st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=12), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(docs=docs_st, p=st.lists(st.integers(0, 5), min_size=1, max_size=4))
def test_fm_index_equals_brute_force(docs: list[list[int]], p: list[int]) -> None:
    if all(not d for d in docs):
        docs = [*docs, [0]]
    fm = FMIndex(docs)
    expected = brute_locate(docs, p)
    assert fm.count(p) == len(expected)
    assert fm.locate(p) == expected
    assert fm.continuations(p) == brute_continuations(docs, p)
    # and the continuations of every prefix, as the decoder walks them
    for k in range(len(p)):
        assert fm.continuations(p[:k]) == brute_continuations(docs, p[:k])


def test_fm_index_large_alphabet() -> None:
    docs = [[1000, 7, 1000, 3], [7, 1000, 3, 99999]]
    fm = FMIndex(docs)
    assert fm.count([1000, 3]) == 2
    assert fm.locate([7, 1000]) == [(0, 1), (1, 0)]
    assert fm.continuations([1000]) == [3, 7]
    assert fm.count([3, 7]) == 0  # never across documents
    assert fm.count([]) == 8


def test_fm_index_bad_input() -> None:
    with pytest.raises(InputError, match="at least one document"):
        FMIndex([])
    with pytest.raises(InputError, match="negative"):
        FMIndex([[1, -2]])
    with pytest.raises(InputError, match="every document is empty"):
        FMIndex([[], []])
    with pytest.raises(InputError, match="token ids"):
        FMIndex(["abc"])  # type: ignore[list-item]
    fm = FMIndex([[1, 2]])
    with pytest.raises(InputError, match="non-empty"):
        fm.locate([])
    with pytest.raises(InputError, match="negative"):
        fm.count([-1])
