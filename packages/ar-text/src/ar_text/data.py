"""Text corpora and document packing for causal language-model training.

Corpora (lists of documents, each a string), all deterministic:

* :func:`file_corpus` – one text file; the last ``held_out_fraction`` of it is held out.
* :func:`folder_corpus` – every file matching a glob under a folder, in sorted order.
* :func:`stdlib_corpus` – the Python standard library's own ``*.py`` sources, the data
  that is on every machine; capped at ``max_bytes`` and split into train / held-out *by
  file* with a hash of each file's relative path (the split does not move when the cap
  or the Python version changes which other files exist).

Packing (as in T5 / GPT-style pre-training, made exact with a document mask): documents
are concatenated and cut into rows of ``seq_len`` tokens; :class:`Packed` also carries each
token's document id and its position within its document segment. With
``ar_core.masks.document(doc_ids)`` and these positions, a token attends only to earlier
tokens of its own document, so a packed forward equals the per-document forwards, and
:func:`packed_lm_loss` ignores every target that crosses a document boundary.

Notation: N rows, T = seq_len, B batch rows, V vocabulary.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core import masks
from ar_core.errors import ConfigError, InputError

PAD_DOC = -1  # document id of padding at the end of the last row


@dataclass
class Corpus:
    """Documents to train on and documents held out (with the names they came from)."""

    train: list[str]
    held_out: list[str]
    train_names: list[str]
    held_out_names: list[str]

    @property
    def train_bytes(self) -> int:
        return sum(len(d.encode("utf-8", errors="surrogatepass")) for d in self.train)

    @property
    def held_out_bytes(self) -> int:
        return sum(len(d.encode("utf-8", errors="surrogatepass")) for d in self.held_out)


def _check_fraction(held_out_fraction: float) -> None:
    if not 0.0 < held_out_fraction < 1.0:
        raise ConfigError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")


def file_corpus(path: str | Path, held_out_fraction: float = 0.1) -> Corpus:
    """One text file: the first part to train on, the last ``held_out_fraction`` held out."""
    _check_fraction(held_out_fraction)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"text file {path} does not exist; pass path=<a text file>")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc})") from None
    cut = int(len(text) * (1.0 - held_out_fraction))
    if cut == 0 or cut == len(text):
        raise InputError(
            f"{path} holds {len(text)} characters, too few to split off a held-out part"
        )
    return Corpus([text[:cut]], [text[cut:]], [f"{path.name}[:{cut}]"], [f"{path.name}[{cut}:]"])


def _held_out(name: str, held_out_fraction: float) -> bool:
    """A file's side of the split: a hash of its name, not its place in a listing."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < held_out_fraction


def _read_files(
    root: Path, paths: list[Path], max_bytes: int | None, held_out_fraction: float
) -> Corpus:
    """Read ``paths`` in order; each side of the split gets its share of ``max_bytes``."""
    corpus = Corpus([], [], [], [])
    budget = {
        True: None if max_bytes is None else max(1, int(max_bytes * held_out_fraction)),
        False: None
        if max_bytes is None
        else max(1, max_bytes - int(max_bytes * held_out_fraction)),
    }
    used = {True: 0, False: 0}
    for path in paths:
        name = path.relative_to(root).as_posix()
        side = _held_out(name, held_out_fraction)
        cap = budget[side]
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib test files are deliberately not UTF-8
        if not text.strip():
            continue
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if cap is not None and used[side] + size > cap:
            if used[side] > 0:
                continue  # skip files that do not fit; smaller ones later may
            text = text[:cap]  # a cap below the first file: take its beginning
            size = len(text.encode("utf-8", errors="surrogatepass"))
        used[side] += size
        (corpus.held_out if side else corpus.train).append(text)
        (corpus.held_out_names if side else corpus.train_names).append(name)
    if not corpus.train or not corpus.held_out:
        raise InputError(
            f"{root}: {len(corpus.train)} training and {len(corpus.held_out)} held-out files; "
            f"both must be non-empty (add files or change held_out_fraction)"
        )
    return corpus


