"""UniGenX: sequences [BOS, type, NUM, NUM, EOS] where type A puts the first number at
+-1.5 (two modes, std 0.2) and the second at minus the first (+ noise 0.1). A diffusion
head's sampled first numbers pass a two-sample KS test against the truth (p > 0.01) and
keep the dependence on the fed-back first number; an MSE head fails the KS test (slow:
it trains two models). Fast: causality of the fed-back value, shapes, bad input."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import ks_2samp

from ar_core.errors import ConfigError, InputError
from ar_diffusion.heads import MSEHead
from ar_diffusion.unigenx import UniGenX

BOS, A, B, EOS, NUM = 0, 1, 2, 3, 4


def data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    typ = torch.randint(0, 2, (n,), generator=gen)
    sign = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    x = torch.where(
        typ == 0,
        1.5 * sign + 0.2 * torch.randn(n, generator=gen),
        0.3 * torch.randn(n, generator=gen),
    )
    y = -x + 0.1 * torch.randn(n, generator=gen)
    col = [torch.full((n,), BOS), A + typ, torch.full((n,), NUM), torch.full((n,), NUM)]
    tokens = torch.stack([*col, torch.full((n,), EOS)], 1)
    values = torch.zeros(n, 5)
    values[:, 2], values[:, 3] = x, y
    return tokens, values


def trained(head: MSEHead | None) -> UniGenX:
    """600 updates of 256 sequences, Adam one-cycle 3e-3, seeds 0 (model) and 1 (data)."""
    torch.manual_seed(0)
    model = UniGenX(5, width=64, head=head)
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=600)
    for _ in range(600):
        ce, head_loss = model.loss(*data(256, gen))
        opt.zero_grad()
        (ce + head_loss).backward()
        opt.step()
        sched.step()
    return model.eval()


@pytest.mark.slow
def test_sampled_numbers_follow_the_truth_where_mse_collapses() -> None:
    """1000 sequences after [BOS, A], seed 5; KS level 0.01."""
    tokens, values = data(4000, torch.Generator().manual_seed(9))
    truth = values[tokens[:, 1] == A][:1000, 2].numpy()
    prompt = torch.tensor([[BOS, A]]).repeat(1000, 1)
    for head in (None, MSEHead(1, 64, width=64)):
        model = trained(head)
        tok, val = model.generate(prompt, 3, generator=torch.Generator().manual_seed(5))
        ok = (tok[:, 2:4] == NUM).all(1)
        assert ok.float().mean() > 0.95
        x, y = val[ok, 2], val[ok, 3]
        p = ks_2samp(x.numpy(), truth).pvalue
        if head is None:
            assert p > 0.01 and 0.4 <= (x > 0).float().mean() <= 0.6
            assert (x + y).std() < 0.3  # the second number follows the fed-back first
        else:
            assert p < 1e-6


def test_fed_back_value_is_causal_and_generation_shapes() -> None:
    torch.manual_seed(0)
    model = UniGenX(5, width=32).eval()
    tokens, values = data(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = model.transformer(tokens, query_embeds=model.embeddings(tokens, values)).hidden
        moved = values.clone()
        moved[:, 2] += 1.0  # the first number
        h2 = model.transformer(tokens, query_embeds=model.embeddings(tokens, moved)).hidden
        off = values.clone()
        off[:, 1] += 5.0  # a value at a non-slot position is ignored
        h3 = model.transformer(tokens, query_embeds=model.embeddings(tokens, off)).hidden
    torch.testing.assert_close(h2[:, :2], h[:, :2], rtol=0, atol=0)
    assert not torch.allclose(h2[:, 2:], h[:, 2:])
    torch.testing.assert_close(h3, h, rtol=0, atol=0)
    ce, head_loss = model.loss(tokens, values)
    assert ce.dim() == 0 and head_loss.dim() == 0
    prompt = torch.tensor([[BOS, A], [BOS, B]])
    tok, val = model.generate(prompt, 3, generator=torch.Generator().manual_seed(0), head_steps=2)
    assert tok.shape == val.shape == (2, 5)
    assert (val[tok != NUM] == 0).all()


def test_bad_input() -> None:
    model = UniGenX(5, width=32)
    tokens, values = data(2, torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="both be"):
        model.loss(tokens, values[:, :4])
    bad = values.clone()
    bad[0, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.loss(tokens, bad)
    with pytest.raises(InputError, match="numeric slots"):
        model.generate(torch.tensor([[BOS, NUM]]), 2)
    with pytest.raises(ConfigError, match="cond_dim"):
        UniGenX(5, width=32, head=MSEHead(1, 16))
    with pytest.raises(ConfigError, match="dim=1"):
        UniGenX(5, width=32, head=MSEHead(2, 32))
