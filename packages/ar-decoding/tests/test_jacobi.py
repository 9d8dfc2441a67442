"""Jacobi and lookahead decoding equal greedy exactly (ragged batches, EOS, streaming) and
take fewer target forwards than tokens on repetitive text."""

from __future__ import annotations

import pytest
import torch
from helpers import Recorder, copy_model, new_tokens, tiny

from ar_core import generate
from ar_core.errors import ConfigError, InputError
from ar_core.generation import GenerationConfig
from ar_decoding.lookahead import ContextPool, lookahead_local_mask, lookahead_positions

STRATEGIES = [
    ("jacobi", {"window": 4}),
    ("jacobi", {"window": 1}),
    ("lookahead", {"window": 4, "ngram": 3, "pool_size": 3, "context": 0}),
    ("lookahead", {"window": 3, "ngram": 2, "pool_size": 1, "context": 0}),
    ("lookahead", {}),  # the defaults: context n-grams on
    ("lookahead", {"window": 3, "ngram": 4, "pool_size": 3, "context": 2, "candidate_len": 5}),
    ("lookahead", {"window": 2, "ngram": 4, "pool_size": 2, "candidate_len": 1}),
    ("lookahead", {"window": 0, "pool_size": 3, "candidate_len": 4}),  # context lookup only
    ("lookahead", {"window": 2, "ngram": 3, "pool_size": 2, "copy_len": 6, "context": 2}),
]


@pytest.mark.parametrize(("strategy", "kw"), STRATEGIES)
def test_ragged_batch_with_eos_equals_greedy(strategy: str, kw: dict) -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(1))
    lengths = [6, 2, 4]
    N = 16
    greedy = generate(model, x, GenerationConfig(max_new_tokens=N), prompt_lengths=lengths)
    eos = int(greedy.sequences[1, 2 + 5])  # row 1 stops after 6 new tokens
    cfg = GenerationConfig(max_new_tokens=N, eos_token_id=eos)
    rec = Recorder()
    out = generate(model, x, cfg, strategy=strategy, prompt_lengths=lengths, streamer=rec, **kw)
    ref = generate(model, x, cfg, prompt_lengths=lengths)
    assert torch.equal(out.sequences, ref.sequences)
    assert rec.ended
    assert torch.equal(rec.tokens(), new_tokens(out.sequences, lengths, N))
    assert not any(c.is_inference() for c in rec.chunks)  # usable outside inference_mode
    assert out.stats.tokens_generated == ref.stats.tokens_generated


