"""The text recipes end to end on tiny settings: files written, numbers consistent, samples."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ar_core import registry
from ar_core.errors import ConfigError
from ar_core.model import Transformer, TransformerConfig
from ar_core.recipes import build_config, write_recipe_file
from ar_text.data import pack
from ar_text.recipes._common import encode_docs, held_out_bits_per_byte
from ar_text.recipes.chars import TextCharsConfig
from ar_text.recipes.chars import recipe as text_chars
from ar_text.recipes.code import TextCodeConfig
from ar_text.recipes.code import recipe as text_code
from ar_text.tokenizers import ByteTokenizer, load_tokenizer

TINY = dict(
    seq_len=32,
    steps=40,
    batch_size=8,
    dim=32,
    n_layers=1,
    n_heads=2,
    eval_bytes=3000,
    n_samples=2,
    prompt_chars=16,
    sample_tokens=8,
    progress_bar=False,
)


def test_registered() -> None:
    assert registry.recipes.get("text-code") is text_code
    assert registry.recipes.get("text-chars") is text_chars
    assert text_code.in_demo and not text_chars.in_demo
    from ar_text.recipes import hyperfit, sequencematch, stargraph

    assert registry.recipes.get("text-hyperfit") is hyperfit.recipe
    assert registry.recipes.get("text-stargraph") is stargraph.recipe
    assert registry.recipes.get("text-sequencematch") is sequencematch.recipe


def test_text_code_end_to_end(tmp_path: Path) -> None:
    config = TextCodeConfig(max_bytes=30_000, lr=1e-2, **TINY)  # type: ignore[arg-type]
    write_recipe_file(tmp_path, "text-code", config)
    result = text_code.run(config, tmp_path, lambda _: None)
    assert (tmp_path / "model" / "config.json").is_file()
    tokenizer = load_tokenizer(tmp_path / "tokenizer")
    assert isinstance(tokenizer, ByteTokenizer)
    m = result.metrics
    # byte tokens: every scored target is one byte, so bits/byte = nats/token / ln 2
    assert m["bits_per_byte"] == pytest.approx(m["held_out_loss"] / math.log(2), abs=1e-3)
    assert m["bits_per_byte"] < math.log2(tokenizer.vocab_size) - 1.0  # learned something
    table = dict(result.tables[0].rows)  # the report shows the metrics it returns
    assert table["sampling tokens / s"] == m["tokens_per_s"]
    assert table["held-out bits per byte"] == m["bits_per_byte"]
    assert len(result.samples) == 2 and all("\u2502" in s for s in result.samples)
    assert result.curves["train loss"][0][1] > result.curves["train loss"][-1][1]

    sampled = text_code.sample(tmp_path, 3, lambda _: None)
    assert len(sampled.samples) == 3


def test_untrained_model_scores_uniform_bits(tmp_path: Path) -> None:
    """The reference point: a model with zero logits scores exactly log2(V) bits per byte."""
    tok = ByteTokenizer()
    net = Transformer(TransformerConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2))
    torch.nn.init.zeros_(net.output.weight)
    packed = pack(encode_docs(tok, ["hello world\n" * 20, "x = 1\n"]), 16)
    loss, bpb, scored = held_out_bits_per_byte(net, packed, tok.token_bytes(), 4)
    assert loss == pytest.approx(math.log(tok.vocab_size), rel=1e-5)
    assert bpb == pytest.approx(math.log2(tok.vocab_size), rel=1e-5)
    real_targets = (packed.doc_ids[:, 1:] == packed.doc_ids[:, :-1]) & (packed.doc_ids[:, 1:] >= 0)
    assert scored == int(real_targets.sum())


def test_text_chars_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "poem.txt"
    path.write_text("the quick brown fox jumps over the lazy dog.\n" * 200)
    config = build_config(TextCharsConfig, text_chars.demo_config(), {**TINY, "path": str(path)})
    out = tmp_path / "run"
    write_recipe_file(out, "text-chars", config)
    result = text_chars.run(config, out, lambda _: None)
    assert result.metrics["bits_per_byte"] < 6.0
    sampled = text_chars.sample(out, 2, lambda _: None)
    assert len(sampled.samples) == 2


def test_text_chars_needs_a_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="path=FILE"):
        text_chars.run(TextCharsConfig(**TINY), tmp_path, lambda _: None)  # type: ignore[arg-type]


def test_bpe_tokenizer_option(tmp_path: Path) -> None:
    config = TextCodeConfig(
        max_bytes=20_000,
        tokenizer="bpe",
        bpe_vocab_size=300,
        **{**TINY, "steps": 5, "n_samples": 1},  # type: ignore[arg-type]
    )
    result = text_code.run(config, tmp_path, lambda _: None)
    # a BPE token covers more than one byte on average, so bits per byte fall below the
    # loss in bits per token (with byte tokens the two are equal, test_text_code_end_to_end)
    m = result.metrics
    assert m["bits_per_byte"] < 0.9 * m["held_out_loss"] / math.log(2)
    assert load_tokenizer(tmp_path / "tokenizer").vocab_size == 300


def test_sample_tokens_must_fit_the_context() -> None:
    with pytest.raises(ConfigError, match="sample_tokens"):
        build_config(TextCodeConfig, None, {"seq_len": 64, "sample_tokens": 63})


def test_long_prompts_are_cut_to_fit(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("abc def ghi\n" * 300)
    config = TextCharsConfig(  # type: ignore[arg-type]
        path=path, **{**TINY, "steps": 2, "prompt_chars": 200, "sample_tokens": 30}
    )
    result = text_chars.run(config, tmp_path / "run", lambda _: None)
    # 200-character prompts cannot fit 32 - 30 tokens: the model reads their last tokens,
    # the sample still shows the whole prompt, then the bar and the continuation
    assert len(result.samples) == 2
    assert all(s.index("\u2502") == 200 for s in result.samples), result.samples
