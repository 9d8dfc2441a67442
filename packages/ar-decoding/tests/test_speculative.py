"""Chain and tree speculative decoding: exactly greedy (ragged batches, EOS, streaming),
counters that prove the speculative path ran, errors, and the sampled distribution
against the enumerated joint (chi-square, significance level 0.001; a broken acceptance
rule must fail with p < 1e-6)."""

from __future__ import annotations

import pytest
import torch
from helpers import ALPHA, BROKEN, Recorder, chi2_pvalue, exact_joint, new_tokens, tiny

import ar_decoding.verify as verify
from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate

GREEDY = GenerationConfig(max_new_tokens=15, temperature=0)
CHAIN = ("speculative", {"num_draft_tokens": 3})
CHAIN_ADAPTIVE = ("speculative", {"num_draft_tokens": 2, "adaptive": True})
TREE = ("tree-speculative", {"expansion": (2, 2, 1)})
ALL = [CHAIN, CHAIN_ADAPTIVE, TREE]


def _ragged() -> tuple[torch.Tensor, list[int]]:
    return torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1)), [7, 2, 5]


@pytest.mark.parametrize(("strategy", "kw"), ALL)
@pytest.mark.parametrize("draft_seed", [0, 5])  # 0: the target itself; 5: a random draft
def test_equals_greedy_on_ragged_batches(strategy: str, kw: dict, draft_seed: int) -> None:
    target = tiny()
    draft = target if draft_seed == 0 else tiny(layers=1, seed=draft_seed)
    x, lengths = _ragged()
    ref = generate(target, x, GREEDY, prompt_lengths=lengths)
    out = generate(
        target, x, GREEDY, strategy=strategy, prompt_lengths=lengths, draft_model=draft, **kw
    )
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats.tokens_generated == 3 * 15


def test_counters_prove_the_speculative_path_ran() -> None:
    target = tiny()
    x = torch.randint(0, 64, (1, 5))
    cfg = GenerationConfig(max_new_tokens=21, temperature=0)
    k = 4
    same = generate(target, x, cfg, strategy="speculative", draft_model=target, num_draft_tokens=k)
    # prefill + one token, then 20 tokens in steps of k + 1 = 5: all accepted
    assert same.stats.accepted_lengths == [1] + [k + 1] * 4
    assert same.stats.target_forward_passes == 1 + 4
    assert same.stats.draft_forward_passes == 1 + 4 * k
    rand = generate(
        target,
        x,
        cfg,
        strategy="speculative",
        draft_model=tiny(layers=1, seed=9),
        num_draft_tokens=k,
    )
    assert rand.stats.mean_accepted_length < 1.3  # a random draft is (almost) never accepted
    assert rand.stats.target_forward_passes >= 17
    tree = generate(
        target, x, cfg, strategy="tree-speculative", draft_model=target, expansion=(2, 1, 1, 1)
    )
    assert tree.stats.accepted_lengths == [1] + [5] * 4


def test_eos_streamer_and_max_new_tokens() -> None:
    target = tiny()
    x, lengths = _ragged()
    free = generate(target, x, GREEDY, prompt_lengths=lengths)
    eos = int(free.sequences[1, lengths[1] + 3])  # row 1 stops by its 4th token at latest
    cfg = GenerationConfig(max_new_tokens=15, temperature=0, eos_token_id=eos, pad_token_id=63)
    ref = generate(target, x, cfg, prompt_lengths=lengths)
    for strategy, kw in ALL:
        rec = Recorder()
        out = generate(
            target,
            x,
            cfg,
            strategy=strategy,
            prompt_lengths=lengths,
            streamer=rec,
            draft_model=target,
            **kw,
        )
        assert torch.equal(out.sequences, ref.sequences)
        assert out.sequences.shape == (3, 7 + 15)
        assert rec.ended
        assert torch.equal(rec.tokens(), new_tokens(out.sequences, lengths, 15))


def test_repetition_penalty_is_exact() -> None:
    target = tiny()
    x, lengths = _ragged()
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, repetition_penalty=1.5)
    ref = generate(target, x, cfg, prompt_lengths=lengths)
    for strategy, kw in ALL:
        out = generate(
            target,
            x,
            cfg,
            strategy=strategy,
            prompt_lengths=lengths,
            draft_model=tiny(layers=1, seed=3),
            **kw,
        )
        assert torch.equal(out.sequences, ref.sequences)


