"""Checkpoints: safetensors weights + a pydantic-validated ``config.json``, written atomically.

A checkpoint is a folder::

    config.json            TransformerConfig (absent for models without a pydantic ``cfg``)
    model.safetensors      weights (tied weights stored once)
    training_state.pt      only in training checkpoints (see below)

Writing never damages the previous checkpoint: files are written to a temporary file in
the same folder, fsync'ed and moved into place with ``os.replace``; a folder is written
as a temporary sibling folder and then swapped in (the old one is renamed to
``.<name>.previous`` first and deleted last). If the process dies between the two renames,
the loaders find ``.<name>.previous`` and load it (with a warning).

Loading validates before it loads: ``config.json`` through the pydantic config, then the
safetensors header (name, shape and dtype of every tensor, and that the file is as long as
the header says) against the model. Any problem is a :class:`~ar_core.errors.CheckpointError`
that names it.

Trainer API (the Trainer calls these two)::

    save_training_state(path, model=model, optimizer=opt, scheduler=sched, step=step,
                        extra={"best_loss": 1.2})
    state = load_training_state(path, model=model, optimizer=opt, scheduler=sched)
    state.step, state.extra        # RNG states (python, numpy, torch, cuda) are restored

``load_training_state`` loads into the objects given (model weights validated as above);
``restore_rng=False`` leaves the RNGs alone. ``extra`` holds plain Python values and
tensors (it is read back with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ar_core.atomic import atomic_folder, atomic_write_bytes, resolve_folder
from ar_core.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from ar_core.model import Transformer, TransformerConfig

__all__ = [
    "CONFIG_NAME",
    "TRAINING_STATE_NAME",
    "WEIGHTS_NAME",
    "TrainingState",
    "atomic_write_bytes",
    "check_finite",
    "load_model",
    "load_training_state",
    "load_weights",
    "read_config",
    "save_model",
    "save_training_state",
    "state_for_saving",
    "tensors_digest",
    "write_model_files",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_STATE_NAME = "training_state.pt"
CONFIG_METADATA = "ar_config"  # the weights file's metadata key holding the config JSON
DIGEST_METADATA = "ar_sha256"  # ... and the one holding tensors_digest of its tensors

# safetensors dtype codes -> torch dtypes
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# -- atomic writes (ar_core.atomic: one writer for every folder) ----------------------------


def _resolve_folder(path: str | Path) -> Path:
    """The checkpoint folder, or the ``.previous`` copy a crash mid-save left behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file; a checkpoint is a folder holding {WEIGHTS_NAME}")
    return resolve_folder(path, what="checkpoint")


# -- validation -------------------------------------------------------------------------


