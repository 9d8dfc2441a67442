"""Order Matters: the Read-Process-Write encoding is invariant to input order, the
order-search loss equals the brute-force max over orders, RPW beats an LSTM encoder at
sorting N = 5 (seed 0)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_text.sets import (
    LSTMPointer,
    ReadProcessWrite,
    order_search_loss,
    sequence_logprob,
    sorting_accuracy,
    sorting_batch,
    train_sorter,
)

torch.set_num_threads(1)


def test_set_encoder_invariant_to_permutation() -> None:
    torch.manual_seed(0)
    rpw = ReadProcessWrite(d_in=3, hidden=16, process_steps=4).double()
    lstm = LSTMPointer(d_in=3, hidden=16).double()
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    m, q = rpw.encode(x)
    _, (h, _) = lstm._encode(x)
    for seed in range(5):
        perm = torch.randperm(7, generator=torch.Generator().manual_seed(seed))
        m2, q2 = rpw.encode(x[:, perm])
        torch.testing.assert_close(q2, q, rtol=0, atol=1e-12)
        torch.testing.assert_close(m2, m[:, perm], rtol=0, atol=1e-12)
    _, (h2, _) = lstm._encode(x[:, torch.tensor([6, 5, 4, 3, 2, 1, 0])])
    assert (h2 - h).abs().max() > 1e-3  # the baseline is order-dependent


@pytest.mark.parametrize("warmup", [True, False])
def test_order_search_loss_is_max_over_orders(warmup: bool) -> None:
    torch.manual_seed(1)
    model = ReadProcessWrite(hidden=8, process_steps=2)
    x = torch.rand(3, 3, 1)
    gen = torch.Generator().manual_seed(0)
    got = order_search_loss(model, x, samples=200, warmup=warmup, gen=gen)
    perms = torch.tensor(list(itertools.permutations(range(3))))
    with torch.no_grad():
        lps = torch.stack([sequence_logprob(model, x, p.expand(3, 3)) for p in perms], 1)
        # probabilities of all orders sum to one
        torch.testing.assert_close(lps.exp().sum(1), torch.ones(3))
    torch.testing.assert_close(got.detach(), -lps.max(1).values.mean())


def test_rpw_beats_lstm_encoder_at_sorting() -> None:
    """Seed 0, N = 5, 400 updates of 64 rows, hidden 32: exact-sort rate on 2000 fresh rows."""
    results = {}
    for name in ("rpw", "lstm"):
        torch.manual_seed(0)
        model = (
            ReadProcessWrite(hidden=32, process_steps=5)
            if name == "rpw"
            else LSTMPointer(hidden=32)
        )
        train_sorter(model, n=5, steps=400, batch=64, lr=3e-3, seed=0)
        results[name] = sorting_accuracy(model, 5, 2000, seed=123)
    assert results["rpw"][0] > results["lstm"][0] + 0.02, results


def test_sets_bad_input() -> None:
    model = ReadProcessWrite(hidden=8)
    with pytest.raises(InputError, match=r"\(B, N, 1\)"):
        model.encode(torch.rand(2, 3))
    with pytest.raises(InputError, match="permutation"):
        model(torch.rand(2, 3, 1), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="order must be"):
        model(torch.rand(2, 3, 1), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="process_steps"):
        ReadProcessWrite(process_steps=0)
    with pytest.raises(ConfigError, match="samples"):
        order_search_loss(model, torch.rand(2, 3, 1), samples=0)
    with pytest.raises(ConfigError, match="n >= 2"):
        sorting_batch(4, 1, torch.Generator())
    with pytest.raises(ConfigError, match="steps"):
        train_sorter(model, 5, 0, 4, 1e-3, 0)


def test_recipe_text_sets_runs(tmp_path: object) -> None:
    from pathlib import Path

    from ar_core import registry
    from ar_text.recipes.sets import SetsConfig, recipe

    assert registry.recipes.get("text-sets") is recipe
    result = recipe.run(SetsConfig(steps=3, eval_rows=20), Path(str(tmp_path)), lambda _: None)
    assert set(result.metrics) == {"rpw_exact", "rpw_positions", "lstm_exact", "lstm_positions"}
    assert len(result.tables[0].rows) == 2