def test_bad_kwargs() -> None:
    target, x = tiny(), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="draft_model="):
        generate(target, x, GREEDY, strategy="speculative")
    with pytest.raises(ConfigError, match="vocab_size"):
        generate(target, x, GREEDY, strategy="speculative", draft_model=tiny(32))
    with pytest.raises(ConfigError, match="num_draft_tokens"):
        generate(target, x, GREEDY, strategy="speculative", draft_model=target, num_draft_tokens=0)
    with pytest.raises(ConfigError, match="expansion"):
        generate(
            target, x, GREEDY, strategy="tree-speculative", draft_model=target, expansion=(2, 0)
        )


# -- the sampled distribution -------------------------------------------------------------

PROMPT = [1, 2]
ROWS = 4000


def _sample(strategy: str, kw: dict, seed: int) -> torch.Tensor:
    target = tiny(4, dim=32, seed=11, scale=30.0)
    draft = tiny(4, dim=32, layers=1, seed=12, scale=30.0)
    x = torch.tensor([PROMPT]).expand(ROWS, -1).contiguous()
    cfg = GenerationConfig(max_new_tokens=3, temperature=1.0, seed=seed)
    out = generate(target, x, cfg, strategy=strategy, draft_model=draft, **kw)
    return out.sequences[:, len(PROMPT) :]


@pytest.fixture(scope="module")
def joint() -> torch.Tensor:
    return exact_joint(tiny(4, dim=32, seed=11, scale=30.0), PROMPT, 3)


@pytest.mark.parametrize(
    ("strategy", "kw"),
    [
        ("speculative", {"num_draft_tokens": 2}),
        ("tree-speculative", {"expansion": (2, 2)}),
    ],
)
def test_sampling_matches_the_exact_joint(joint: torch.Tensor, strategy: str, kw: dict) -> None:
    assert chi2_pvalue(_sample(strategy, kw, seed=0), joint, 4) > ALPHA


def test_sample_strategy_reference_passes_too(joint: torch.Tensor) -> None:
    target = tiny(4, dim=32, seed=11, scale=30.0)
    x = torch.tensor([PROMPT]).expand(ROWS, -1).contiguous()
    out = generate(target, x, GenerationConfig(max_new_tokens=3, seed=0), strategy="sample")
    assert chi2_pvalue(out.sequences[:, 2:], joint, 4) > ALPHA


def test_broken_acceptance_rule_fails(joint: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Residual = p instead of norm(max(p - q, 0)) biases towards the draft."""
    monkeypatch.setattr(verify, "residual_distribution", lambda p, q: p)
    samples = _sample("speculative", {"num_draft_tokens": 2}, seed=0)
    assert chi2_pvalue(samples, joint, 4) < BROKEN


def test_compiled_passes_equal_greedy_and_compile_a_few_graphs(monkeypatch) -> None:
    # compile=True: the target's verification (padded to k + 1) and the draft's steps run
    # as compiled graphs on prepacked models; ragged rows, a self-draft (every step accepts
    # k + 1 tokens, so catch-up passes of 2 run too) and a random one, and prompt lookup
    from ar_core import generation
    from ar_core.quant import prepack

    target = prepack(tiny())
    x, lengths = _ragged()
    ref = generate(target, x, GREEDY, prompt_lengths=lengths)
    generation.ModelPass(target, compile=True)  # builds the compiled pass if not yet built
    widths: list[int] = []  # the width of every call of the compiled pass
    compiled = generation._COMPILED_PASS[0]
    monkeypatch.setattr(
        generation,
        "_COMPILED_PASS",
        [lambda m, t, c, *rest: widths.append(t.shape[1]) or compiled(m, t, c, *rest)],
    )
    for draft in (target, prepack(tiny(layers=1, seed=5))):
        out = generate(
            target, x, GREEDY, strategy="speculative", prompt_lengths=lengths,
            draft_model=draft, num_draft_tokens=3, compile=True,
        )  # fmt: skip
        assert torch.equal(out.sequences, ref.sequences)
    lookup = generate(
        target, x, GREEDY, strategy="prompt-lookup", prompt_lengths=lengths, compile=True
    )
    assert torch.equal(lookup.sequences, ref.sequences)
    # every compiled call is padded: the target's verification to k + 1 = 4, prompt
    # lookup's to 11, the draft's steps 1 and its catch-up 2
    assert {4, 11} <= set(widths) <= {1, 2, 4, 11}