def state_for_saving(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with tied (storage-sharing) tensors kept once, contiguous."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous()
    return out


def _read_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, safetensors dtype) from a safetensors header; checks the file length."""
    if not file.is_file():
        raise CheckpointError(f"{file} is missing; a checkpoint folder holds {WEIGHTS_NAME}")
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise CheckpointError(f"{file} is truncated: {size} bytes, not even a header")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > size - 8:
            raise CheckpointError(
                f"{file} is truncated or corrupted: its header claims {header_len} bytes but "
                f"the file has {size}"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{file} has a corrupted header: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file} has a corrupted header (not a JSON object)")
    header.pop("__metadata__", None)
    end = 0
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, info in header.items():
        try:
            out[name] = (tuple(info["shape"]), str(info["dtype"]))
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(f"{file} has a corrupted header entry for {name!r}") from None
    if 8 + header_len + end != size:
        raise CheckpointError(
            f"{file} is truncated or corrupted: its header describes {8 + header_len + end} "
            f"bytes but the file has {size}"
        )
    return out


def _dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, str):
        dtype = _ST_DTYPES.get(dtype, dtype)  # type: ignore[arg-type]
    return str(dtype).removeprefix("torch.")


def _short(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def validate_weights(
    model: nn.Module, file: Path, found: dict[str, tuple[tuple[int, ...], str]] | None = None
) -> None:
    """Check every tensor's name, shape and dtype in ``file`` (or the header ``found``
    read from it) against ``model``."""
    found = _read_header(file) if found is None else found
    expected = {n: (tuple(t.shape), t.dtype) for n, t in state_for_saving(model).items()}
    missing = [n for n in expected if n not in found]
    unexpected = [n for n in found if n not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {_short(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_short(unexpected)}")
        raise CheckpointError(f"{file} does not match the model; {'; '.join(parts)}")
    for name, (shape, dtype) in expected.items():
        f_shape, f_code = found[name]
        if f_shape != shape:
            raise CheckpointError(
                f"{name} has shape {f_shape} in the checkpoint but {shape} in the model"
            )
        if _ST_DTYPES.get(f_code) != dtype:
            raise CheckpointError(
                f"{name} has dtype {_dtype_name(f_code)} in the checkpoint but "
                f"{_dtype_name(dtype)} in the model"
            )


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint folder's (or a .safetensors file's) weights into ``model``, after
    checking every tensor's name, shape and dtype."""
    from safetensors.torch import load_file

    from ar_core.model import fuse_legacy_header, fuse_legacy_state, has_legacy_names

    path = Path(path)
    file = path if path.suffix == ".safetensors" else _resolve_folder(path) / WEIGHTS_NAME
    header = _read_header(file)
    # checkpoints written before the q/k/v and gate/up projections were fused
    legacy = has_legacy_names(header)
    validate_weights(model, file, fuse_legacy_header(header) if legacy else header)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        tensors = load_file(str(file), device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{file} could not be read: {exc}") from exc
    check_finite(tensors, file)
    digest = _metadata(file).get(DIGEST_METADATA)
    if digest is not None and digest != tensors_digest(tensors):
        raise CheckpointError(
            f"{file} does not match the checksum saved with it (its weights changed after it "
            f"was written: a damaged disk or cache); save the model again or re-run training"
        )
    if legacy:
        tensors = fuse_legacy_state(tensors)
    own = model.state_dict()
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor)


def check_finite(tensors: dict[str, Tensor], where: str | Path) -> None:
    """CheckpointError naming the first floating tensor that holds NaN or infinity."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{where}: weight {name} holds {bad} NaN/inf values of {tensor.numel()}; the "
                f"checkpoint is damaged or its training diverged: load an earlier checkpoint "
                f"or train again"
            )


def load_checked_state(
    module: nn.Module, tensors: dict[str, Tensor], where: str | Path, what: str = "module"
) -> None:
    """Copy ``tensors`` into ``module`` after checking every name, shape and dtype against
    its ``state_dict``: a ``CheckpointError`` naming ``where`` (the file) and ``what`` (the
    kind of module) before anything is copied, so a mismatch never half-loads. Weights
    saved before ar-core's Transformer fused its projections (``wq``/``wk``/``wv``,
    ``w1``/``w3``) are fused first."""
    from ar_core.model import fuse_legacy_state, has_legacy_names

    if has_legacy_names(tensors):
        tensors = fuse_legacy_state(tensors)
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{where} does not match the {what}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, value in tensors.items():
        if value.shape != own[key].shape or value.dtype != own[key].dtype:
            raise CheckpointError(
                f"{where}: {key} has shape {tuple(value.shape)} / {value.dtype}, the {what} "
                f"expects {tuple(own[key].shape)} / {own[key].dtype}"
            )
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value)


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name): a
    checksum for caches, stored beside or inside them and compared when they are read."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _metadata(file: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file ({} when it has none or is unreadable)."""
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        meta = header.get("__metadata__", {})
        return dict(meta) if isinstance(meta, dict) else {}
    except (OSError, struct.error, ValueError, TypeError, AttributeError):
        return {}


def saved_config(file: Path) -> dict[str, Any] | None:
    """The config stored in a weights file's metadata by :func:`save_model` (None for
    files written before it was stored, or by other tools)."""
    raw = _metadata(file).get(CONFIG_METADATA)
    try:
        return None if raw is None else dict(json.loads(raw))
    except (ValueError, TypeError):
        return None


# -- models -----------------------------------------------------------------------------


