"""Byte and BPE tokenizers: exact round trips, special tokens, errors, save / load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ar_core import registry
from ar_core.errors import ConfigError, InputError
from ar_text.tokenizers import (
    BPE_FILE,
    META_FILE,
    BPETokenizer,
    ByteTokenizer,
    load_tokenizer,
)

CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i, i * i)  # squares\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
] * 20


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(CODE, vocab_size=300)


# -- bytes -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_round_trip_any_string(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))  # the reference: Python's own UTF-8
    assert tok.decode(ids) == text


def test_byte_round_trip_lone_surrogate() -> None:
    tok = ByteTokenizer()
    text = "a\ud800b"
    assert tok.decode(tok.encode(text)) == text


def test_byte_special_tokens() -> None:
    tok = ByteTokenizer(["<s>", "</s>"])
    assert tok.vocab_size == 258
    assert tok.token_id("<s>") == 256 and tok.token_id("</s>") == 257
    ids = [256, *tok.encode("hé"), 257]
    assert tok.decode(ids) == "hé"
    assert tok.decode(ids, skip_special=False) == "<s>hé</s>"
    with pytest.raises(InputError, match="not a special token"):
        tok.token_id("<pad>")


def test_byte_decode_invalid_utf8_is_replaced() -> None:
    assert ByteTokenizer().decode([104, 0xFF, 105]) == "h\ufffdi"


@pytest.mark.parametrize("bad", [-1, 259, 10_000])
def test_byte_ids_out_of_range(bad: int) -> None:
    with pytest.raises(InputError, match="out of range"):
        ByteTokenizer().decode([1, bad])


def test_duplicate_special_tokens_rejected() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        ByteTokenizer(["<s>", "<s>"])


# -- BPE -----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_bpe_round_trip_any_string(bpe: BPETokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    ["def f(x):\n    return x ** 2\n", "s = 'naïve café 🎉 日本語'\n", "\t\t  \n\n", ""],
)
def test_bpe_round_trip_code(bpe: BPETokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges(bpe: BPETokenizer) -> None:
    assert bpe.vocab_size == 300
    text = CODE[0]
    assert len(bpe.encode(text)) < 0.75 * len(text.encode("utf-8"))  # trained text compresses
    assert bpe.token_id("<|bos|>") == 0  # special tokens take the first ids


def test_bpe_train_from_files(tmp_path: Path) -> None:
    path = tmp_path / "code.py"
    path.write_text("".join(CODE))
    tok = BPETokenizer.train(files=[path], vocab_size=280)
    assert tok.decode(tok.encode(CODE[1])) == CODE[1]
    assert len(tok.encode(CODE[1])) < len(CODE[1])


def test_bpe_vocab_too_small() -> None:
    with pytest.raises(ConfigError, match="too small"):
        BPETokenizer.train(CODE, vocab_size=258)


def test_bpe_ids_out_of_range(bpe: BPETokenizer) -> None:
    with pytest.raises(InputError, match="out of range"):
        bpe.decode([5, 300])


# -- save / load ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_save_load_round_trip(kind: str, bpe: BPETokenizer, tmp_path: Path) -> None:
    tok = ByteTokenizer() if kind == "byte" else bpe
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(tok)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.special_tokens == tok.special_tokens
    for text in [*CODE[:4], "ünïcode 🎉"]:
        assert loaded.encode(text) == tok.encode(text)
    assert not [p.name for p in (tmp_path / "tok").iterdir() if p.name.endswith(".tmp")]


def test_load_corrupted_meta(tmp_path: Path) -> None:
    ByteTokenizer().save(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="corrupted"):
        load_tokenizer(tmp_path)


def test_load_unknown_kind(tmp_path: Path) -> None:
    (tmp_path / META_FILE).write_text(json.dumps({"kind": "sentencepiece"}))
    with pytest.raises(ConfigError, match="unknown tokenizer kind"):
        load_tokenizer(tmp_path)


def test_load_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no"):
        load_tokenizer(tmp_path / "nothing")


def test_load_corrupted_bpe(bpe: BPETokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    (tmp_path / BPE_FILE).write_text('{"model": 3}')
    with pytest.raises(ConfigError, match="corrupted"):
        load_tokenizer(tmp_path)
    (tmp_path / BPE_FILE).unlink()
    with pytest.raises(ConfigError, match="holds no"):
        load_tokenizer(tmp_path)


def test_registered() -> None:
    assert registry.tokenizers.get("byte") is ByteTokenizer
    assert registry.tokenizers.get("bpe") is BPETokenizer
    assert registry.tokenizers.provider("byte") == "text"


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_text_spelling_a_special_token_stays_text(kind: str, bpe: BPETokenizer) -> None:
    tok = ByteTokenizer() if kind == "byte" else bpe
    ids = tok.encode("<|bos|>x")
    assert tok.token_id("<|bos|>") not in ids
    assert tok.decode(ids) == "<|bos|>x"


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_token_bytes_count_the_text(kind: str, bpe: BPETokenizer) -> None:
    tok = ByteTokenizer() if kind == "byte" else bpe
    sizes = tok.token_bytes()
    assert len(sizes) == tok.vocab_size
    assert sizes[tok.token_id("<|bos|>")] == 0
    for text in [*CODE[:4], "ünïcode 🎉 日本語"]:
        assert sum(sizes[i] for i in tok.encode(text)) == len(text.encode("utf-8"))