@pytest.mark.parametrize(("strategy", "kw"), STRATEGIES[:1] + STRATEGIES[2:3] + STRATEGIES[4:5])
def test_repetitive_text_takes_fewer_forwards_than_tokens(strategy: str, kw: dict) -> None:
    model = copy_model(vocab=8, lag=5)
    x = torch.tensor([[1, 2, 3, 4, 5, 1, 2], [6, 2, 7, 3, 0, 6, 6]])
    cfg = GenerationConfig(max_new_tokens=24)
    ref = generate(model, x, cfg)
    out = generate(model, x, cfg, strategy=strategy, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert ref.stats.target_forward_passes == 24
    # tokens per forward > 1.5 proves guesses / pooled n-grams were accepted
    assert out.stats.target_forward_passes * 1.5 < out.stats.tokens_generated / 2
    assert max(out.stats.accepted_lengths) > 1


def test_lookahead_mask_is_causal_per_branch() -> None:
    vis = lookahead_local_mask(window=3, ngram=3, candidates=2)  # (1 + 2*(3+2)) = 11 slots
    assert vis.shape == (11, 11)
    # level 1, column 2 (slot 1 + 3 + 2 = 6) sees last, level 0 columns 0..2, itself
    assert vis[6].nonzero().flatten().tolist() == [0, 1, 2, 3, 6]
    # candidate 1 (slots 9, 10) sees last and its own earlier token only
    assert vis[10].nonzero().flatten().tolist() == [0, 9, 10]
    assert not vis.triu(1).any()  # every slot sees only earlier slots: a DAG in slot order


def test_repetitive_text_with_ties_equals_greedy_argmax() -> None:
    """A model whose output head is zero: every logit ties, greedy picks token 0 (argmax's
    first index) and so must lookahead, whose candidates (the prompt's n-grams) are not 0."""
    model = tiny(16, dim=32, ffn_hidden=64)
    with torch.no_grad():
        model.output.weight.zero_()
    x = torch.tensor([[3, 4, 5, 3, 4, 5, 3, 4], [0, 0, 7, 0, 0, 7, 0, 0]])
    cfg = GenerationConfig(max_new_tokens=10)
    out = generate(model, x, cfg, strategy="lookahead")
    assert torch.equal(out.sequences, generate(model, x, cfg).sequences)
    assert out.sequences[:, 8:].eq(0).all()


def test_context_pool_proposes_the_prompts_ngrams() -> None:
    """Candidates come from the row's own text: the longest seen suffix first, the most
    recent continuation first, distinct; tokens added later are indexed too."""
    pool = ContextPool([[1, 2, 3, 9, 2, 3, 4, 1, 2, 3]], key=2, length=2, capacity=4)
    # suffix (2, 3) was followed by (9, 2) and (4, 1) (most recent first); then suffix (3,)
    # adds nothing new
    assert pool.lookup(0, 4) == [(4, 1), (9, 2)]
    pool.extend(0, [5, 6])  # suffixes (5, 6) and (6,) never seen before: nothing
    assert pool.lookup(0, 4) == []
    pool.extend(0, [2, 3])  # (2, 3) was last followed by (5, 6)
    assert pool.lookup(0, 2) == [(5, 6), (4, 1)]
    assert pool.lookup(0, 4) == [(5, 6), (4, 1), (9, 2)]
    pool.extend(0, [8, 1])  # (8, 1) unseen: the one-token key (1,) -> (2, 3)
    assert pool.lookup(0, 4) == [(2, 3)]
    # a continuation that runs into the end of the text repeats the text since its start
    loop = ContextPool([[5, 1, 2, 3, 1, 2]], key=2, length=4, capacity=2)
    assert loop.lookup(0, 1) == [(3, 1, 2, 3)]
    two = ContextPool([[1, 2], [7, 7, 7]], key=3, length=3, capacity=1)
    assert two.lookup(0, 2) == []  # neither (1, 2) nor (2,) was followed by anything yet
    assert two.lookup(1, 2) == [(7, 7, 7)]


@pytest.mark.parametrize(("context", "copy_len", "first"), [(3, None, 5), (3, 8, 9), (0, 8, 1)])
def test_first_step_verifies_the_prompts_ngrams(context: int, copy_len: int, first: int) -> None:
    """On a prompt with period 5 the copy model continues the period: with context
    n-grams the very first lookahead step accepts a whole candidate copied from the prompt
    (``candidate_len`` 4 tokens, or ``copy_len`` 8 since the last 3 tokens occurred before),
    plus the next token; without them (Fu et al.'s pool starts empty) it accepts nothing."""
    model = copy_model(vocab=8, lag=5)
    x = torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], [6, 2, 7, 3, 0, 6, 2, 7, 3, 0, 6, 2]])
    cfg = GenerationConfig(max_new_tokens=20)
    kw = dict(window=2, ngram=3, pool_size=2, candidate_len=4, context=context, copy_len=copy_len)
    out = generate(model, x, cfg, strategy="lookahead", prompt_lengths=[12, 10], **kw)
    assert torch.equal(out.sequences, generate(model, x, cfg, prompt_lengths=[12, 10]).sequences)
    first_step = out.stats.accepted_lengths[2:4]  # [prefill row 0, row 1, step 1 row 0, row 1]
    assert first_step == [first, first]


def test_long_copy_in_one_row_short_candidates_in_the_other() -> None:
    """Row 0's last 3 tokens occurred before (a copy of 8 is verified), row 1's did not: it
    rides in the same long layout with its 4-token candidate (padded, not accepted past 4)."""
    model = copy_model(vocab=8, lag=5)
    x = torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], [6, 2, 7, 3, 0, 5, 1, 4, 0, 0, 0, 0]])
    cfg = GenerationConfig(max_new_tokens=20)
    kw = dict(window=1, ngram=3, pool_size=2, candidate_len=4, copy_len=8)
    out = generate(model, x, cfg, strategy="lookahead", prompt_lengths=[12, 8], **kw)
    assert torch.equal(out.sequences, generate(model, x, cfg, prompt_lengths=[12, 8]).sequences)
    assert out.stats.accepted_lengths[2:4] == [9, 5]


