"""MaskSpec constructors against Python-loop references (mask_reference.py)."""

from __future__ import annotations

import mask_reference as ref
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_cases import CASES, IDS, PARENTS
from torch.nn.attention.flex_attention import create_mask

from ar_core import masks
from ar_core.errors import ConfigError


@pytest.mark.parametrize(("name", "spec", "see", "n"), CASES, ids=IDS)
def test_dense_matches_reference_on_the_full_square(name, spec, see, n):
    got = spec.to_dense(n, n, batch_size=2)
    assert got.shape == (2, n, n) and got.dtype == torch.bool
    torch.testing.assert_close(got, ref.dense(see, n, n, [0, 0]))


@pytest.mark.parametrize(("name", "spec", "see", "n"), CASES, ids=IDS)
def test_dense_matches_reference_for_chunks_at_per_row_offsets(name, spec, see, n):
    offsets = torch.tensor([n - 3, 2, 0])
    got = spec.to_dense(3, n, q_offset=offsets)
    torch.testing.assert_close(got, ref.dense(see, 3, n, offsets.tolist()))


@pytest.mark.parametrize(("name", "spec", "see", "n"), CASES, ids=IDS)
def test_mask_mod_is_vmap_compatible_like_flex_attention(name, spec, see, n):
    """FlexAttention's ``create_mask`` calls mask_mod under torch.vmap with 0-d indices."""
    got = create_mask(spec.mask_mod, 2, 1, n, n, device="cpu")  # (B, H, Q, KV)
    torch.testing.assert_close(got[:, 0], ref.dense(see, n, n, [0, 0]))


def test_tree_with_per_row_start():
    starts = torch.tensor([2, 5])
    spec = masks.tree(PARENTS, starts)
    see = ref.tree(PARENTS, starts.tolist())
    got = spec.to_dense(8, 13, q_offset=starts)  # each row's queries are its nodes
    torch.testing.assert_close(got, ref.dense(see, 8, 13, starts.tolist()))
    torch.testing.assert_close(spec.to_dense(7, 13, batch_size=2), ref.dense(see, 7, 13, [0, 0]))


def test_prefix_with_per_row_lengths():
    lengths = torch.tensor([0, 3, 6])
    got = masks.prefix(lengths).to_dense(6, 6, batch_size=3)
    want = torch.stack([ref.dense(ref.prefix(int(n)), 6, 6, [0])[0] for n in lengths])
    torch.testing.assert_close(got, want)


def test_document_with_per_row_ids():
    ids = [[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2]]
    got = masks.document(torch.tensor(ids)).to_dense(6, 6, batch_size=2)
    torch.testing.assert_close(got, ref.dense(ref.document(ids), 6, 6, [0, 0]))


def test_document_bidirectional_and_key_padding_per_row():
    ids = [[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2]]
    valid = [[True, True, True, False, True, False], [True, False, True, True, True, True]]
    spec = masks.document(torch.tensor(ids), causal=False) & masks.key_padding(torch.tensor(valid))
    want = ref.dense(
        ref.both(ref.document(ids, causal=False), ref.key_padding(valid)), 6, 6, [0, 0]
    )
    torch.testing.assert_close(spec.to_dense(6, 6, batch_size=2), want)
    # spelled out: row 0's position 2 sees its whole document {2, 4}, not padding 3
    assert spec.to_dense(6, 6, batch_size=2)[0, 2].tolist() == [0, 0, 1, 0, 1, 0]
    # causal and bidirectional document masks are different specs (different cache keys)
    assert masks.document(ids[0]).cache_key != masks.document(ids[0], causal=False).cache_key


def test_two_stream_semantics_spelled_out():
    # steps [0, 1]: content 0,1 ; queries 2 (step 0), 3 (step 1)
    got = masks.two_stream([0, 1]).to_dense(4, 4)[0].int().tolist()
    assert got == [
        [1, 0, 0, 0],  # content step 0: itself
        [1, 1, 0, 0],  # content step 1: content 0, itself
        [0, 0, 1, 0],  # query step 0: no content, only itself
        [1, 0, 0, 1],  # query step 1: content of step 0, itself
    ]


# -- flags, keys, combinators ----------------------------------------------------------


def test_only_the_plain_causal_mask_claims_is_causal():
    assert masks.causal().is_causal
    assert (masks.causal() & masks.causal()).is_causal
    others = [c[1] for c in CASES if c[0] != "causal"]
    assert not any(spec.is_causal for spec in others)
    assert not (masks.causal() & masks.sliding_window(3)).is_causal


def test_cache_keys_are_hashable_and_identify_the_mask():
    a, b = masks.block_causal([0, 0, 1]), masks.block_causal(torch.tensor([0, 0, 1]))
    assert hash(a.cache_key) == hash(b.cache_key) and a.cache_key == b.cache_key
    assert masks.block_causal([0, 1, 1]).cache_key != a.cache_key
    assert (
        masks.two_stream([0, 1]).cache_key
        != masks.two_stream([0, 1], query_sees_own_step=True).cache_key
    )
    assert masks.tree([-1, 0], 3).cache_key != masks.tree([-1, 0], 4).cache_key
    assert (a & masks.causal()).cache_key != (a | masks.causal()).cache_key
    keys = {c[1].cache_key for c in CASES}
    assert len(keys) == len(CASES)


def test_a_custom_mask_mod_keys_on_its_function():
    def f(b, h, q, kv):
        return kv == q

    spec = masks.MaskSpec(f, name="diagonal")
    assert spec.cache_key == masks.MaskSpec(f, name="again").cache_key
    assert spec.cache_key != masks.MaskSpec(lambda b, h, q, kv: kv == q, name="x").cache_key
    torch.testing.assert_close(spec.to_dense(3, 3)[0], torch.eye(3, dtype=torch.bool))


