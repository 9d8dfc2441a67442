"""The continuous heads: the GMM NLL against a manual log-sum-exp; on a bimodal
next-vector task the diffusion, flow and mixture heads sample both modes (40-60 % each,
and a two-sample KS test against fresh data does not reject at level 0.01) while the MSE
head collapses to the mean (the KS test rejects at 1e-6); bad input is a clear error."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import ks_2samp

from ar_core.errors import ConfigError, InputError
from ar_core.model import ModelOutput
from ar_core.steps import step_sampler
from ar_diffusion.heads import (
    ContinuousHead,
    DiffusionHead,
    FlowHead,
    GMMHead,
    HeadSampler,
    MSEHead,
    cosine_alpha_bar,
)

C, D = 4, 2  # hidden width, value dimension


def bimodal(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two contexts (one-hot hidden states, padded to C): context 0 puts the next vector at
    (+-2, 0), context 1 at (0, +-2), each mode with probability 1/2 and std 0.25."""
    ctx = torch.randint(0, 2, (n,), generator=gen)
    hidden = torch.nn.functional.one_hot(ctx, C).float()
    sign = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    mode = torch.zeros(n, D)
    mode[ctx == 0, 0] = 2 * sign[ctx == 0]
    mode[ctx == 1, 1] = 2 * sign[ctx == 1]
    return hidden, mode + 0.25 * torch.randn(n, D, generator=gen)


