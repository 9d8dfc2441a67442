"""Text tokenizers: raw UTF-8 bytes and byte-level BPE, saved to and loaded from a folder.

* :class:`ByteTokenizer` – one id per UTF-8 byte (0..255), special tokens from 256 on.
  No training, no unknown token, an exact round trip for every string.
* :class:`BPETokenizer` – byte-level byte-pair encoding (Sennrich et al. 2016, "Neural
  Machine Translation of Rare Words with Subword Units", arXiv:1508.07909; byte-level as in
  GPT-2, Radford et al. 2019) trained with the Hugging Face ``tokenizers`` library. Its
  base alphabet is the 256 bytes, so it also round-trips every string.

A tokenizer folder holds ``ar_tokenizer.json`` (``{"kind": "byte" | "bpe", ...}``) and, for
BPE, the ``tokenizers`` file ``bpe.json``; :func:`load_tokenizer` reads the kind and
dispatches. Every file is written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ar_core.errors import ConfigError, InputError
from ar_core.recipes import atomic_write_text

META_FILE = "ar_tokenizer.json"
BPE_FILE = "bpe.json"
N_BYTES = 256
# names unlikely to occur in real text (a literal occurrence would encode as the special id)
DEFAULT_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")


class Tokenizer(Protocol):
    """What recipes use: ``encode``/``decode``, the vocabulary size, special ids, ``save``."""

    kind: str
    special_tokens: tuple[str, ...]

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str: ...

    def token_id(self, token: str) -> int: ...

    def token_bytes(self) -> list[int]: ...

    def save(self, folder: str | Path) -> Path: ...


def _check_special(special_tokens: Sequence[str]) -> tuple[str, ...]:
    tokens = tuple(special_tokens)
    if any(not isinstance(t, str) or not t for t in tokens):
        raise ConfigError(f"special tokens must be non-empty strings, got {tokens!r}")
    if len(set(tokens)) != len(tokens):
        raise ConfigError(f"special tokens must be distinct, got {tokens!r}")
    return tokens


def _check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    out = [int(i) for i in ids]
    for pos, i in enumerate(out):
        if not 0 <= i < vocab_size:
            raise InputError(
                f"token id {i} at position {pos} is out of range: ids must be in "
                f"[0, {vocab_size}) for this tokenizer's vocab_size={vocab_size}"
            )
    return out


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} holds no {META_FILE}; pass a folder written by save()")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is corrupted ({exc}); save the tokenizer again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("kind"), str):
        raise ConfigError(f"{path} is corrupted (no 'kind' field); save the tokenizer again")
    specials = meta.get("special_tokens", [])
    if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
        raise ConfigError(f"{path} is corrupted (bad 'special_tokens'); save the tokenizer again")
    return meta


# -- bytes ------------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; ``special_tokens`` get the ids 256, 257, ...

    ``encode`` uses ``surrogatepass``, so even strings with lone surrogates round-trip.
    ``decode`` of ids that are not valid UTF-8 (a model's samples) replaces the bad bytes
    with U+FFFD instead of failing.
    """

    kind = "byte"

    def __init__(self, special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS) -> None:
        self.special_tokens = _check_special(special_tokens)
        self._special_ids = {t: N_BYTES + i for i, t in enumerate(self.special_tokens)}

    @property
    def vocab_size(self) -> int:
        return N_BYTES + len(self.special_tokens)

    def token_id(self, token: str) -> int:
        if token not in self._special_ids:
            raise InputError(
                f"{token!r} is not a special token of this tokenizer: {self.special_tokens}"
            )
        return self._special_ids[token]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"encode expects a str, got {type(text).__name__}")
        return list(text.encode("utf-8", errors="surrogatepass"))

    def token_bytes(self) -> list[int]:
        """Bytes of text each id stands for: 1 for a byte, 0 for a special token."""
        return [1] * N_BYTES + [0] * len(self.special_tokens)

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        checked = _check_ids(ids, self.vocab_size)
        parts: list[str] = []
        run: list[int] = []
        for i in checked:
            if i < N_BYTES:
                run.append(i)
                continue
            parts.append(_utf8(run))
            run = []
            if not skip_special:
                parts.append(self.special_tokens[i - N_BYTES])
        parts.append(_utf8(run))
        return "".join(parts)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        meta = {"kind": self.kind, "special_tokens": list(self.special_tokens)}
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ByteTokenizer:
        meta = _read_meta(Path(folder))
        if meta["kind"] != cls.kind:
            raise ConfigError(f"{folder} holds a {meta['kind']!r} tokenizer, not 'byte'")
        return cls(meta.get("special_tokens", []))


