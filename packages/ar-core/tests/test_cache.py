"""StaticKVCache: writes land after each row's committed entries, crop keeps identity."""

from __future__ import annotations

import pytest
import torch

from ar_core.cache import StaticKVCache
from ar_core.errors import InputError


def _cache(B: int = 2, S: int = 8) -> StaticKVCache:
    return StaticKVCache(n_layers=2, batch_size=B, n_kv_heads=3, head_dim=4, max_len=S)


def _kv(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, T, 4, generator=g), torch.randn(B, 3, T, 4, generator=g)


def test_write_is_pending_until_commit_and_lands_per_row() -> None:
    c = _cache()
    c.commit(torch.tensor([1, 3]))
    k, v = _kv(2, 2, 0)
    k_all, v_all = c.write(0, k, v)
    assert c.lengths.tolist() == [1, 3]  # nothing committed yet
    torch.testing.assert_close(k_all[0, :, 1:3], k[0])
    torch.testing.assert_close(k_all[1, :, 3:5], k[1])
    torch.testing.assert_close(v_all[1, :, 3:5], v[1])
    c.commit(2)
    assert c.lengths.tolist() == [3, 5]


def test_uncommitted_write_is_overwritten_by_the_next() -> None:
    c = _cache()
    c.write(0, *_kv(2, 3, 0))
    k2, v2 = _kv(2, 3, 1)
    k_all, _ = c.write(0, k2, v2)
    torch.testing.assert_close(k_all[:, :, :3], k2)


def test_crop_then_reappend_equals_fresh_cache() -> None:
    k, v = _kv(2, 6, 0)
    c = _cache()
    buf_k, buf_v = c.k[0], c.v[0]
    c.write(0, k, v)
    c.commit(6)
    c.crop(3)
    assert c.k[0] is buf_k and c.v[0] is buf_v  # identity kept
    assert c.lengths.tolist() == [3, 3]
    k_new, v_new = _kv(2, 2, 1)
    c.write(0, k_new, v_new)
    c.commit(2)

    fresh = _cache()
    fresh.write(0, k[:, :, :3], v[:, :, :3])
    fresh.commit(3)
    fresh.write(0, k_new, v_new)
    fresh.commit(2)
    assert torch.equal(c.lengths, fresh.lengths)
    torch.testing.assert_close(c.k[0][:, :, :5], fresh.k[0][:, :, :5])
    torch.testing.assert_close(c.v[0][:, :, :5], fresh.v[0][:, :, :5])


def test_crop_per_row_tensor() -> None:
    c = _cache()
    c.commit(5)
    c.crop(torch.tensor([2, 7]))
    assert c.lengths.tolist() == [2, 5]


def test_fork_is_independent_and_selects_rows() -> None:
    c = _cache()
    c.write(1, *_kv(2, 2, 0))
    c.commit(torch.tensor([2, 1]))
    before = c.k[1].clone()
    f = c.fork(torch.tensor([1, 1, 0]))
    assert f.batch_size == 3 and f.lengths.tolist() == [1, 1, 2]
    torch.testing.assert_close(f.k[1][2], c.k[1][0])
    f.write(1, *_kv(3, 1, 5))
    f.commit(1)
    assert c.lengths.tolist() == [2, 1]
    assert torch.equal(c.k[1], before)
    assert not torch.equal(f.k[1][0], before[1])


def test_overflow_names_the_numbers() -> None:
    c = _cache(S=8)
    c.commit(torch.tensor([2, 6]))
    with pytest.raises(InputError, match=r"row 1 holds 6 entries.*6 \+ 3 > 8"):
        c.write(0, *_kv(2, 3, 0))
    with pytest.raises(InputError, match="max_len=8"):
        c.commit(3)


def test_overflow_check_sees_through_a_stale_bound() -> None:
    c = _cache(S=8)
    c.commit(7)
    c.crop(torch.tensor([1, 1]))  # host bound is now stale (7)
    c.write(0, *_kv(2, 5, 0))  # fits: 1 + 5 <= 8
    c.commit(5)
    assert c.lengths.tolist() == [6, 6]


def test_bad_shapes_are_errors() -> None:
    c = _cache()
    with pytest.raises(InputError, match="B=2, H=3, D=4"):
        c.write(0, torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
    with pytest.raises(InputError, match="positive int"):
        StaticKVCache(n_layers=0, batch_size=1, n_kv_heads=1, head_dim=2, max_len=4)