def test_editing_the_input_tensor_later_does_not_change_the_mask():
    steps = torch.tensor([0, 0, 1, 1])
    spec = masks.block_causal(steps)
    before, key = spec.to_dense(4, 4), spec.cache_key
    steps.fill_(7)
    torch.testing.assert_close(spec.to_dense(4, 4), before)
    assert spec.cache_key == key


# -- property tests -----------------------------------------------------------------


@st.composite
def random_tree(draw: st.DrawFn) -> list[int]:
    m = draw(st.integers(1, 10))
    return [draw(st.integers(-1, i - 1)) for i in range(m)]


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.integers(0, 5), min_size=1, max_size=10), own=st.booleans())
def test_block_causal_and_two_stream_match_reference_for_random_steps(steps, own):
    n = len(steps)
    torch.testing.assert_close(
        masks.block_causal(steps).to_dense(n, n), ref.dense(ref.block_causal(steps), n, n, [0])
    )
    got = masks.two_stream(steps, query_sees_own_step=own).to_dense(2 * n, 2 * n)
    torch.testing.assert_close(got, ref.dense(ref.two_stream(steps, own), 2 * n, 2 * n, [0]))


@settings(max_examples=40, deadline=None)
@given(parents=random_tree(), start=st.integers(0, 4), chunk=st.booleans())
def test_tree_matches_reference_for_random_trees(parents, start, chunk):
    m = len(parents)
    spec, see = masks.tree(parents, start), ref.tree(parents, [start])
    if chunk:  # verification forward: queries are exactly the nodes
        got, want = (
            spec.to_dense(m, start + m, q_offset=start),
            ref.dense(see, m, start + m, [start]),
        )
    else:
        got, want = spec.to_dense(start + m, start + m), ref.dense(see, start + m, start + m, [0])
    torch.testing.assert_close(got, want)


@settings(max_examples=30, deadline=None)
@given(
    ids=st.lists(st.integers(0, 3), min_size=1, max_size=10),
    w=st.integers(1, 6),
    p=st.integers(0, 10),
)
def test_document_window_prefix_and_combinations_match_reference(ids, w, p):
    n = len(ids)
    spec = (masks.document(ids) & masks.sliding_window(w)) | masks.prefix(p)
    see = ref.either(ref.both(ref.document(ids), ref.sliding_window(w)), ref.prefix(p))
    torch.testing.assert_close(spec.to_dense(n, n), ref.dense(see, n, n, [0]))


@settings(max_examples=30, deadline=None)
@given(
    prefix_len=st.integers(0, 3),
    option_lens=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    suffix_len=st.integers(0, 3),
)
def test_sets_match_reference(prefix_len, option_lens, suffix_len):
    n = prefix_len + sum(option_lens) + suffix_len
    got = masks.sets(prefix_len, option_lens, suffix_len).to_dense(n, n)
    torch.testing.assert_close(
        got, ref.dense(ref.sets(prefix_len, option_lens, suffix_len), n, n, [0])
    )


# -- bad inputs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: masks.block_causal(torch.zeros(2, 3, dtype=torch.long)),
            r"1-D, got shape \(2, 3\)",
        ),
        (lambda: masks.two_stream(torch.zeros(2, 3, dtype=torch.long)), r"1-D, got shape \(2, 3\)"),
        (lambda: masks.block_causal(torch.tensor([0.0, 1.0])), "integers, got dtype torch.float32"),
        (lambda: masks.block_causal([]), "must not be empty"),
        (lambda: masks.sliding_window(-2), "w >= 1, got -2"),
        (lambda: masks.sliding_window(0), "w >= 1, got 0"),
        (lambda: masks.prefix(-1), ">= 0, got -1"),
        (lambda: masks.prefix(torch.tensor([3, -2])), r">= 0, got \[3, -2\]"),
        (lambda: masks.prefix(torch.ones(2, 2, dtype=torch.long)), r"got shape \(2, 2\)"),
        (lambda: masks.tree([-1, 0, 3, 1], 0), r"parents\[2\] = 3"),
        (lambda: masks.tree([-1, 1], 0), r"parents\[1\] = 1"),
        (lambda: masks.tree([-1, -2], 0), r"parents\[1\] = -2"),
        (lambda: masks.tree([-1, 0], -3), r"start must be >= 0, got \[-3\]"),
        (lambda: masks.sets(2, [2, 0], 1), r"length >= 1, got \[2, 0\]"),
        (lambda: masks.sets(-1, [2], 1), "got -1, 1"),
        (lambda: masks.document(torch.zeros(2, 2, 2, dtype=torch.long)), r"got shape \(2, 2, 2\)"),
        (lambda: masks.key_padding(torch.ones(3, dtype=torch.long)), "bool tensor"),
        (
            lambda: masks.key_padding(torch.ones(1, 2, 3, dtype=torch.bool)),
            r"got shape \(1, 2, 3\)",
        ),
        (
            lambda: masks.block_causal([0, 1]) & "causal",  # type: ignore[operator]
            "got str",
        ),
    ],
)
def test_bad_inputs_raise_config_error_with_the_numbers(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_to_dense_refuses_positions_past_the_mask():
    spec = masks.block_causal([0, 1, 2, 3])
    with pytest.raises(ConfigError, match="covers 4 positions .* queries up to 6 and keys up to 4"):
        spec.to_dense(3, 4, q_offset=3)
    with pytest.raises(ConfigError, match="keys up to 5"):
        spec.to_dense(4, 5)
    with pytest.raises(ConfigError, match=r"\(B,\) tensor, got shape \(2, 1\)"):
        spec.to_dense(1, 4, q_offset=torch.zeros(2, 1, dtype=torch.long))
