"""Saving and loading ar-video's modules: a folder with ``<kind>.json`` and ``<kind>.safetensors``.

The JSON holds ``{"format": 1, "kind": ..., "config": {...}, "extra": {...}, "sha256": ...}``
where ``sha256`` is the hash of the safetensors bytes. Each file is written atomically
(:func:`ar_core.checkpoint.atomic_write_bytes`), the tensors first and the JSON last, so a
crash between the two leaves a checksum mismatch that :func:`read_module` reports instead
of loading a mixed state. Loading checks the JSON, the kind, the checksum, and every
tensor's name, shape and dtype against the module built from the saved config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from ar_core.checkpoint import atomic_write_bytes, load_checked_state
from ar_core.errors import CheckpointError

FORMAT = 1


def write_module(
    path: str | Path, kind: str, module: nn.Module, config: dict[str, Any], extra: dict[str, Any]
) -> Path:
    """Write ``module``'s state and its constructor ``config`` into the folder ``path``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot save a {kind} at {folder}: a file is in the way")
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    data = st_save(state)
    atomic_write_bytes(folder / f"{kind}.safetensors", data)
    meta = {
        "format": FORMAT,
        "kind": kind,
        "config": config,
        "extra": extra,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_bytes(folder / f"{kind}.json", (json.dumps(meta, indent=2) + "\n").encode())
    return folder


def read_module(
    path: str | Path, kind: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
    """Read and validate a folder written by :func:`write_module`: (config, extra, tensors)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"no {kind} at {folder}: the folder does not exist")
    meta_file, tensors_file = folder / f"{kind}.json", folder / f"{kind}.safetensors"
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_file} is missing; save the {kind} again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_file} is corrupted ({exc}); save the {kind} again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{meta_file} is corrupted (no config object)")
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        raise CheckpointError(
            f"{meta_file} holds format {meta.get('format')!r} kind {meta.get('kind')!r}; "
            f"expected format {FORMAT} kind {kind!r}"
        )
    try:
        data = tensors_file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{tensors_file} is missing; save the {kind} again") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(
            f"{tensors_file} is corrupted or does not belong to {meta_file} (checksum "
            f"mismatch); save the {kind} again"
        )
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{tensors_file} could not be read: {exc}") from exc
    return meta["config"], dict(meta.get("extra") or {}), tensors


def load_state(module: nn.Module, tensors: dict[str, Tensor], where: str | Path) -> None:
    """Copy ``tensors`` into ``module`` after checking names, shapes and dtypes."""
    load_checked_state(module, tensors, where, what="module")
