"""ar_core.run_steps with continuous step values: float vectors (B, N, d) drawn from the
hidden states go through the same loop (one runner call and one draw per step, the draw
committed); the result equals a hand-written loop draw for draw; the integer path is
unchanged by the new keyword; NaN draws name their step and row; misuse is an error."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ar_core import ConfigError, InputError
from ar_core.model import ModelOutput
from ar_core.ordering import Plan
from ar_core.steps import Categorical, run_steps

B, N, D, C = 3, 6, 2, 4


class SumRunner:
    """A toy continuous step model: the hidden state of every query is a fixed function of
    the sum of the values committed so far (R, C); the logits are empty."""

    def __init__(self) -> None:
        self.calls = 0
        self.total = torch.zeros(B, D)
        self.seen: list[Tensor] = []

    def predict(self, step: Tensor) -> ModelOutput:
        self.calls += 1
        h = torch.cat([self.total, self.total.square()], dim=-1)  # (B, C)
        hidden = h[:, None].expand(B, step.numel(), C) + step[None, :, None]
        return ModelOutput(logits=hidden[..., :0], hidden=hidden)

    def commit(self, step: Tensor, values: Tensor) -> None:
        self.seen.append(values.clone())
        self.total = self.total + values.sum(1)


class GaussSampler:
    """Draws hidden[..., :D] / 2 + N(0, 1) (B, m, D)."""

    name = "gauss"

    def sample(self, out: ModelOutput, generator: torch.Generator | None) -> Tensor:
        h = out.hidden
        noise = torch.randn(h.shape[0], h.shape[1], D, generator=generator)
        return h[..., :D] / 2 + noise


PLAN = Plan([[0], [1, 2], [3], [4, 5]], (N,))


def test_continuous_values_go_through_the_loop() -> None:
    runner = SumRunner()
    out = run_steps(
        runner,
        PLAN,
        batch_size=B,
        sampler=GaussSampler(),
        value_dim=D,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.tokens.shape == (B, N, D) and out.tokens.dtype == torch.float32
    assert out.calls == 4 and torch.isfinite(out.tokens).all()
    # a hand-written loop with the same draws
    gen, total = torch.Generator().manual_seed(0), torch.zeros(B, D)
    want = torch.zeros(B, N, D)
    for step in PLAN.steps:
        h = torch.cat([total, total.square()], -1)[:, None] + step[None, :, None]
        x = h[..., :D] / 2 + torch.randn(B, step.numel(), D, generator=gen)
        want[:, step] = x
        total = total + x.sum(1)
    torch.testing.assert_close(out.tokens, want, rtol=0, atol=0)
    for seen, step in zip(runner.seen, PLAN.steps, strict=True):  # committed = drawn
        assert torch.equal(seen, want[:, step])


def test_known_values_and_first_step() -> None:
    """Float ``values`` with the first step known: only later steps are drawn."""
    values = torch.full((B, N, D), float("nan"))
    values[:, 0] = 1.5
    runner = SumRunner()
    runner.commit(PLAN.steps[0], values[:, :1])
    out = run_steps(runner, PLAN, batch_size=B, sampler=GaussSampler(), values=values, first_step=1)
    assert out.tokens is values and (values[:, 0] == 1.5).all()
    assert torch.isfinite(values).all() and out.calls == 3


def test_integer_path_unchanged() -> None:
    """value_dim=None keeps the long (B, N) path: a runner with logits draws token ids."""

    class LogitRunner(SumRunner):
        def predict(self, step: Tensor) -> ModelOutput:
            self.calls += 1
            logits = torch.zeros(B, step.numel(), 5)
            logits[..., 3] = 50.0
            return ModelOutput(logits=logits, hidden=logits)

        def commit(self, step: Tensor, values: Tensor) -> None:
            self.seen.append(values)

    out = run_steps(LogitRunner(), PLAN, batch_size=B, sampler=Categorical(temperature=0))
    assert out.tokens.dtype == torch.long and torch.equal(out.tokens, torch.full((B, N), 3))


def test_nan_draw_names_step_and_row() -> None:
    class NanAt2(GaussSampler):
        k = 0

        def sample(self, out: ModelOutput, generator: torch.Generator | None) -> Tensor:
            x = super().sample(out, generator)
            self.k += 1
            if self.k == 3:
                x[1, 0, 1] = float("nan")
            return x

    with pytest.raises(InputError, match=r"non-finite continuous values .* step 2, row 1"):
        run_steps(SumRunner(), PLAN, batch_size=B, sampler=NanAt2(), value_dim=D)


def test_misuse_is_an_error() -> None:
    with pytest.raises(ConfigError, match="value_dim must be an integer >= 1"):
        run_steps(SumRunner(), PLAN, batch_size=B, sampler=GaussSampler(), value_dim=0)
    with pytest.raises(ConfigError, match="transforms .* do not apply"):
        run_steps(
            SumRunner(),
            PLAN,
            batch_size=B,
            sampler=GaussSampler(),
            value_dim=D,
            transforms=[lambda logits, **kw: logits],
        )
    with pytest.raises(InputError, match=r"must be \(batch_size, N, d\) = \(3, 6, d\)"):
        run_steps(
            SumRunner(), PLAN, batch_size=B, sampler=GaussSampler(), values=torch.zeros(3, 5, 2)
        )

    class LongSampler(GaussSampler):
        def sample(self, out: ModelOutput, generator: torch.Generator | None) -> Tensor:
            return super().sample(out, generator).long()

    with pytest.raises(InputError, match=r"'gauss' drew torch.int64 .* need float \(3, 1, 2\)"):
        run_steps(SumRunner(), PLAN, batch_size=B, sampler=LongSampler(), value_dim=D)
    with pytest.raises(InputError, match=r"drew torch.float32 \(3, 1, 2\) .* \(3, 1, 3\)"):
        run_steps(SumRunner(), PLAN, batch_size=B, sampler=GaussSampler(), value_dim=3)
    with pytest.raises(ConfigError, match="hidden states have 3 rows, the batch has 2"):
        run_steps(SumRunner(), PLAN, batch_size=2, sampler=GaussSampler(), value_dim=D)