def _utf8(run: list[int]) -> str:
    data = bytes(run)
    try:
        return data.decode("utf-8", errors="surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


# -- byte-level BPE ---------------------------------------------------------------------------


class BPETokenizer:
    """Byte-level BPE (a ``tokenizers.Tokenizer``); build one with :meth:`train` or :meth:`load`.

    Special tokens take the first ids (0, 1, ...), then the 256 bytes, then the merges.
    ``encode`` never produces a special id (text that spells one is encoded as bytes).
    """

    kind = "bpe"

    def __init__(self, tokenizer: Any, special_tokens: Sequence[str]) -> None:
        self._tok = tokenizer
        # text that spells a special token ("<|pad|>" in a file) stays text: exact round trip
        self._tok.encode_special_tokens = True
        self.special_tokens = _check_special(special_tokens)
        self._special_ids: dict[str, int] = {}
        for t in self.special_tokens:
            i = tokenizer.token_to_id(t)
            if i is None:
                raise ConfigError(f"special token {t!r} is not in the BPE vocabulary")
            self._special_ids[t] = int(i)

    @classmethod
    def train(
        cls,
        texts: Iterable[str] | None = None,
        *,
        files: Sequence[str | Path] | None = None,
        vocab_size: int = 1024,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        min_frequency: int = 2,  # a merge seen once is noise
    ) -> BPETokenizer:
        """Learn merges from ``texts`` (an iterable of strings) or ``files`` (paths)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        specials = _check_special(special_tokens)
        smallest = N_BYTES + len(specials)
        if vocab_size < smallest:
            raise ConfigError(
                f"vocab_size={vocab_size} is too small for byte-level BPE: it needs at least "
                f"{smallest} (256 bytes + {len(specials)} special tokens)"
            )
        if (texts is None) == (files is None):
            raise ConfigError("BPETokenizer.train needs exactly one of texts or files")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(specials),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        if files is not None:
            paths = [str(p) for p in files]
            missing = [p for p in paths if not Path(p).is_file()]
            if missing:
                raise ConfigError(f"BPE training files not found: {missing[:3]}")
            tok.train(paths, trainer)
        else:
            assert texts is not None
            tok.train_from_iterator(texts, trainer)
        return cls(tok, specials)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str) -> int:
        if token not in self._special_ids:
            raise InputError(
                f"{token!r} is not a special token of this tokenizer: {self.special_tokens}"
            )
        return self._special_ids[token]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"encode expects a str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def token_bytes(self) -> list[int]:
        """Bytes of text each id stands for (0 for a special token)."""
        # byte-level BPE spells each byte as one character of its 256-character alphabet
        specials = set(self._special_ids.values())
        return [
            0 if i in specials else len(self._tok.id_to_token(i)) for i in range(self.vocab_size)
        ]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        checked = _check_ids(ids, self.vocab_size)
        return str(self._tok.decode(checked, skip_special_tokens=skip_special))

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        atomic_write_text(folder / BPE_FILE, self._tok.to_str())
        meta = {"kind": self.kind, "special_tokens": list(self.special_tokens)}
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        folder = Path(folder)
        meta = _read_meta(folder)
        if meta["kind"] != cls.kind:
            raise ConfigError(f"{folder} holds a {meta['kind']!r} tokenizer, not 'bpe'")
        path = folder / BPE_FILE
        if not path.is_file():
            raise ConfigError(f"{folder} holds no {BPE_FILE}; save the tokenizer again")
        try:
            tok = Tokenizer.from_str(path.read_text())
        except Exception as exc:  # the Rust side raises plain Exceptions
            raise ConfigError(f"{path} is corrupted ({exc}); save the tokenizer again") from None
        return cls(tok, meta.get("special_tokens", []))


KINDS: dict[str, type[ByteTokenizer] | type[BPETokenizer]] = {
    "byte": ByteTokenizer,
    "bpe": BPETokenizer,
}


def load_tokenizer(folder: str | Path) -> ByteTokenizer | BPETokenizer:
    """Load a folder written by ``save()``; ``ar_tokenizer.json`` says which kind it holds."""
    kind = _read_meta(Path(folder))["kind"]
    if kind not in KINDS:
        raise ConfigError(
            f"{Path(folder) / META_FILE} names an unknown tokenizer kind {kind!r}; "
            f"known: {', '.join(KINDS)}"
        )
    return KINDS[kind].load(folder)
