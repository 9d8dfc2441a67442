"""The one atomic writer (ar_core.atomic): kill loops, stale temporaries, the save lock."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from ar_core.atomic import (
    LockedError,
    atomic_folder,
    atomic_write_text,
    folder_lock,
    write_folder,
)
from ar_core.errors import CheckpointError
from ar_core.model import Transformer, TransformerConfig
from ar_core.steps import TwoStreamStepModel

torch.set_num_threads(1)


def _step_model(seed: int) -> TwoStreamStepModel:
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=34, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    return TwoStreamStepModel(Transformer(cfg), 32)


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _save_forever(path: str, a: TwoStreamStepModel, b: TwoStreamStepModel) -> None:
    """Child: save a, b, a, b, ... into one folder until killed."""
    models = (a, b)
    i = 0
    while True:
        models[i % 2].save_pretrained(path)
        i += 1


def test_kill_loop_folder_is_always_old_or_new(tmp_path: Path) -> None:
    """SIGKILL a saving process 24 times at random points (seed 0): the folder always
    loads, bit for bit, as one of the two models; the next save removes the temporaries."""
    a, b = _step_model(0), _step_model(1)
    path = tmp_path / "model"
    a.save_pretrained(path)
    start = time.perf_counter()
    for _ in range(3):
        b.save_pretrained(path)
    save_seconds = (time.perf_counter() - start) / 3
    ctx = mp.get_context("fork")  # the models are built once, in this process
    rng = random.Random(0)
    litter_seen = 0
    for _ in range(24):
        child = ctx.Process(target=_save_forever, args=(str(path), a, b))
        child.start()
        time.sleep(rng.uniform(0.0, 4 * save_seconds) + 0.01)
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
        assert child.exitcode == -signal.SIGKILL
        loaded = TwoStreamStepModel.from_pretrained(path)
        assert _equal(loaded, a) or _equal(loaded, b)
        names = _listing(tmp_path)
        assert "model" in names and ".model.lock" in names
        others = [n for n in names if n not in ("model", ".model.lock")]
        assert all(n.startswith((".model.tmp-", ".model.old-")) for n in others), names
        litter_seen += bool(others)
    a.save_pretrained(path)  # the next save cleans what the kills left
    assert _listing(tmp_path) == [".model.lock", "model"]
    assert _equal(TwoStreamStepModel.from_pretrained(path), a)
    # the kills did land inside saves (temporaries were left at least once)
    assert litter_seen > 0


def _save_n(path: str, model: TwoStreamStepModel, n: int) -> None:
    for _ in range(n):
        model.save_pretrained(path)


def test_concurrent_saves_are_serialised(tmp_path: Path) -> None:
    """Two processes saving one folder 8 times each: no error, the folder is one of them."""
    a, b = _step_model(0), _step_model(1)
    path = tmp_path / "model"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_save_n, args=(str(path), m, 8)) for m in (a, b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    loaded = TwoStreamStepModel.from_pretrained(path)
    assert _equal(loaded, a) or _equal(loaded, b)
    assert _listing(tmp_path) == [".model.lock", "model"]


def test_a_failing_writer_leaves_the_old_folder(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_folder(path, lambda d: (d / "x.txt").write_text("old"))

    def broken(d: Path) -> None:
        (d / "x.txt").write_text("new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder(path, broken)
    assert (path / "x.txt").read_text() == "old"
    assert _listing(tmp_path) == [".f.lock", "f"]


def test_all_files_land_together(tmp_path: Path) -> None:
    """Every file of the new folder appears in the same rename (none before the others)."""
    path = tmp_path / "f"
    write_folder(path, lambda d: [(d / n).write_text("1") for n in ("a", "b")])
    with atomic_folder(path) as tmp:
        (tmp / "a").write_text("2")
        (tmp / "b").write_text("2")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "c").write_text("2")
        assert (path / "a").read_text() == "1" and not (path / "sub").exists()
    assert [(path / n).read_text() for n in ("a", "b", "sub/c")] == ["2", "2", "2"]


def test_a_held_lock_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()

    def hold() -> None:
        with folder_lock(path):
            ready.set()
            done.wait(30)

    child = ctx.Process(target=hold)
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockedError, match="locked by another process"):
            write_folder(path, lambda d: None, lock_timeout=0.2)
    finally:
        done.set()
        child.join()
    write_folder(path, lambda d: (d / "x").write_text("ok"))  # free again
    assert (path / "x").read_text() == "ok"


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("not a folder")
    with pytest.raises(CheckpointError, match="a file is in the way"):
        write_folder(tmp_path / "f", lambda d: None)


def test_atomic_write_text_replaces_whole(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.json", "1")
    atomic_write_text(tmp_path / "a.json", "22")
    assert (tmp_path / "a.json").read_text() == "22"
    assert _listing(tmp_path) == ["a.json"]


def test_a_folder_saved_inside_another_lands_with_it(tmp_path: Path) -> None:
    """A save into a sub-folder of a folder being written (a tokenizer saving its base
    tokenizer) is part of the outer folder: nothing appears until the outer rename."""
    path = tmp_path / "outer"
    with atomic_folder(path) as tmp:
        write_folder(tmp / "base", lambda d: (d / "b").write_text("base"))
        (tmp / "a").write_text("outer")
        assert not path.exists()
    assert (path / "base" / "b").read_text() == "base" and (path / "a").read_text() == "outer"
    assert _listing(path) == ["a", "base"]  # no lock or temporary inside
    assert _listing(tmp_path) == [".outer.lock", "outer"]
