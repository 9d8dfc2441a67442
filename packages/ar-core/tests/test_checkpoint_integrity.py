"""Loaders refuse what would load silently wrong: NaN/inf weights, a config.json edited
after the save, weights damaged in place (same size, header intact)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from ar_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_model, save_model, tensors_digest
from ar_core.errors import CheckpointError
from ar_core.model import Transformer, TransformerConfig

torch.set_num_threads(1)


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        TransformerConfig(vocab_size=16, dim=16, n_layers=1, n_heads=2, max_seq_len=32)
    )


def test_nan_weight_refused_naming_it(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        model.layers[0].attn.wqkv.weight[3, 4] = float("nan")
        model.norm.weight[0] = float("inf")
    save_model(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"layers\.0\.attn\.wqkv\.weight holds 1 NaN/inf"):
        load_model(tmp_path / "m")


def test_edited_config_refused_naming_the_field(tmp_path: Path) -> None:
    save_model(_model(), tmp_path / "m")
    file = tmp_path / "m" / CONFIG_NAME
    cfg = json.loads(file.read_text())
    file.write_text(json.dumps({**cfg, "n_heads": 4}))  # still divides dim: loads otherwise
    with pytest.raises(
        CheckpointError, match="n_heads=4 but the weights were saved with n_heads=2"
    ):
        load_model(tmp_path / "m")
    file.write_text(json.dumps(cfg))
    assert isinstance(load_model(tmp_path / "m"), Transformer)


def test_weights_damaged_in_place_refused(tmp_path: Path) -> None:
    model = _model()
    save_model(model, tmp_path / "m")
    file = tmp_path / "m" / WEIGHTS_NAME
    data = bytearray(file.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 100 : 8 + n + 104] = bytes(4)  # one float32 zeroed; the header as it was
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum saved with it"):
        load_model(tmp_path / "m")


def test_digest_sees_names_shapes_and_values() -> None:
    a = {"x": torch.zeros(2, 3), "y": torch.ones(1, dtype=torch.bfloat16)}
    assert tensors_digest(a) == tensors_digest({k: v.clone() for k, v in a.items()})
    assert tensors_digest(a) != tensors_digest({**a, "x": torch.zeros(3, 2)})
    assert tensors_digest(a) != tensors_digest({"z": a["x"], "y": a["y"]})
    b = {**a, "x": a["x"].clone()}
    b["x"][1, 2] = 1e-30
    assert tensors_digest(a) != tensors_digest(b)
