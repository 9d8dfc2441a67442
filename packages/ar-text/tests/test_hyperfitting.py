"""Hyperfitting (Carlsson et al., ICLR 2025): the citation blocker provably blocks (greedy
and sampling, checked by brute force over every k-gram that ends at a generated token),
its index equals the brute-force k-gram set, TTR and entropy against hand-computed values,
and (slow) the small experiment reaches near-zero training loss with lower entropy."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ar_core import generate
from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig
from ar_core.model import Transformer, TransformerConfig
from ar_text.hyperfitting import (
    HyperfitConfig,
    NgramBlocker,
    held_out_stats,
    hyperfit,
    next_token_entropy,
    run_experiment,
    training_kgrams,
    type_token_ratio,
)

K = 4  # blocked n-gram length in the blocker tests
V = 16  # a small vocabulary makes copying (and so blocking) frequent
PROMPT = 6
NEW = 20


@pytest.fixture(scope="module")
def memorised() -> tuple[Transformer, torch.Tensor]:
    """A tiny model hyperfitted to 8 random sequences of 32 tokens (it copies them)."""
    torch.set_num_threads(1)
    data = torch.randint(0, V, (8, 32), generator=torch.Generator().manual_seed(0))  # (N, T)
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(vocab_size=V, dim=48, n_layers=2, n_heads=4, max_seq_len=64)
    )
    losses = hyperfit(model, data, epochs=150, lr=1e-2, batch_size=8, seed=0)
    assert losses[-1] < 0.3, f"the test model did not memorise its data: loss {losses[-1]:.3f}"
    return model, data


def copied_kgrams(rows: torch.Tensor, prompt_len: int, kgrams: set[tuple[int, ...]]) -> int:
    """Brute force: how many n-grams that end at a generated token occur in ``kgrams`` (all
    of one length n, read off the set)."""
    n = len(next(iter(kgrams)))
    hits = 0
    for row in rows.tolist():
        for t in range(prompt_len, len(row)):
            if t - n + 1 >= 0 and tuple(row[t - n + 1 : t + 1]) in kgrams:
                hits += 1
    return hits


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_blocker_blocks_every_training_kgram(
    memorised: tuple[Transformer, torch.Tensor], temperature: float
) -> None:
    model, data = memorised
    kgrams = training_kgrams(data.tolist(), K)
    prompts = data[:, :PROMPT]  # (N, PROMPT): training contexts invite copying
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=temperature, seed=0)
    free = generate(model, prompts, cfg, strategy="greedy" if temperature == 0 else "sample")
    assert copied_kgrams(free.sequences, PROMPT, kgrams) > NEW  # it does copy without the blocker
    blocker = NgramBlocker(data.tolist(), K, V)
    out = generate(model, prompts, cfg, strategy="constrained", allowed_next=blocker.allowed_next)
    assert out.sequences.shape == (data.shape[0], PROMPT + NEW)
    assert copied_kgrams(out.sequences, PROMPT, kgrams) == 0
    # longer n-grams contain a k-gram, so none of length K + 2 is copied either (the free
    # continuations do copy some: the check can fail)
    longer = training_kgrams(data.tolist(), K + 2)
    assert copied_kgrams(free.sequences, PROMPT, longer) > 0
    assert copied_kgrams(out.sequences, PROMPT, longer) == 0


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(0, 5), max_size=12), max_size=6),
    k=st.integers(2, 5),
    row=st.lists(st.integers(0, 5), max_size=8),
)
def test_index_equals_brute_force(seqs: list[list[int]], k: int, row: list[int]) -> None:
    blocker = NgramBlocker(seqs, k, vocab_size=6)
    kgrams = training_kgrams(seqs, k)
    assert blocker.kgrams() == kgrams
    allowed = set(blocker.allowed_next(torch.tensor(row, dtype=torch.long)).tolist())
    expect = {
        t for t in range(6) if len(row) < k - 1 or (*row[len(row) - k + 1 :], t) not in kgrams
    }
    assert allowed == expect


def test_blocker_rejects_k1() -> None:
    with pytest.raises(ConfigError, match="k >= 2"):
        NgramBlocker([[1, 2]], 1, 4)


def test_type_token_ratio_by_hand() -> None:
    assert type_token_ratio([1, 2, 3, 4]) == 1.0
    assert type_token_ratio([7, 7, 7, 7]) == 0.25
    assert type_token_ratio([1, 2, 1, 3, 1]) == 3 / 5
    with pytest.raises(InputError):
        type_token_ratio([])


def test_entropy_by_hand() -> None:
    uniform = torch.zeros(4)
    assert next_token_entropy(uniform).item() == pytest.approx(math.log(4))
    one_hot = torch.tensor([0.0, float("-inf"), float("-inf")])
    assert next_token_entropy(one_hot).item() == pytest.approx(0.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    by_hand = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # = 1.5 ln 2
    assert next_token_entropy(p.log()).item() == pytest.approx(by_hand, rel=1e-6)


def test_held_out_stats_match_a_direct_computation() -> None:
    torch.manual_seed(1)
    model = Transformer(TransformerConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2))
    rows = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(1))
    ent, ppl = held_out_stats(model, rows, batch_size=2)
    with torch.no_grad():
        probs = model(rows).logits[:, :-1].softmax(-1).double()  # (3, 8, V)
    ref_ent = float(-(probs * probs.log()).sum(-1).mean())
    target_p = probs.gather(-1, rows[:, 1:, None]).squeeze(-1)  # (3, 8)
    ref_ppl = math.exp(float(-target_p.log().mean()))
    assert ent == pytest.approx(ref_ent, rel=1e-5)
    assert ppl == pytest.approx(ref_ppl, rel=1e-5)


@pytest.mark.slow
def test_small_hyperfitting_experiment() -> None:
    torch.set_num_threads(1)
    report, _, _ = run_experiment(HyperfitConfig())
    print(dataclasses.asdict(report))  # TTR before / after is reported, not gated
    assert report.train_loss_after < 0.05
    assert report.entropy_after < report.entropy_before


# -- the recipe `text-hyperfit` ------------------------------------------------------------------

RECIPE_TINY = dict(
    corpus_bytes=30_000,
    seq_len=64,
    dim=32,
    n_layers=1,
    n_heads=2,
    pretrain_steps=10,
    batch_size=8,
    n_samples=8,
    sample_tokens=64,
    epochs=20,
    context_tokens=16,
    continuation_tokens=32,
    ttr_window=32,
    n_contexts=3,
    held_out_rows=2,
    block_k=4,
    n_show=2,
    progress_bar=False,
)


def test_count_copied_kgrams_by_hand() -> None:
    from ar_text.recipes.hyperfit import count_copied_kgrams

    rows = torch.tensor([[1, 2, 3, 4, 1, 2, 3], [9, 9, 1, 2, 3, 5, 5]])
    kgrams: set[tuple[int, ...]] = {(1, 2, 3), (2, 3, 4)}
    # prompt of 3: row 0 counts (2,3,4) at 3 and (1,2,3) at 6; row 1 counts (1,2,3) at 4
    assert count_copied_kgrams(rows, 3, kgrams) == 3
    assert count_copied_kgrams(rows, 0, kgrams) == 4  # row 0's first (1,2,3) ends at 2
    assert count_copied_kgrams(rows, 0, set()) == 0


def test_recipe_registered() -> None:
    from ar_core import registry
    from ar_text.recipes.hyperfit import recipe

    assert registry.recipes.get("text-hyperfit") is recipe
    assert not recipe.in_demo


def test_recipe_end_to_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ar_core.errors import CheckpointError
    from ar_core.recipes import write_recipe_file
    from ar_text.recipes.hyperfit import (
        SAMPLES_FILE,
        HyperfitRecipeConfig,
        load_samples,
        recipe,
    )

    torch.set_num_threads(1)
    config = HyperfitRecipeConfig(**RECIPE_TINY)  # type: ignore[arg-type]
    write_recipe_file(tmp_path, "text-hyperfit", config)
    messages: list[str] = []
    result = recipe.run(config, tmp_path, messages.append)
    assert any("hyperfitting" in m for m in messages)

    before_after, blocker = result.tables
    loss_row, entropy_row = before_after.rows[0], before_after.rows[1]
    assert loss_row[0].startswith("training loss") and loss_row[2] < loss_row[1]
    assert loss_row[2] == result.metrics["train_loss_after"]
    assert entropy_row[1:] == [result.metrics["entropy_before"], result.metrics["entropy_after"]]
    # the blocker row copies nothing; the free row's count is recomputed by brute force
    samples = load_samples(tmp_path / SAMPLES_FILE, config)
    assert samples.shape == (8, 64)
    assert blocker.rows[1][0] == "greedy + citation blocker" and blocker.rows[1][1] == 0
    model = Transformer.from_pretrained(tmp_path / "model")
    from ar_text.hyperfitting import experiment_data

    _, _, contexts, _ = experiment_data(config)
    out = generate(model, contexts, GenerationConfig(max_new_tokens=32, temperature=0))
    kgrams = training_kgrams(samples.tolist(), 4)
    assert blocker.rows[0][1] == copied_kgrams(out.sequences, 16, kgrams)  # brute force
    assert len(result.curves["pretraining loss"]) == 10
    assert len(result.curves["hyperfitting loss"]) == math.ceil(20 * 8 / 8)
    assert len(result.samples) == 2 * 3  # before, after, blocked for n_show contexts

    again = recipe.sample(tmp_path, 2, lambda _: None)
    assert len(again.samples) == 4 and again.tables[0].rows[1][1] == 0

    # a corrupted or mismatched hyperfitting set is refused, not half-used
    (tmp_path / SAMPLES_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="re-run ar train text-hyperfit"):
        recipe.sample(tmp_path, 2, lambda _: None)
    from ar_text.recipes.hyperfit import save_samples

    save_samples(tmp_path / SAMPLES_FILE, samples[:, :10])
    with pytest.raises(CheckpointError, match=r"shape \(8, 64\)"):
        recipe.sample(tmp_path, 2, lambda _: None)
