"""generate(): cached decoding equals recomputation from scratch; EOS, padding, streaming."""

from __future__ import annotations

import pytest
import torch

from ar_core import registry
from ar_core.errors import InputError, UnknownNameError
from ar_core.generation import GenerationConfig, GenerationResult, generate
from ar_core.model import Transformer, TransformerConfig


def _model(**kw: object) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig.from_name("tiny", **kw)).eval()


def _greedy_reference(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Recompute the whole sequence without a cache at every step."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("n_kv_heads", [1, 4])
def test_greedy_ragged_equals_uncached(backend: str, n_kv_heads: int) -> None:
    model = _model(attention_backend=backend, n_kv_heads=n_kv_heads)
    lengths = [7, 2, 5]
    x = torch.randint(0, 256, (3, 7), generator=torch.Generator().manual_seed(1))
    out = generate(model, x, GenerationConfig(max_new_tokens=12), prompt_lengths=lengths)
    assert out.sequences.shape == (3, 7 + 12)
    for b, n in enumerate(lengths):
        ref = _greedy_reference(model, x[b, :n].tolist(), 12)
        assert out.sequences[b, : n + 12].tolist() == ref
        assert (out.sequences[b, n + 12 :] == 0).all()
    assert out.stats.target_forward_passes == 12
    assert out.stats.accepted_lengths == [1] * 12


def test_first_step_logits_match_uncached() -> None:
    model = _model()
    x = torch.randint(0, 256, (2, 6))
    seen: list[torch.Tensor] = []

    def pick(logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        seen.append(logits.clone())
        return logits.argmax(-1)

    from ar_core.generation import _run

    _run(model, x, GenerationConfig(max_new_tokens=4), torch.tensor([6, 6]), None, pick, False)
    with torch.no_grad():
        seq = x
        for step_logits in seen:
            ref = model(seq).logits[:, -1]
            torch.testing.assert_close(step_logits, ref, atol=1e-5, rtol=1e-5)
            seq = torch.cat([seq, ref.argmax(-1, keepdim=True)], 1)


def test_attention_mask_equals_prompt_lengths_and_left_padding_is_refused() -> None:
    model = _model()
    x = torch.randint(0, 256, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    cfg = GenerationConfig(max_new_tokens=3)
    a = generate(model, x, cfg, attention_mask=mask)
    b = generate(model, x, cfg, prompt_lengths=[5, 2])
    assert torch.equal(a.sequences, b.sequences)
    with pytest.raises(InputError, match="row 1 is not right-padded"):
        generate(model, x, cfg, attention_mask=torch.tensor([[1] * 5, [0, 0, 1, 1, 1]]))


class _Recorder:
    def __init__(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.ended = False

    def put(self, tokens: torch.Tensor) -> None:
        self.chunks.append(tokens.clone())

    def end(self) -> None:
        self.ended = True


def test_eos_per_row_then_pad_and_streamer_order() -> None:
    model = _model()
    x = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(3))
    free = generate(model, x, GenerationConfig(max_new_tokens=8))
    eos = int(free.sequences[0, 4 + 2])  # row 0 emits it at step 2
    streamer = _Recorder()
    cfg = GenerationConfig(max_new_tokens=8, eos_token_id=eos, pad_token_id=255)
    out = generate(model, x, cfg, streamer=streamer)
    new = out.sequences[:, 4:]
    assert new.shape == (2, 8)  # max_new_tokens exact
    stop = new[0].tolist().index(eos)
    assert stop <= 2
    assert new[0, : stop + 1].tolist() == free.sequences[0, 4 : 4 + stop + 1].tolist()
    assert (new[0, stop + 1 :] == 255).all()
    assert streamer.ended
    streamed = torch.cat(streamer.chunks, 1)
    assert torch.equal(streamed, new[:, : streamed.shape[1]])
    if eos not in new[1].tolist():
        assert new[1].tolist() == free.sequences[1, 4:].tolist()


def test_sample_seeded_reproducible_and_temperature_zero_is_greedy() -> None:
    model = _model()
    x = torch.randint(0, 256, (2, 3))
    cfg = GenerationConfig(max_new_tokens=10, seed=123, top_k=20, top_p=0.9)
    a = generate(model, x, cfg, strategy="sample")
    b = generate(model, x, cfg, strategy="sample")
    assert torch.equal(a.sequences, b.sequences)
    c = generate(model, x, cfg.model_copy(update={"seed": 124}), strategy="sample")
    assert not torch.equal(a.sequences, c.sequences)
    greedy = generate(model, x, GenerationConfig(max_new_tokens=10))
    cold = generate(model, x, GenerationConfig(max_new_tokens=10, temperature=0), strategy="sample")
    assert torch.equal(greedy.sequences, cold.sequences)


def test_strategies_are_registered_and_results_typed() -> None:
    assert {"greedy", "sample"} <= set(registry.strategies.names())
    model = _model()
    out = generate(model, torch.zeros(1, 2, dtype=torch.long), GenerationConfig(max_new_tokens=0))
    assert isinstance(out, GenerationResult) and out.sequences.tolist() == [[0, 0]]
    with pytest.raises(UnknownNameError, match="unknown strategy 'no-such'.*greedy"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), strategy="no-such")


def test_too_long_is_refused_with_numbers() -> None:
    model = _model()
    with pytest.raises(InputError, match=r"prompt length 500 \+ max_new_tokens 20.*512"):
        generate(model, torch.zeros(1, 500, dtype=torch.long), GenerationConfig(max_new_tokens=20))


def test_compiled_decode_equals_eager() -> None:
    model = _model()
    x = torch.randint(0, 256, (1, 5))
    cfg = GenerationConfig(max_new_tokens=6)
    eager = generate(model, x, cfg)
    compiled = generate(model, x, cfg, compile=True)
    assert torch.equal(eager.sequences, compiled.sequences)


def test_fused_compiled_greedy_equals_eager_with_eos_ragged_and_stream() -> None:
    """The compiled greedy step that picks and commits inside the graph gives eager's
    sequences, counters and stream on a ragged batch whose rows stop at an EOS; a second
    call reuses the compiled step (one entry per model, batch, device and kind)."""
    from ar_core.generation import _COMPILED

    model = _model()
    x = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(3))
    lengths = [6, 3]
    probe = generate(model, x, GenerationConfig(max_new_tokens=10), prompt_lengths=lengths)
    eos = int(probe.sequences[1, 3 + 4])  # row 1's 5th new token: it stops there
    cfg = GenerationConfig(max_new_tokens=10, eos_token_id=eos, pad_token_id=1)

    class Recorder:
        def __init__(self) -> None:
            self.parts: list[torch.Tensor] = []

        def put(self, tokens: torch.Tensor) -> None:
            self.parts.append(tokens.clone())

        def end(self) -> None:
            pass

    runs = []
    for compile in (False, True, True):
        rec = Recorder()
        out = generate(model, x, cfg, prompt_lengths=lengths, compile=compile, streamer=rec)
        runs.append((out, torch.cat(rec.parts, 1)))
    (eager, s0), (fused, s1), (again, s2) = runs
    assert torch.equal(eager.sequences, fused.sequences)
    assert torch.equal(fused.sequences, again.sequences)
    assert torch.equal(s0, s1) and torch.equal(s1, s2)
    assert fused.stats.tokens_generated == eager.stats.tokens_generated
    assert fused.stats.target_forward_passes == eager.stats.target_forward_passes
    assert fused.stats.accepted_lengths == eager.stats.accepted_lengths
    assert (fused.sequences[1, 3 + 5 :] == 1).all()  # padded after its EOS
    assert list(_COMPILED[model]) == [(2, "cpu", True, 256)]  # 256 slots for 16 positions


def test_pass_width_pads_to_a_few_widths() -> None:
    from ar_core.generation import pass_width

    assert [pass_width(n) for n in range(1, 11)] == [1, 2, 3, 5, 5, 9, 9, 9, 9, 17]
    # a strategy's own widths: the smallest that holds n, past them the buckets
    assert [pass_width(n, (5,)) for n in (1, 2, 5, 6)] == [5, 5, 5, 9]
    assert [pass_width(n, (1, 11)) for n in (1, 2, 11)] == [1, 11, 11]  # prompt lookup's
    assert [pass_width(n, (11, 4)) for n in (3, 4, 7, 11, 12)] == [4, 4, 11, 11, 17]


def test_model_pass_compiled_equals_eager_and_leaves_entries_pending() -> None:
    from ar_core.generation import ModelPass
    from ar_core.quant import prepack

    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=64)
    model = prepack(Transformer(cfg).eval())  # multi-row linears: the opaque oneDNN op
    x = torch.randint(0, 50, (2, 20))
    lengths = torch.tensor([9, 6])
    eager, compiled = ModelPass(model), ModelPass(model, compile=True)
    assert compiled.compile and not ModelPass(model.layers, compile=True).compile
    # one function, a graph per (model, width, ...): dynamo's limit of 8 is raised
    assert torch._dynamo.config.recompile_limit >= 64
    with torch.no_grad():
        caches = [model.new_cache(2, max_len=32) for _ in range(2)]
        for cache in caches:
            model(x[:, :9], cache=cache)
            cache.crop(lengths)
        new = torch.stack([x[0, 9:13], x[1, 6:10]])  # 4 tokens: padded to 5 when compiled
        want, got = eager(new, caches[0]), compiled(new, caches[1])
        assert got.shape == want.shape == (2, 4, 50)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert caches[1].lengths.tolist() == [9, 6]  # pending, not committed
        for cache in caches:
            cache.commit(torch.tensor([4, 2]))  # row 1 keeps 2 of its 4
        after = torch.stack([x[0, 13:14], x[1, 8:9]])
        torch.testing.assert_close(
            compiled(after, caches[1]), eager(after, caches[0]), atol=1e-5, rtol=1e-5
        )
        # no room for the padding: the pass runs eagerly, same result
        tight = model.new_cache(1, max_len=13)
        model(x[:1, :9], cache=tight)
        torch.testing.assert_close(
            compiled(x[:1, 9:13], tight), model(x[:1, :13]).logits[:, 9:13], atol=1e-5, rtol=1e-5
        )
        with pytest.raises(InputError, match="vocab"):
            compiled(torch.full((2, 3), 50), caches[1])


