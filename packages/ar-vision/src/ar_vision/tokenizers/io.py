"""Saving and loading tokenizers: a folder with ``tokenizer.json`` and ``tokenizer.safetensors``.

``tokenizer.json`` holds ``{"format": 1, "name": ..., "config": {...}, "sha256": ...}``
where ``sha256`` is the hash of the safetensors file. The folder is written atomically
(:func:`ar_core.atomic.write_folder`: both files into a temporary sibling, fsync, one
rename), so a crash leaves the previous tokenizer; the hash still catches a file changed
or swapped afterwards. Loading checks the
JSON, the tokenizer name, the hash, and (in :func:`load_state`) every tensor's name and shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from ar_core.atomic import write_folder
from ar_core.checkpoint import load_checked_state
from ar_core.errors import CheckpointError

FORMAT = 1
CONFIG_FILE = "tokenizer.json"
TENSORS_FILE = "tokenizer.safetensors"


def write_tokenizer(
    path: str | Path,
    *,
    name: str,
    config: dict[str, Any],
    tensors: dict[str, Tensor],
    extra: Callable[[Path], object] | None = None,
) -> None:
    """Write a tokenizer folder at ``path`` atomically (every file, then one rename: a
    crash leaves the previous tokenizer); ``extra(tmp)`` adds files or sub-folders of
    its own (CTF's base tokenizer) to the same folder."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot save a tokenizer at {folder}: a file is in the way")
    data = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    meta = {
        "format": FORMAT,
        "name": name,
        "config": config,
        "sha256": hashlib.sha256(data).hexdigest(),
    }

    def write(tmp: Path) -> None:
        if extra is not None:
            extra(tmp)
        (tmp / TENSORS_FILE).write_bytes(data)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    write_folder(folder, write)  # the whole folder in one rename (ar_core.atomic)


def read_tokenizer(path: str | Path, *, name: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and validate a tokenizer folder; return (config, tensors)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"no tokenizer at {folder}: the folder does not exist")
    config_file, tensors_file = folder / CONFIG_FILE, folder / TENSORS_FILE
    try:
        meta = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{config_file} is missing; save the tokenizer again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{config_file} is corrupted ({exc}); save the tokenizer again"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{config_file} is corrupted (no config object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{config_file} has format {meta.get('format')!r}; this version reads format {FORMAT}"
        )
    if meta.get("name") != name:
        raise CheckpointError(
            f"{folder} holds a {meta.get('name')!r} tokenizer, not {name!r}; load it with "
            f"the matching class"
        )
    try:
        data = tensors_file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{tensors_file} is missing; save the tokenizer again") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(
            f"{tensors_file} is corrupted or does not belong to {config_file} (checksum "
            f"mismatch); save the tokenizer again"
        )
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{tensors_file} could not be read: {exc}") from exc
    return meta["config"], tensors


def load_state(module: nn.Module, tensors: dict[str, Tensor], where: str | Path) -> None:
    """Copy ``tensors`` into ``module`` after checking names, shapes and dtypes."""
    load_checked_state(module, tensors, where, what="tokenizer")


def construct(cls: Any, config: dict[str, Any], where: str | Path) -> Any:
    """``cls(**config)``, with a bad config reported as a CheckpointError naming ``where``."""
    try:
        return cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: the saved config {config} is not valid: {exc}") from None
