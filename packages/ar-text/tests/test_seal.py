"""SEAL: constrained n-grams occur in the corpus, the weight and scoring formulas, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_core.model import Transformer, TransformerConfig
from ar_text.fm_index import FMIndex
from ar_text.seal import (
    BOS,
    SEP,
    VOCAB,
    Generated,
    constrained_greedy,
    encode,
    hit_at,
    intersective_scores,
    make_query,
    ngram_beam,
    ngram_weight,
    stdlib_docstrings,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], FMIndex]:
    docs = stdlib_docstrings(30, seed=1)
    return docs, FMIndex([encode(d) for d in docs])


def _model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, max_seq_len=128)
    return Transformer(cfg).eval()


def _occurs(docs: list[str], toks: tuple[int, ...]) -> bool:
    return any(bytes(toks) in d.encode() for d in docs)


def test_constrained_ngrams_all_in_corpus(corpus: tuple[list[str], FMIndex]) -> None:
    docs, fm = corpus
    rng = np.random.default_rng(0)
    total = 0
    for seed in range(3):  # random-weight models: the constraint alone must guarantee it
        model = _model(seed)
        q, _ = make_query(docs[seed], rng)
        prompt = [BOS, *encode(q), SEP]
        gen = ngram_beam(model, prompt, fm=fm, beams=6, max_len=10)
        assert gen
        for g in gen:
            assert fm.count(g.tokens) > 0 and _occurs(docs, g.tokens)
        total += len(gen)
        greedy = constrained_greedy(model, prompt, fm, max_len=10)
        assert greedy and _occurs(docs, greedy)
        # unconstrained, the same random model almost never writes a corpus n-gram
        free = ngram_beam(model, prompt, fm=None, beams=6, max_len=10)
        assert sum(_occurs(docs, g.tokens) for g in free) < len(free)
    assert total >= 3


def test_ngram_weight_formula() -> None:
    lp, count, n = math.log(0.3), 4, 1000
    p_n = 9 / 1005
    expected = math.log(0.3 * (1 - p_n) / (p_n * 0.7)) ** 2.0
    assert ngram_weight(lp, count, n, alpha=2.0) == pytest.approx(expected, rel=1e-12)
    assert ngram_weight(math.log(1e-6), 500, 1000) == 0.0  # less likely than by chance


def test_intersective_scores_overlap_discount() -> None:
    docs = [[1, 2, 3, 4], [1, 2, 9], [7, 8]]
    fm = FMIndex(docs)
    a = Generated((1, 2, 3), math.log(0.5))
    b = Generated((2, 3, 4), math.log(0.4))
    missing = Generated((5, 5), 0.0)  # not in the corpus: scores nothing
    scores = intersective_scores(fm, [a, b, missing], alpha=1.0, beta=0.8)
    wa = ngram_weight(a.logprob, 1, fm.n_tokens, 1.0)
    wb = ngram_weight(b.logprob, 1, fm.n_tokens, 1.0)
    # b shares {2, 3} with the heavier a in doc 0: cover = 0.2 + 0.8 * 1/3
    assert scores[0] == pytest.approx(wa + wb * (0.2 + 0.8 / 3))
    assert scores[1] == 0.0 and scores[2] == 0.0


def test_hit_at_counts_ties_against_gold() -> None:
    s = np.array([0.0, 0.0, 0.0, 5.0])
    assert hit_at(s, 3, 1)
    assert not hit_at(s, 0, 2)  # tied with two others: rank 4
    assert hit_at(s, 0, 4)


def test_seal_bad_input(corpus: tuple[list[str], FMIndex]) -> None:
    _, fm = corpus
    model = _model(0)
    with pytest.raises(InputError, match="prompt is empty"):
        ngram_beam(model, [], fm=fm)
    with pytest.raises(ConfigError, match="beams"):
        ngram_beam(model, [BOS], fm=fm, beams=0)
    with pytest.raises(InputError, match="vocabulary"):
        ngram_beam(model, [BOS, 9999], fm=fm)
    with pytest.raises(ConfigError, match="alpha"):
        ngram_weight(0.0, 1, 10, alpha=0)
    with pytest.raises(ConfigError, match="beta"):
        intersective_scores(fm, [], beta=2)
    with pytest.raises(InputError, match="gold"):
        hit_at(np.zeros(3), 5, 1)
    with pytest.raises(ConfigError, match="max_docs"):
        stdlib_docstrings(0)
    with pytest.raises(InputError, match="fewer than 2 words"):
        make_query("one", np.random.default_rng(0))
    with pytest.raises(InputError, match="str"):
        encode(b"bytes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_recipe_seal_beats_unconstrained(tmp_path: object) -> None:
    """The recipe at its demo setting (seed 0): SEAL's hit@10 beats unconstrained
    generation + lookup, and every SEAL n-gram is in the corpus (~3 min on a loaded CPU)."""
    from pathlib import Path

    from ar_text.recipes.seal import recipe

    result = recipe.run(recipe.demo_config(), Path(str(tmp_path)), lambda _: None)
    m = result.metrics
    assert m["seal_ngrams_in_corpus"] == 1.0
    assert m["seal_hit10"] > m["free_hit10"]
