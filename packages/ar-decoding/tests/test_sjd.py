"""Speculative Jacobi Decoding: greedy SJD equals greedy; sampled sequences follow the
target's exact joint (chi-square, significance level 0.001) for random and spatial
initialisation, while a deliberately broken rule (resample from p instead of the
residual) fails the same test (p < 1e-6); more than one token per forward on
repetitive text."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import ALPHA, BROKEN, chi2_pvalue, copy_model, exact_joint, tiny

import ar_decoding.sjd as sjd_module
from ar_core import generate
from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig
from ar_core.sampling import multinomial_sample_one_no_sync
from ar_decoding.verify import accept_sampling


def broken_accept(
    draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative acceptance, but the next token comes from p instead of the residual."""
    n, _ = accept_sampling(draft, q, p, gen)
    rows = torch.arange(draft.shape[0])
    return n, multinomial_sample_one_no_sync(p[rows, n], gen)


@pytest.mark.parametrize(("init", "window"), [("random", 2), ("spatial", 2), ("random", 3)])
def test_sampled_joint_matches_target_and_broken_rule_fails(
    init: str, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    V, n, M = 4, 3, 8000
    model = tiny(V, dim=16, n_heads=2, n_kv_heads=1, ffn_hidden=64, std=0.5)
    prompt = [1, 2]
    joint = exact_joint(model, prompt, n)
    x = torch.tensor([prompt] * M)
    kw: dict[str, Any] = dict(strategy="sjd", window=window, init=init, grid_width=2)
    out = generate(model, x, GenerationConfig(max_new_tokens=n, seed=1), **kw)
    assert chi2_pvalue(out.sequences[:, 2:], joint, V) > ALPHA
    assert out.stats.mean_accepted_length > 1.05  # drafts were accepted (per row and step)
    monkeypatch.setattr(sjd_module, "accept_sampling", broken_accept)
    bad = generate(model, x, GenerationConfig(max_new_tokens=n, seed=1), **kw)
    assert chi2_pvalue(bad.sequences[:, 2:], joint, V) < BROKEN


@pytest.mark.parametrize("init", ["random", "spatial"])
def test_greedy_sjd_equals_greedy_ragged_with_eos(init: str) -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(1))
    lengths = [6, 2, 4]
    ref0 = generate(model, x, GenerationConfig(max_new_tokens=16), prompt_lengths=lengths)
    eos = int(ref0.sequences[1, 2 + 5])
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.0, eos_token_id=eos, seed=3)
    ref = generate(model, x, cfg, prompt_lengths=lengths)
    out = generate(
        model, x, cfg, strategy="sjd", prompt_lengths=lengths, window=4, init=init, grid_width=3
    )
    assert torch.equal(out.sequences, ref.sequences)


@pytest.mark.parametrize("init", ["random", "spatial"])
def test_repetitive_image_rows_take_fewer_forwards(init: str) -> None:
    # rows of 5 "image tokens" that repeat: the copy model predicts the row above
    model = copy_model(vocab=8, lag=5)
    x = torch.tensor([[1, 2, 3, 4, 5], [6, 2, 7, 3, 0]])
    cfg = GenerationConfig(max_new_tokens=30, temperature=1.0, seed=0)
    out = generate(model, x, cfg, strategy="sjd", window=4, init=init, grid_width=5)
    assert torch.equal(out.sequences[:, 5:], x.repeat(1, 6))  # p(copy) > 0.999
    tokens_per_forward = out.stats.tokens_generated / 2 / out.stats.target_forward_passes
    assert tokens_per_forward > 2.0, tokens_per_forward


def test_bad_kwargs() -> None:
    model = tiny(8, dim=32, ffn_hidden=64)
    x = torch.zeros(1, 3, dtype=torch.long)
    cfg = GenerationConfig(max_new_tokens=2)
    with pytest.raises(ConfigError, match="init"):
        generate(model, x, cfg, strategy="sjd", init="zeros")
    with pytest.raises(ConfigError, match="grid_width"):
        generate(model, x, cfg, strategy="sjd", init="spatial")
    with pytest.raises(ConfigError, match="window"):
        generate(model, x, cfg, strategy="sjd", window=0)


