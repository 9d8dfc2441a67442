"""Transition Matching: DTM, ARTM and FHTM, with Euler flow matching as the baseline.

Shaul, Singer, Gat & Lipman, "Transition Matching: Scalable and Flexible Generative
Modeling" (2025, arXiv:2506.23589). Generation is a chain of T discrete transitions
``X_0 -> X_1 -> ... -> X_T`` from noise to data; each transition is one backbone call
whose output conditions a small flow head that *samples* the transition (a
non-deterministic kernel), instead of following the mean velocity as an ODE solver does.

* **DTM** (difference TM, section 3.1): the supervising process is the linear one, ``X_t =
  (1 - t/T) X_0 + (t/T) X_T`` with one noise ``X_0``; the head samples ``Y = X_T - X_0``
  given ``X_t`` and ``X_{t+1} = X_t + Y / T``. Flow matching is the same model with the
  head replaced by the mean ``E[Y | X_t]`` (its velocity), so at few steps Euler FM lands
  on averages of modes while DTM draws one of them. Y does not depend on T, so one DTM
  (trained on continuous ``s = t/T``) samples at every step count.
* **ARTM** (autoregressive TM, section 3.2): the *independent* linear process ``X_t = (1 -
  t/T) X_0^{(t)} + (t/T) X_T`` with a fresh noise per t; the head samples ``X_{t+1}``
  token by token (here: coordinate by coordinate) given ``X_t`` and the earlier tokens
  of ``X_{t+1}``; d backbone calls per transition.
* **FHTM** (full-history TM, section 3.3): the same process, with a causal transformer
  (``ar_core``'s) over the whole history ``X_0, ..., X_t`` and the earlier tokens of
  ``X_{t+1}``; sampling is KV-cached, one call per token (d per transition).

ARTM and FHTM condition on the step size 1/T, so one model trained on several T samples
at each of them. Notation: N examples, d value dimension (2 on the toy data), W width,
T transitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ar_core.cache import StaticKVCache
from ar_core.errors import ConfigError, InputError
from ar_core.model import ModelOutput, build_transformer
from ar_core.ordering import Plan
from ar_core.steps import run_steps

from .heads import FlowHead
from .heads.base import HeadSampler, timestep_embedding

__all__ = ["ARTM", "DTM", "FHTM", "EulerFlowMatching", "FHTMRunner", "TMSample"]

TIME = 32  # sinusoidal time features per time input


@dataclass
class TMSample:
    """``x`` (N, d) the samples; ``backbone_calls`` per sample; ``head_calls`` flow-head
    calls per sample (0 for Euler FM); FHTM with ``return_hidden``: ``tokens`` (N, L) the
    whole drawn sequence and ``hidden`` (N, L - d, W) the hidden state each token was
    drawn from."""

    x: Tensor
    backbone_calls: int
    head_calls: int
    tokens: Tensor | None = None
    hidden: Tensor | None = None


class ResMLP(nn.Module):
    """features (N, F) -> hidden (N, W): a linear map and ``depth`` residual SiLU blocks."""

    def __init__(self, in_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width)
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, f: Tensor) -> Tensor:
        h = self.inp(f)
        for block in self.blocks:
            h = h + block(h)
        out: Tensor = self.norm(h)
        return out


def _check_data(x1: Tensor, dim: int, what: str) -> None:
    if x1.dim() != 2 or x1.shape[1] != dim:
        raise InputError(f"{what}: data must be (N, {dim}), got {tuple(x1.shape)}")
    if not torch.isfinite(x1).all():
        raise InputError(f"{what}: data holds NaN/inf values; drop them before training")


def _check_sampling(n: int, steps: int, what: str) -> None:
    if n < 1:
        raise ConfigError(f"{what}: n must be >= 1, got {n}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{what}: steps (transitions T) must be an integer >= 1, got {steps!r}")


def _check_train_steps(train_steps: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(train_steps)
    if not out or any(not isinstance(t, int) or t < 1 for t in out):
        raise ConfigError(f"{what}: train_steps must be integers >= 1, got {train_steps!r}")
    return out


# -- DTM and its flow-matching baseline ----------------------------------------------------


class DTM(nn.Module):
    """Difference Transition Matching: ``backbone(X_s, s)`` conditions a :class:`FlowHead`
    that samples ``Y = X_T - X_0`` (module docstring)."""

    def __init__(
        self,
        dim: int = 2,
        *,
        width: int = 128,
        depth: int = 3,
        head_width: int = 64,
        head_depth: int = 2,
        head_steps: int = 8,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.backbone = ResMLP(dim + TIME, width, depth)
        self.head = FlowHead(
            dim, width, width=head_width, depth=head_depth, default_steps=head_steps
        )

    def hidden(self, x: Tensor, s: Tensor) -> Tensor:
        """(N, d), (N,) -> (N, W)."""
        return self.backbone(torch.cat([x, timestep_embedding(s, TIME)], dim=-1))

    def loss(self, x1: Tensor) -> Tensor:
        """Mean flow-head loss on Y at uniform times s in [0, 1): x1 (N, d) data."""
        _check_data(x1, self.dim, "DTM.loss")
        x0 = torch.randn_like(x1)
        s = torch.rand(x1.shape[0], device=x1.device)
        xs = (1 - s[:, None]) * x0 + s[:, None] * x1
        return self.head.loss(self.hidden(xs, s), x1 - x0).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int,
        *,
        generator: torch.Generator | None = None,
        head_steps: int | None = None,
    ) -> TMSample:
        """``steps`` transitions from N(0, I): one backbone call and one head draw each."""
        _check_sampling(n, steps, "DTM.sample")
        dev = next(self.parameters()).device
        x = torch.randn(n, self.dim, generator=generator, device=dev)
        for t in range(steps):
            s = torch.full((n,), t / steps, device=dev)
            y = self.head.sample(self.hidden(x, s), generator=generator, steps=head_steps)
            x = x + y / steps
        return TMSample(x, steps, steps * self.head.network_calls(head_steps))


class EulerFlowMatching(nn.Module):
    """Flow matching with the same backbone: a linear map to the velocity ``E[Y | X_s]``,
    sampled with ``steps`` Euler steps (one backbone call each)."""

    def __init__(self, dim: int = 2, *, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.dim = dim
        self.backbone = ResMLP(dim + TIME, width, depth)
        self.out = nn.Linear(width, dim)

    def velocity(self, x: Tensor, s: Tensor) -> Tensor:
        out: Tensor = self.out(self.backbone(torch.cat([x, timestep_embedding(s, TIME)], dim=-1)))
        return out

    def loss(self, x1: Tensor) -> Tensor:
        _check_data(x1, self.dim, "EulerFlowMatching.loss")
        x0 = torch.randn_like(x1)
        s = torch.rand(x1.shape[0], device=x1.device)
        xs = (1 - s[:, None]) * x0 + s[:, None] * x1
        return ((self.velocity(xs, s) - (x1 - x0)) ** 2).mean()

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, generator: torch.Generator | None = None) -> TMSample:
        _check_sampling(n, steps, "EulerFlowMatching.sample")
        dev = next(self.parameters()).device
        x = torch.randn(n, self.dim, generator=generator, device=dev)
        for t in range(steps):
            x = x + self.velocity(x, torch.full((n,), t / steps, device=dev)) / steps
        return TMSample(x, steps, 0)


# -- the independent linear process of ARTM and FHTM ---------------------------------------


def independent_process(x1: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
    """``X_t = (1 - t/T) eps_t + (t/T) X_T`` with independent noises: (N, d) -> (N, T + 1, d)."""
    N, d = x1.shape
    s = torch.arange(steps + 1, device=x1.device, dtype=x1.dtype) / steps  # (T+1,)
    eps = torch.randn(N, steps + 1, d, generator=generator, device=x1.device, dtype=x1.dtype)
    return (1 - s)[None, :, None] * eps + s[None, :, None] * x1[:, None, :]


class ARTM(nn.Module):
    """Autoregressive Transition Matching: the backbone sees ``X_t``, the times ``t/T`` and
    ``(t+1)/T``, the index i of the token to draw and the tokens ``< i`` of ``X_{t+1}``
    drawn so far; a 1-D :class:`FlowHead` draws token i."""

    def __init__(
        self,
        dim: int = 2,
        *,
        width: int = 128,
        depth: int = 3,
        head_width: int = 64,
        head_depth: int = 2,
        head_steps: int = 8,
        train_steps: Sequence[int] = (2, 4, 8, 32),
    ) -> None:
        super().__init__()
        self.dim = dim
        self.train_steps = _check_train_steps(train_steps, "ARTM")
        self.backbone = ResMLP(3 * dim + 2 * TIME, width, depth)
        self.head = FlowHead(1, width, width=head_width, depth=head_depth, default_steps=head_steps)

    def hidden(self, x: Tensor, prev: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
        """Hidden states of every token of X_{t+1}: x (N, d), prev (N, d) the next state
        (only tokens < i are read for token i), s, s_next (N,) -> (N, d, W)."""
        N, d = x.shape
        eye = torch.eye(d, device=x.device)
        before = torch.ones(d, d, device=x.device).tril(-1)  # (i, j): token j < i is visible
        feats = torch.cat(
            [
                x[:, None, :].expand(N, d, d),
                prev[:, None, :] * before,  # (N, d, d): token i sees prev[:, :i]
                eye.expand(N, d, d),  # which token is drawn
                timestep_embedding(s, TIME)[:, None].expand(N, d, TIME),
                timestep_embedding(s_next, TIME)[:, None].expand(N, d, TIME),
            ],
            dim=-1,
        )
        return self.backbone(feats)  # (N, d, W)

    def loss(self, x1: Tensor) -> Tensor:
        """Head loss on every token of X_{t+1}; T from ``train_steps`` per example."""
        _check_data(x1, self.dim, "ARTM.loss")
        N, dev = x1.shape[0], x1.device
        choices = torch.tensor(self.train_steps, device=dev, dtype=x1.dtype)
        T = choices[torch.randint(0, len(self.train_steps), (N,), device=dev)]  # (N,)
        t = torch.floor(torch.rand(N, device=dev) * T)
        s, s_next = t / T, (t + 1) / T
        xs = (1 - s[:, None]) * torch.randn_like(x1) + s[:, None] * x1
        xn = (1 - s_next[:, None]) * torch.randn_like(x1) + s_next[:, None] * x1
        h = self.hidden(xs, xn, s, s_next)  # (N, d, W)
        return self.head.loss(h, xn[..., None]).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int,
        *,
        generator: torch.Generator | None = None,
        head_steps: int | None = None,
    ) -> TMSample:
        """``steps`` transitions, each ``d`` backbone calls (one per token)."""
        _check_sampling(n, steps, "ARTM.sample")
        dev = next(self.parameters()).device
        x = torch.randn(n, self.dim, generator=generator, device=dev)
        for t in range(steps):
            s = torch.full((n,), t / steps, device=dev)
            s_next = torch.full((n,), (t + 1) / steps, device=dev)
            nxt = torch.zeros_like(x)
            for i in range(self.dim):
                h = self.hidden(x, nxt, s, s_next)[:, i]  # (N, W); tokens >= i unused
                nxt[:, i] = self.head.sample(h, generator=generator, steps=head_steps)[:, 0]
            x = nxt
        calls = steps * self.dim
        return TMSample(x, calls, calls * self.head.network_calls(head_steps))


class FHTM(nn.Module):
    """Full-History Transition Matching: a causal ``ar_core`` Transformer over the tokens
    of ``X_0, X_1, ...`` (d per state, in order); the hidden state at token k conditions
    a 1-D :class:`FlowHead` drawing token k + 1. Token k's input is its value, its
    coordinate, the time of its state and of the next token's state, and 1/T."""

    def __init__(
        self,
        dim: int = 2,
        *,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        head_width: int = 64,
        head_depth: int = 2,
        head_steps: int = 8,
        train_steps: Sequence[int] = (2, 4, 8, 32),
    ) -> None:
        super().__init__()
        self.dim = dim
        self.train_steps = _check_train_steps(train_steps, "FHTM")
        self.max_steps = max(self.train_steps)
        self.transformer = build_transformer(
            vocab_size=1,  # inputs are embeddings; the logits are unused
            dim=width,
            n_layers=layers,
            n_heads=heads,
            max_seq_len=dim * (self.max_steps + 1),
            ffn_hidden=2 * width,
        )
        self.embed = nn.Linear(1 + 2 * dim + 3 * TIME, width)
        self.head = FlowHead(1, width, width=head_width, depth=head_depth, default_steps=head_steps)

    def embeddings(self, values: Tensor, start: int, steps: int) -> Tensor:
        """Input embeddings of tokens ``start .. start + L - 1``: values (N, L) -> (N, L, W)."""
        N, L = values.shape
        d, dev = self.dim, values.device
        k = torch.arange(start, start + L, device=dev)  # token indices
        coord = nn.functional.one_hot(k % d, d).float()  # (L, d)
        next_coord = nn.functional.one_hot((k + 1) % d, d).float()
        times = (
            torch.stack(
                [
                    timestep_embedding((k // d).float() / steps, TIME),
                    timestep_embedding(((k + 1) // d).float() / steps, TIME),
                    timestep_embedding(torch.full((L,), 1.0 / steps, device=dev), TIME),
                ]
            )
            .permute(1, 0, 2)
            .reshape(L, 3 * TIME)
        )
        per_pos = torch.cat([coord, next_coord, times], dim=-1)  # (L, 2d + 3 TIME)
        feats = torch.cat([values[..., None], per_pos.expand(N, L, -1)], dim=-1)
        return self.embed(feats)

    def forward_hidden(self, values: Tensor, steps: int) -> Tensor:
        """The uncached (training) forward over all tokens: (N, L) -> (N, L, W)."""
        N, L = values.shape
        if self.transformer.max_seq_len < L:
            raise InputError(
                f"FHTM: {L} tokens exceed max_seq_len={self.transformer.max_seq_len} "
                f"(max train step count {self.max_steps})"
            )
        tokens = torch.zeros(N, L, dtype=torch.long, device=values.device)
        out = self.transformer(tokens, query_embeds=self.embeddings(values, 0, steps))
        return out.hidden

    def loss(self, x1: Tensor, steps: int | None = None) -> Tensor:
        """Head loss on every token of X_1..X_T given the history; ``steps`` T (default: a
        random one of ``train_steps``, shared by the batch)."""
        _check_data(x1, self.dim, "FHTM.loss")
        if steps is None:
            steps = self.train_steps[int(torch.randint(0, len(self.train_steps), ()))]
        seq = independent_process(x1, steps).flatten(1)  # (N, d (T+1))
        h = self.forward_hidden(seq, steps)[:, self.dim - 1 : -1]  # predicts tokens d..
        return self.head.loss(h, seq[:, self.dim :, None]).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int,
        *,
        generator: torch.Generator | None = None,
        head_steps: int | None = None,
        return_hidden: bool = False,
    ) -> TMSample:
        """KV-cached: X_0 in one call, then one call per drawn token (d T calls)."""
        _check_sampling(n, steps, "FHTM.sample")
        if steps > self.max_steps:
            raise ConfigError(
                f"FHTM.sample: steps={steps} exceeds the largest trained T={self.max_steps}"
            )
        d = self.dim
        dev = next(self.parameters()).device
        L = d * (steps + 1)
        cache = self.transformer.new_cache(n, L)
        seq = torch.zeros(n, L, device=dev)
        seq[:, :d] = torch.randn(n, d, generator=generator, device=dev)
        hiddens = []
        k, fed = d, d  # next token to draw; tokens fed to the cache so far (first call: X_0)
        h = self._step(seq[:, :fed], 0, steps, cache)
        while True:
            hiddens.append(h)
            seq[:, k] = self.head.sample(h, generator=generator, steps=head_steps)[:, 0]
            k += 1
            if k == L:
                break
            h = self._step(seq[:, k - 1 : k], k - 1, steps, cache)
        x = seq[:, -d:]
        calls = d * steps
        out = TMSample(x, calls, calls * self.head.network_calls(head_steps))
        if return_hidden:
            out.hidden, out.tokens = torch.stack(hiddens, dim=1), seq
        return out

    @torch.no_grad()
    def sample_steps(
        self,
        n: int,
        steps: int,
        *,
        generator: torch.Generator | None = None,
        head_steps: int | None = None,
    ) -> TMSample:
        """:meth:`sample` through ``ar_core``'s step loop: a plan of one token per step,
        X_0 given, float step values (n, L, 1), the flow head as the registered
        ``flow-head`` step sampler, :class:`FHTMRunner` as the KV-cached runner. Draws
        the same values as :meth:`sample` from the same generator."""
        _check_sampling(n, steps, "FHTM.sample_steps")
        if steps > self.max_steps:
            raise ConfigError(
                f"FHTM.sample_steps: steps={steps} exceeds the largest trained T={self.max_steps}"
            )
        d, dev = self.dim, next(self.parameters()).device
        L = d * (steps + 1)
        values = torch.full((n, L, 1), float("nan"), device=dev)
        values[:, :d, 0] = torch.randn(n, d, generator=generator, device=dev)
        runner = FHTMRunner(self, steps, values[:, :d, 0])
        plan = Plan([[k] for k in range(L)], (L,))
        out = run_steps(
            runner,
            plan,
            batch_size=n,
            sampler=HeadSampler("flow-head", self.head, steps=head_steps),
            values=values,
            first_step=d,
            generator=generator,
        )
        calls = runner.calls
        return TMSample(out.tokens[:, -d:, 0], calls, calls * self.head.network_calls(head_steps))

    def _step(self, values: Tensor, start: int, steps: int, cache: StaticKVCache) -> Tensor:
        """Feed tokens ``start ..`` to the cache; the last one's hidden state (N, W)."""
        N, L = values.shape
        tokens = torch.zeros(N, L, dtype=torch.long, device=values.device)
        out = self.transformer(
            tokens, cache=cache, query_embeds=self.embeddings(values, start, steps)
        )
        hidden: Tensor = out.hidden[:, -1]
        return hidden


class FHTMRunner:
    """An ``ar_core`` ``StepRunner`` over FHTM's tokens for :func:`ar_core.steps.run_steps`
    with float step values: ``predict`` feeds the values committed since the last call
    to the KV cache (the first call: X_0 (N, d)) and returns the last one's hidden state
    (N, 1, W) (empty logits); ``commit`` keeps the drawn token (N, 1, 1) for the next
    call. One call per drawn token."""

    def __init__(self, model: FHTM, steps: int, x0: Tensor) -> None:
        self.model, self.steps, self.calls = model, steps, 0
        self.cache = model.transformer.new_cache(x0.shape[0], model.dim * (steps + 1))
        self.pending, self.start = x0, 0  # values not yet fed (N, k), their first index

    def predict(self, step: Tensor) -> ModelOutput:
        h = self.model._step(self.pending, self.start, self.steps, self.cache)  # (N, W)
        self.start += self.pending.shape[1]
        self.calls += 1
        return ModelOutput(logits=h.new_zeros(h.shape[0], 1, 0), hidden=h[:, None])

    def commit(self, step: Tensor, values: Tensor) -> None:
        self.pending = values[..., 0]  # (N, 1)