def _write_model_files(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    cfg = getattr(model, "cfg", None)
    state = state_for_saving(model)
    metadata = {"format": "pt", DIGEST_METADATA: tensors_digest(state)}
    if isinstance(cfg, BaseModel):
        (folder / CONFIG_NAME).write_text(cfg.model_dump_json(indent=2) + "\n")
        # the config again, inside the weights: a config.json edited later is caught on load
        metadata[CONFIG_METADATA] = cfg.model_dump_json()
    save_file(state, str(folder / WEIGHTS_NAME), metadata=metadata)


def write_model_files(model: nn.Module, folder: str | Path) -> None:
    """Write ``config.json`` (when the model has a pydantic ``cfg``) and ``model.safetensors``
    into ``folder`` as they are (no atomicity: call it inside :func:`ar_core.atomic.atomic_folder`
    to add files of your own to the same atomic folder)."""
    _write_model_files(model, Path(folder))


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Write the folder ``path`` (config.json + model.safetensors) atomically; return it."""
    path = Path(path)
    with atomic_folder(path) as tmp:
        _write_model_files(model, tmp)
    return path


def read_config(path: str | Path) -> TransformerConfig:
    """The validated :class:`TransformerConfig` of a checkpoint folder."""
    from ar_core.model import TransformerConfig

    file = _resolve_folder(path) / CONFIG_NAME
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; is {path} a model checkpoint?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file} holds {type(raw).__name__}, not a TransformerConfig object")
    try:
        return TransformerConfig(**raw)  # a bad field is a one-line ConfigError
    except ConfigError as exc:
        errors = str(exc).removeprefix("invalid TransformerConfig: ")
        raise CheckpointError(f"{file} is not a valid TransformerConfig: {errors}") from None


def load_model(path: str | Path, *, device: torch.device | str | None = None) -> Transformer:
    """Build the Transformer of ``config.json`` and load its validated weights."""
    from ar_core.model import Transformer

    folder = _resolve_folder(path)
    cfg = read_config(folder)
    stored = saved_config(folder / WEIGHTS_NAME)
    if stored is not None:
        current = cfg.model_dump(mode="json")
        changed = [
            f"{k}={current.get(k)!r} but the weights were saved with {k}={v!r}"
            for k, v in sorted(stored.items())
            if current.get(k, v) != v
        ]
        if changed:
            raise CheckpointError(
                f"{folder / CONFIG_NAME} does not match {WEIGHTS_NAME}: {'; '.join(changed)}; "
                f"restore config.json (or save the model again)"
            )
    model = Transformer(cfg)
    if device is not None:
        model.to(device)
    load_weights(model, folder)
    return model


# -- training state ---------------------------------------------------------------------


@dataclass
class TrainingState:
    """What :func:`load_training_state` returns besides restoring the objects it was given."""

    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a training checkpoint folder atomically: the model files plus
    ``training_state.pt`` (optimizer, scheduler, RNG states, step, ``extra``)."""
    path = Path(path)
    payload = {
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
        "extra": extra or {},
    }
    with atomic_folder(path) as tmp:
        _write_model_files(model, tmp)
        torch.save(payload, tmp / TRAINING_STATE_NAME)
    return path


def load_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> TrainingState:
    """Restore a folder written by :func:`save_training_state` into the given objects."""
    folder = _resolve_folder(path)
    file = folder / TRAINING_STATE_NAME
    if not file.exists():
        raise CheckpointError(
            f"{file} is missing: {folder} is a model checkpoint, not a training checkpoint"
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file} is corrupted: {type(exc).__name__}: {exc}") from exc
    if optimizer is not None and payload.get("optimizer") is None:
        raise CheckpointError(f"{file} holds no optimizer state but an optimizer was given")
    if scheduler is not None and payload.get("scheduler") is None:
        raise CheckpointError(f"{file} holds no scheduler state but a scheduler was given")
    load_weights(model, folder)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the optimizer state in {file} does not fit: {exc}") from exc
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if restore_rng:
        _set_rng_state(payload["rng"])
    return TrainingState(step=int(payload["step"]), extra=dict(payload["extra"]))