def train(head: torch.nn.Module, updates: int, lr: float = 5e-3) -> None:
    """Adam with a one-cycle learning rate, batches of 512, seeds 0 (training noise) and 1
    (data)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=updates)
    for _ in range(updates):
        hidden, target = bimodal(512, gen)
        loss = head.loss(hidden, target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


HEADS = {  # name -> (builder, updates, peak learning rate)
    "gmm": (lambda: GMMHead(D, C, components=4, width=64), 400, 5e-3),
    "diffusion": (lambda: DiffusionHead(D, C, width=64, depth=2), 600, 5e-3),
    "flow": (lambda: FlowHead(D, C, width=64, depth=2), 500, 5e-3),
    "mse": (lambda: MSEHead(D, C, width=64), 200, 1e-2),
}


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.nn.Module]:
    out: dict[str, torch.nn.Module] = {}
    for name, (build, updates, lr) in HEADS.items():
        torch.manual_seed(0)  # the initialisation
        head = build()
        train(head, updates, lr)
        out[name] = head.eval()
    return out


def test_gmm_nll_is_a_manual_logsumexp() -> None:
    torch.manual_seed(0)
    head = GMMHead(3, 5, components=3, width=16)
    hidden, target = torch.randn(7, 5), torch.randn(7, 3)
    log_w, mean, log_std = head.params(hidden)
    for b in range(7):
        terms = []
        for k in range(3):
            lp = math.log(log_w[b, k].exp().item())
            for j in range(3):
                s = log_std[b, k, j].exp().item()
                lp += -0.5 * ((target[b, j].item() - mean[b, k, j].item()) / s) ** 2
                lp += -math.log(s) - 0.5 * math.log(2 * math.pi)
            terms.append(lp)
        top = max(terms)
        manual = -(top + math.log(sum(math.exp(x - top) for x in terms)))
        assert head.loss(hidden, target)[b].item() == pytest.approx(manual, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", ["gmm", "diffusion", "flow", "mse"])
def test_bimodal_next_vector(trained: dict[str, torch.nn.Module], name: str) -> None:
    """Seed 123, 2000 draws per context (default samplers: DDPM 50 steps, Euler 32); the
    two-sample KS test on the mode axis against 2000 fresh data draws, level 0.01."""
    head = trained[name]
    gen = torch.Generator().manual_seed(123)
    n = 2000
    for ctx, axis in ((0, 0), (1, 1)):
        hidden = torch.nn.functional.one_hot(torch.full((n,), ctx), C).float()
        x = head.sample(hidden, generator=gen)  # (n, 2)
        truth_sign = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
        truth = 2 * truth_sign + 0.25 * torch.randn(n, generator=gen)
        p = ks_2samp(x[:, axis].numpy(), truth.numpy()).pvalue
        right = (x[:, axis] > 0).float().mean().item()
        if name == "mse":  # collapses to the mean, between the modes
            assert x[:, axis].abs().max() < 1.0
            assert p < 1e-6
        else:
            assert 0.4 <= right <= 0.6, (name, ctx, right)
            assert p > 0.01, (name, ctx, p)


def test_few_step_samplers_still_bimodal(trained: dict[str, torch.nn.Module]) -> None:
    """DDIM at 10 steps and Heun at 8 keep both modes of context 0 (seed 5)."""
    gen = torch.Generator().manual_seed(5)
    hidden = torch.nn.functional.one_hot(torch.zeros(2000, dtype=torch.long), C).float()
    for head, kw in (
        (trained["diffusion"], {"method": "ddim", "steps": 10}),
        (trained["flow"], {"method": "heun", "steps": 8}),
    ):
        x = head.sample(hidden, generator=gen, **kw)
        right = (x[:, 0] > 0).float().mean().item()
        assert 0.4 <= right <= 0.6
        assert (x[:, 0].abs() - 2).abs().median() < 0.3  # near a mode, not between


def test_heads_follow_the_protocol_and_register_as_step_samplers(
    trained: dict[str, torch.nn.Module],
) -> None:
    hidden = torch.nn.functional.one_hot(torch.tensor([[0, 1, 0]]), C).float()  # (1, 3, C)
    for name, key in (
        ("diffusion-head", "diffusion"),
        ("flow-head", "flow"),
        ("gmm-head", "gmm"),
        ("mse-head", "mse"),
    ):
        head = trained[key]
        assert isinstance(head, ContinuousHead)
        sampler = step_sampler(name, head=head, steps=4 if key in ("diffusion", "flow") else None)
        assert isinstance(sampler, HeadSampler) and sampler.name == name
        out = ModelOutput(logits=torch.empty(1, 3, 0), hidden=hidden)
        a = sampler.sample(out, torch.Generator().manual_seed(0))
        b = head.sample(hidden, generator=torch.Generator().manual_seed(0), steps=sampler.steps)
        assert a.shape == (1, 3, D) and torch.equal(a, b)
    with pytest.raises(ConfigError, match="FlowHead"):
        step_sampler("flow-head", head=trained["gmm"])


def test_network_calls() -> None:
    assert FlowHead(2, 3).network_calls(8, "heun") == 15
    assert FlowHead(2, 3).network_calls(8) == 8
    assert DiffusionHead(2, 3).network_calls(10) == 10
    assert GMMHead(2, 3).network_calls() == 1


def test_cosine_schedule() -> None:
    ab = cosine_alpha_bar(torch.linspace(0, 1, 101))
    assert ab[0].item() == pytest.approx(1.0) and ab[-1].item() == pytest.approx(1e-4)
    assert (ab[1:] < ab[:-1]).all()


@pytest.mark.parametrize(
    "head", [DiffusionHead(2, 4), FlowHead(2, 4), GMMHead(2, 4), MSEHead(2, 4)], ids=str
)
def test_bad_input_is_a_clear_error(head: torch.nn.Module) -> None:
    h, x = torch.randn(5, 4), torch.randn(5, 2)
    with pytest.raises(InputError, match=r"hidden must be \(\.\.\., 4\)"):
        head.loss(torch.randn(5, 3), x)
    with pytest.raises(InputError, match=r"target must be \(\.\.\., 2\)"):
        head.loss(h, torch.randn(5, 3))
    with pytest.raises(InputError, match="leading shape"):
        head.loss(h, torch.randn(4, 2))
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(InputError, match="1 NaN/inf"):
        head.loss(h, bad)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        head.sample(h, steps=0)
    with pytest.raises(InputError, match="hidden must be"):
        head.sample(torch.randn(5, 7))
    with pytest.raises(ConfigError, match="steps must be"):
        HeadSampler("x", head, steps=0)