def test_model_pass_with_a_table_and_positions_compiled_equals_the_masked_forward() -> None:
    # a lookahead-style pass: a (T, T) visibility table for the new slots and explicit
    # RoPE positions; compiled (padded to 7: the padding sees itself only) equals the
    # eager forward under masks.table, on ragged rows, for two different tables through
    # the same graph, and every slot's output depends only on what its table row allows
    from ar_core import masks
    from ar_core.generation import ModelPass
    from ar_core.quant import prepack

    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=64)
    model = prepack(Transformer(cfg).eval())
    x = torch.randint(0, 50, (2, 20))
    T = 5
    new = torch.randint(0, 50, (2, T))
    rel = torch.tensor([0, 1, 2, 1, 2])  # two branches after slot 0, like lookahead's
    tables = [
        torch.tensor(
            [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 1, 0], [1, 0, 0, 1, 1]],
            dtype=torch.bool,
        ),
        torch.tril(torch.ones(T, T, dtype=torch.bool)),
    ]
    compiled = ModelPass(model, compile=True, widths=(7,))
    with torch.no_grad():
        cache = model.new_cache(2, max_len=32)
        model(x[:, :9], cache=cache)
        cache.crop(torch.tensor([9, 6]))
        P = cache.lengths.clone()
        for table in tables:
            spec = masks.table(table, start=P)
            want = model(new, positions=P[:, None] + rel, cache=cache, mask=spec, commit=False)
            got = compiled(new, cache, positions=P[:, None] + rel, table=table)
            torch.testing.assert_close(got, want.logits, atol=1e-5, rtol=1e-5)
        # branch 2 (slots 3, 4) never sees branch 1: its outputs equal a pass without it
        short = compiled(new[:, [0, 3, 4]], cache, positions=P[:, None] + rel[[0, 3, 4]])
        branch = compiled(new, cache, positions=P[:, None] + rel, table=tables[0])
        torch.testing.assert_close(branch[:, [0, 3, 4]], short, atol=1e-5, rtol=1e-5)
        assert cache.lengths.tolist() == [9, 6]  # pending, not committed
        with pytest.raises(InputError, match=r"\(5, 5\) bool"):
            compiled(new, cache, table=torch.ones(4, 4, dtype=torch.bool))