def folder_corpus(
    folder: str | Path,
    pattern: str = "**/*.txt",
    *,
    max_bytes: int | None = None,
    held_out_fraction: float = 0.1,
) -> Corpus:
    """Every UTF-8 file matching ``pattern`` under ``folder``, in sorted path order."""
    _check_fraction(held_out_fraction)
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    paths = sorted(p for p in root.glob(pattern) if p.is_file())
    if not paths:
        raise ConfigError(f"no file under {root} matches {pattern!r}")
    return _read_files(root, paths, max_bytes, held_out_fraction)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_corpus(max_bytes: int = 2_000_000, held_out_fraction: float = 0.1) -> Corpus:
    """The standard library's ``*.py`` files (no site-packages), up to ``max_bytes``.

    Files are visited in an order fixed by a hash of their relative paths (a deterministic
    shuffle, so a small cap still samples the whole library, not just ``a*.py``).
    """
    _check_fraction(held_out_fraction)
    if max_bytes < 1:
        raise ConfigError(f"max_bytes must be positive, got {max_bytes}")
    root = stdlib_root()
    paths = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file()]
    if not paths:
        raise ConfigError(f"found no *.py files under the standard library folder {root}")

    def order(p: Path) -> bytes:
        return hashlib.sha1(b"order:" + p.relative_to(root).as_posix().encode()).digest()

    return _read_files(root, sorted(paths, key=order), max_bytes, held_out_fraction)


# -- packing ----------------------------------------------------------------------------------


@dataclass
class Packed:
    """Rows of packed documents: ``tokens``, ``doc_ids``, ``positions``, each (N, T) long.

    ``doc_ids`` is the index of the document each token came from (``PAD_DOC`` for the
    padding that fills the last row); ``positions`` counts from 0 at the start of each
    document's segment within a row (RoPE positions).
    """

    tokens: Tensor
    doc_ids: Tensor
    positions: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def segment_positions(doc_ids: Tensor) -> Tensor:
    """(..., T) document ids -> position of each token within its run of equal ids."""
    T = doc_ids.shape[-1]
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    run_start = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return idx - run_start


def pack(docs: Sequence[Sequence[int]], seq_len: int, pad_id: int = 0) -> Packed:
    """Concatenate the documents' token ids and cut them into rows of ``seq_len``.

    A document longer than a row continues in the next row (as a new segment: the rows are
    independent). The last row is filled with ``pad_id`` tokens of document ``PAD_DOC``.
    """
    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2 (an input and a target), got {seq_len}")
    lengths = [len(d) for d in docs]
    if not docs or sum(lengths) == 0:
        raise InputError("pack needs at least one non-empty document")
    stream = torch.tensor([t for d in docs for t in d], dtype=torch.long)  # (L,)
    ids = torch.repeat_interleave(torch.arange(len(docs)), torch.tensor(lengths))  # (L,)
    n_rows = -(-stream.numel() // seq_len)
    pad = n_rows * seq_len - stream.numel()
    stream = torch.cat([stream, torch.full((pad,), pad_id, dtype=torch.long)])
    ids = torch.cat([ids, torch.full((pad,), PAD_DOC, dtype=torch.long)])
    tokens = stream.view(n_rows, seq_len)  # (N, T)
    doc_ids = ids.view(n_rows, seq_len)  # (N, T)
    return Packed(tokens, doc_ids, segment_positions(doc_ids))


class PackedBatches:
    """``train_data(generator, batch_size) -> (tokens, doc_ids, positions)`` for the Trainer:
    rows drawn uniformly with replacement, all randomness from ``generator``."""

    def __init__(self, packed: Packed) -> None:
        if len(packed) == 0:
            raise InputError("PackedBatches needs at least one packed row")
        self.packed = packed

    def __call__(
        self, generator: torch.Generator, batch_size: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        rows = torch.randint(0, len(self.packed), (batch_size,), generator=generator)  # (B,)
        p = self.packed
        return p.tokens[rows], p.doc_ids[rows], p.positions[rows]


def target_mask(doc_ids: Tensor) -> Tensor:
    """(B, T) ids -> (B, T - 1) True where target t + 1 continues the document of t."""
    return (doc_ids[:, 1:] == doc_ids[:, :-1]) & (doc_ids[:, 1:] != PAD_DOC)


def packed_nll(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed next-token negative log-likelihood (nats) and the number of targets counted."""
    tokens, doc_ids, positions = batch
    mask = masks.document(doc_ids)
    logits = model(tokens, positions=positions, mask=mask).logits[:, :-1]  # (B, T - 1, V)
    valid = target_mask(doc_ids)  # (B, T - 1)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        tokens[:, 1:].reshape(-1),
        reduction="none",
    ).view_as(valid)
    return (nll * valid).sum(), valid.sum()


def packed_lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """The Trainer's ``loss_fn``: mean next-token cross-entropy within documents."""
    total, count = packed_nll(model, batch)
    return total / count.clamp(min=1)
