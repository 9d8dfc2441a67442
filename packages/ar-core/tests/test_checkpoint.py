"""Checkpoints round-trip exactly, refuse corruption clearly, and survive a crash mid-save."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ar_core import checkpoint
from ar_core.checkpoint import (
    load_model,
    load_training_state,
    load_weights,
    save_model,
    save_training_state,
)
from ar_core.errors import CheckpointError
from ar_core.model import Transformer, TransformerConfig


def _listing(folder: Path) -> list[str]:
    """Names in ``folder`` but the save locks (``.<name>.lock`` stays by design)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def _model(seed: int = 0, **kw: object) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig.from_name("tiny", n_layers=1, **kw))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_is_exact(tmp_path: Path, tie: bool) -> None:
    model = _model(tie_embeddings=tie)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = Transformer.from_pretrained(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg and _same(model, loaded)
    if tie:
        assert loaded.output.weight is loaded.tok_embeddings.weight
    assert _listing(tmp_path) == ["ckpt"]  # no temp leftovers (the lock file stays)


def test_truncated_weights_refused(tmp_path: Path) -> None:
    save_model(_model(), tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(tmp_path / "c")
    f.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not even a header"):
        load_model(tmp_path / "c")


def test_bad_json_and_bad_config_refused(tmp_path: Path) -> None:
    save_model(_model(), tmp_path / "c")
    cfg = tmp_path / "c" / "config.json"
    cfg.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_model(tmp_path / "c")
    cfg.write_text(json.dumps({**_model().cfg.model_dump(), "dim": -4}))
    with pytest.raises(CheckpointError, match="not a valid TransformerConfig: dim"):
        load_model(tmp_path / "c")


def test_wrong_shapes_and_names_refused_before_loading(tmp_path: Path) -> None:
    save_model(_model(), tmp_path / "c")
    wide = Transformer(TransformerConfig.from_name("tiny", n_layers=1, dim=64, n_heads=2))
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(
        CheckpointError,
        match=r"tok_embeddings.weight has shape \(256, 128\) in the checkpoint but \(256, 64\)",
    ):
        load_weights(wide, tmp_path / "c")
    assert all(torch.equal(before[k], v) for k, v in wide.state_dict().items())  # untouched
    deeper = Transformer(TransformerConfig.from_name("tiny", n_layers=2))
    with pytest.raises(CheckpointError, match="missing from the checkpoint: layers.1"):
        load_weights(deeper, tmp_path / "c")
    half = _model().to(torch.bfloat16)
    with pytest.raises(CheckpointError, match="dtype float32 in the checkpoint but bfloat16"):
        load_weights(half, tmp_path / "c")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing")


def test_crash_while_writing_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _model(seed=0)
    save_model(old, tmp_path / "c")

    def broken_writer(model: object, folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint, "_write_model_files", broken_writer)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(_model(seed=1), tmp_path / "c")
    monkeypatch.undo()
    assert _same(load_model(tmp_path / "c"), old)
    assert _listing(tmp_path) == ["c"]


def test_crash_between_renames_keeps_previous_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the two-rename fallback (no renameat2 RENAME_EXCHANGE): a crash between the renames
    monkeypatch.setenv("AR_NO_RENAME_EXCHANGE", "1")
    old = _model(seed=0)
    save_model(old, tmp_path / "c")
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # after moving the old folder aside, before the new one lands
            raise OSError("power cut")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(OSError, match="power cut"):
        save_model(_model(seed=1), tmp_path / "c")
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="interrupted"):
        assert _same(load_model(tmp_path / "c"), old)
    new = _model(seed=2)
    save_model(new, tmp_path / "c")  # the next save recovers
    assert _same(load_model(tmp_path / "c"), new)
    assert _listing(tmp_path) == ["c"]


def test_training_state_round_trip(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    model(torch.zeros(1, 3, dtype=torch.long)).logits.sum().backward()
    opt.step()
    sched.step()
    save_training_state(
        tmp_path / "t", model=model, step=7, optimizer=opt, scheduler=sched, extra={"k": 1}
    )
    expected = (random.random(), np.random.rand(), torch.rand(1))

    other = _model(seed=5)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2)
    state = load_training_state(tmp_path / "t", model=other, optimizer=opt2, scheduler=sched2)
    assert state.step == 7 and state.extra == {"k": 1}
    assert _same(model, other)
    assert sched2.state_dict() == sched.state_dict()
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        save_model(model, tmp_path / "m")
        load_training_state(tmp_path / "m", model=model)
