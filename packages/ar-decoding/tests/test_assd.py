"""ASSD on a random tiny any-subset two-stream model: sampled infills match the enumerated
chain-rule joint (chi-square at 0.001) while an always-accept rule fails at p < 1e-6;
network calls <= tokens on every run and row; greedy ASSD equals ar-core's
one-position-per-step greedy loop (infilling and the ``assd`` strategy on ragged prompts);
bad input is a clear error."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import ALPHA, BROKEN, chi2_pvalue, tiny

import ar_decoding.verify as verify
from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.ordering import Plan
from ar_core.steps import TwoStreamStepModel, generate_steps
from ar_decoding.assd import assd_fill

V, N = 4, 5
GIVEN = {0: 1, 4: 2}  # infilling: positions 1, 2, 3 unknown
UNKNOWN = [1, 2, 3]
ROWS = 4000


def two_stream(vocab: int = V, n: int = N, seed: int = 3, std: float = 0.35) -> TwoStreamStepModel:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=vocab + 2, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=2 * (n + 1)
    )
    model = TwoStreamStepModel(Transformer(cfg), vocab).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, std)
    return model


def _infill_prompt(rows: int) -> torch.Tensor:
    x = torch.full((rows, N), -1, dtype=torch.long)
    for pos, tok in GIVEN.items():
        x[:, pos] = tok
    return x


def chain_rule_joint(model: TwoStreamStepModel) -> torch.Tensor:
    """P(x_1, x_2, x_3 | x_0, x_4), enumerated, in the order 1, 2, 3: (V**3,)."""
    fills = torch.tensor(list(itertools.product(range(V), repeat=len(UNKNOWN))))  # (V^3, 3)
    x = _infill_prompt(len(fills))
    x[:, UNKNOWN] = fills
    order = torch.tensor([*GIVEN, *UNKNOWN]).expand(len(fills), -1)
    steps = torch.tensor([0] * len(GIVEN) + [1, 2, 3])
    with torch.no_grad():
        logp = torch.log_softmax(model.query_outputs(x, order, steps).logits.double(), -1)
    g = len(GIVEN)
    joint = logp[:, g:].gather(-1, fills[..., None]).squeeze(-1).sum(-1).exp()
    assert abs(float(joint.sum()) - 1.0) < 1e-6
    return joint


@pytest.fixture(scope="module")
def model() -> TwoStreamStepModel:
    return two_stream()


@pytest.fixture(scope="module")
def joint(model: TwoStreamStepModel) -> torch.Tensor:
    return chain_rule_joint(model)


def _sample(model: TwoStreamStepModel, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = assd_fill(model, _infill_prompt(ROWS), k=3, temperature=1.0, generator=gen)
    assert bool((out.calls <= len(UNKNOWN)).all())  # network calls <= tokens, every row
    assert torch.equal(out.tokens[:, [0, 4]], _infill_prompt(ROWS)[:, [0, 4]])
    return out.tokens[:, UNKNOWN]


def test_sampled_infills_match_the_chain_rule_joint(model, joint) -> None:  # type: ignore[no-untyped-def]
    # the draft's independent marginals differ from the joint: ASSD must correct them
    assert chi2_pvalue(_sample(model), joint, V) > ALPHA


def test_always_accepting_the_draft_fails(model, joint, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def accept_all(draft, q, p, generator, **kw):  # type: ignore[no-untyped-def]
        B, k = draft.shape
        return torch.full((B,), k), torch.full((B,), -1)

    monkeypatch.setattr(verify, "accept_sampling", accept_all)
    assert chi2_pvalue(_sample(model), joint, V) < BROKEN


def _greedy_steps(
    model: TwoStreamStepModel, prompt: torch.Tensor, given: list[int]
) -> torch.Tensor:
    """ar-core's step loop: the given positions in one step, then one position per call."""
    rest = [p for p in range(prompt.shape[1]) if p not in given]
    plan = Plan([given] + [[p] for p in rest], shape=(prompt.shape[1],))
    out = generate_steps(
        model, plan, batch_size=prompt.shape[0], prompt=prompt.clamp(min=0), given_steps=1,
        temperature=0.0,
    )  # fmt: skip
    return out.tokens


def test_greedy_assd_equals_greedy_infilling(model: TwoStreamStepModel) -> None:
    big = two_stream(vocab=6, n=12, seed=4, std=0.3)
    x = torch.full((6, 12), -1, dtype=torch.long)
    given = [0, 1, 6, 11]
    x[:, given] = torch.randint(0, 6, (6, 4), generator=torch.Generator().manual_seed(0))
    ref = _greedy_steps(big, x, given)
    for k in (1, 2, 4, 8):
        out = assd_fill(big, x, k=k, temperature=0.0)
        assert torch.equal(out.tokens, ref)
        assert bool((out.calls <= 8).all())
        if k > 1:
            assert out.forwards < 8 * 2  # batched forwards: fewer than one per token and row


def test_assd_strategy_on_ragged_prompts_equals_greedy() -> None:
    big = two_stream(vocab=6, n=14, seed=5, std=0.3)
    x = torch.randint(0, 6, (3, 5), generator=torch.Generator().manual_seed(2))
    lengths = [5, 2, 5]
    cfg = GenerationConfig(max_new_tokens=8, temperature=0)
    out = generate(big, x, cfg, strategy="assd", prompt_lengths=lengths, num_draft_tokens=3)
    for b, length in enumerate(lengths):
        prompt = torch.full((1, length + 8), -1, dtype=torch.long)
        prompt[0, :length] = x[b, :length]
        ref = _greedy_steps(big, prompt, list(range(length)))
        assert torch.equal(out.sequences[b, : length + 8], ref[0])
    assert out.stats.tokens_generated == 3 * 8
    assert out.stats.target_forward_passes <= 3 * 8


def test_bad_input(model: TwoStreamStepModel) -> None:
    with pytest.raises(ConfigError, match="TwoStreamStepModel"):
        assd_fill(tiny(), _infill_prompt(1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be an int >= 1"):
        assd_fill(model, _infill_prompt(1), k=0)
    with pytest.raises(ConfigError, match="TwoStreamStepModel"):
        generate(tiny(), torch.zeros(1, 2, dtype=torch.long), strategy="assd")