def test_block_layout_with_longer_candidates() -> None:
    vis = lookahead_local_mask(window=2, ngram=3, candidates=2, candidate_len=3)
    assert vis.shape == (1 + 2 * 2 + 2 * 3,) * 2
    assert vis[10].nonzero().flatten().tolist() == [0, 8, 9, 10]  # candidate 1, token 2
    pos = lookahead_positions(window=2, ngram=3, candidates=2, candidate_len=3)
    assert pos.tolist() == [0, 1, 2, 2, 3, 1, 2, 3, 1, 2, 3]
    assert lookahead_local_mask(window=0, ngram=3, candidates=1).shape == (3, 3)
    # per-candidate lengths: a long copy first, then a short candidate
    vis = lookahead_local_mask(window=1, ngram=2, candidates=2, candidate_len=[3, 1])
    assert vis.shape == (6, 6)
    assert vis[4].nonzero().flatten().tolist() == [0, 2, 3, 4]
    assert vis[5].nonzero().flatten().tolist() == [0, 5]
    pos = lookahead_positions(window=1, ngram=2, candidates=2, candidate_len=[3, 1])
    assert pos.tolist() == [0, 1, 1, 2, 3, 1]


def test_bad_kwargs_and_unsupported_config() -> None:
    model = tiny(32, dim=32, ffn_hidden=64)
    x = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="window"):
        generate(model, x, GenerationConfig(max_new_tokens=2), strategy="jacobi", window=0)
    with pytest.raises(ConfigError, match="ngram"):
        generate(model, x, GenerationConfig(max_new_tokens=2), strategy="lookahead", ngram=1)
    with pytest.raises(ConfigError, match="context"):
        generate(model, x, GenerationConfig(max_new_tokens=2), strategy="lookahead", context=-1)
    with pytest.raises(ConfigError, match="candidate_len"):
        generate(
            model, x, GenerationConfig(max_new_tokens=2), strategy="lookahead", candidate_len=0
        )
    with pytest.raises(ConfigError, match="repetition_penalty"):
        generate(
            model, x, GenerationConfig(max_new_tokens=2, repetition_penalty=1.2), strategy="jacobi"
        )
    with pytest.raises(InputError, match="lower window"):
        generate(model, x, GenerationConfig(max_new_tokens=100), strategy="jacobi", window=64)


def test_compiled_lookahead_equals_greedy_with_its_mask_table_as_input(monkeypatch) -> None:
    """compile=True: each lookahead step is one compiled pass whose mask table is a graph
    input (the table changes from step to step, the graph does not): ragged rows with EOS
    on a prepacked model, and the copy model, whose steps accept whole copied candidates
    (so the table's candidate slots, not only slot 0, carry the accepted tokens)."""
    from ar_core import generation
    from ar_core.quant import prepack

    kw = dict(window=1, ngram=2, pool_size=2, candidate_len=3, copy_len=None, compile=True)
    generation.ModelPass(tiny(), compile=True)  # builds the compiled pass if not yet built
    calls: list[tuple[int, bool]] = []  # (width, a table was passed) of every compiled call
    compiled = generation._COMPILED_PASS[0]

    def record(m, t, c, positions=None, table=None):  # type: ignore[no-untyped-def]
        calls.append((t.shape[1], table is not None))
        return compiled(m, t, c, positions, table)

    monkeypatch.setattr(generation, "_COMPILED_PASS", [record])
    model = prepack(tiny(32, dim=32, ffn_hidden=64))
    x = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(1))
    lengths = [6, 2, 4]
    greedy = generate(model, x, GenerationConfig(max_new_tokens=16), prompt_lengths=lengths)
    cfg = GenerationConfig(max_new_tokens=16, eos_token_id=int(greedy.sequences[1, 2 + 5]))
    out = generate(model, x, cfg, strategy="lookahead", prompt_lengths=lengths, **kw)
    assert torch.equal(out.sequences, generate(model, x, cfg, prompt_lengths=lengths).sequences)
    # block sizes 1 + 1 + 3 (one candidate) and 1 + 1 + 6 (two): never padded further
    assert calls and {w for w, _ in calls} <= {5, 8} and all(t for _, t in calls)

    copy = copy_model(vocab=8, lag=5)
    xc = torch.tensor([[1, 2, 3, 4, 5, 1, 2], [6, 2, 7, 3, 0, 6, 6]])
    cfg = GenerationConfig(max_new_tokens=24)
    out = generate(copy, xc, cfg, strategy="lookahead", **kw)
    assert torch.equal(out.sequences, generate(copy, xc, cfg).sequences)
    assert max(out.stats.accepted_lengths) == 4  # a whole 3-token candidate + the next token