def test_random_initialisation_fills_exactly_the_slots_past_keep() -> None:
    """The vectorised ``init='random'`` fill equals the per-slot rule: slot j of row b is
    redrawn (token uniform[b, j], q uniform) iff j >= keep[b]; the rest stay untouched."""
    B, L, V = 3, 5, 7
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, V, (B, L), generator=gen)
    q = torch.rand(B, L, V, generator=gen)
    keep = torch.tensor([0, 2, 5])
    x0, q0 = x.clone(), q.clone()
    draw = torch.Generator().manual_seed(9)
    sjd_module._initialise(x, q, keep, None, "random", None, draw)  # type: ignore[arg-type]
    uniform = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(9))
    for b in range(B):
        for j in range(L):
            if j >= keep[b]:
                assert x[b, j] == uniform[b, j]
                assert torch.equal(q[b, j], torch.full((V,), 1.0 / V))
            else:
                assert x[b, j] == x0[b, j] and torch.equal(q[b, j], q0[b, j])


def test_spatial_initialisation_matches_the_per_slot_rule() -> None:
    """``init='spatial'``: slot j >= keep[b] (new token t = n_new[b] + j) gets the token one
    grid row above, in the first grid row the one to the left (a committed token, or an
    earlier slot of the window), the very first new token a uniform draw; q is the point
    mass on it (uniform for that first token). Checked slot by slot against that rule."""
    B, L, V, N, grid = 5, 6, 9, 20, 4
    gen = torch.Generator().manual_seed(2)
    n_new = torch.tensor([0, 1, 3, 6, 13])
    new_tokens = torch.randint(0, V, (B, N), generator=gen)
    x = torch.randint(0, V, (B, L), generator=gen)
    q = torch.rand(B, L, V, generator=gen)
    keep = torch.tensor([0, 2, 1, 6, 3])
    x0, q0 = x.clone(), q.clone()
    known = (n_new, new_tokens)
    sjd_module._initialise(x, q, keep, known, "spatial", grid, torch.Generator().manual_seed(5))
    uniform = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(5))
    for b in range(B):
        want = x0[b].clone()
        for j in range(L):
            if j < keep[b]:
                continue
            t = int(n_new[b]) + j
            src = t - grid if t >= grid else t - 1
            if t == 0:
                want[j] = uniform[b, j]
            elif src < n_new[b]:
                want[j] = new_tokens[b, src]
            else:
                want[j] = want[src - int(n_new[b])]
        assert torch.equal(x[b], want), b
        for j in range(L):
            if j < keep[b]:
                assert torch.equal(q[b, j], q0[b, j])
            elif int(n_new[b]) + j == 0:
                assert torch.equal(q[b, j], torch.full((V,), 1.0 / V))
            else:
                assert torch.equal(q[b, j], torch.nn.functional.one_hot(want[j], V).float())


class _PoisonAfterCompaction:
    """A causal LM that returns NaN logits once the batch shrank below ``full`` rows (SJD
    dropped a finished row): the error must name the row in the full batch."""

    def __init__(self, model: Any, full: int) -> None:
        self.model, self.full = model, full
        self.vocab_size, self.max_seq_len = model.vocab_size, model.max_seq_len

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Any:
        return self.model.new_cache(batch_size, max_len)

    def __call__(self, tokens: torch.Tensor, **kwargs: Any) -> Any:
        out = self.model(tokens, **kwargs)
        if tokens.shape[0] < self.full:
            out.logits[:] = float("nan")
        return out


def test_nonfinite_logits_after_dropping_a_finished_row_name_the_full_batch_row() -> None:
    # row 0 copies 1 2 3 4 5 and stops at its EOS (5); row 1 (no 5) runs on alone
    x = torch.tensor([[1, 2, 3, 4, 5], [6, 2, 7, 3, 0]])
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, eos_token_id=5, seed=0)
    model = _PoisonAfterCompaction(copy_model(vocab=8, lag=5), full=2)
    with pytest.raises(InputError, match=r"non-finite logits .* row 1:"):
        generate(model, x, cfg, strategy="sjd", window=2)
