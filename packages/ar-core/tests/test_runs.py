"""ar_core.runs: the RunControl every Trainer follows (resume, periodic checkpoints, stop)
and RunFolder's decisions (refuse, resume, overwrite beside, lock)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path

import _trainer_toy as toy
import pydantic
import pytest
import torch

from ar_core.atomic import LockedError
from ar_core.errors import CheckpointError, ConfigError
from ar_core.runs import RUN_FILE, RunControl, RunFolder, TrainingInterrupted, run_control
from ar_core.trainer import TrainConfig, Trainer

torch.set_num_threads(1)


def _config(out: Path, **kw: object) -> TrainConfig:
    fields: dict[str, object] = dict(
        steps=12, batch_size=8, lr=3e-2, warmup_steps=2, log_every=1, progress=False
    )
    fields.update(kw)
    return TrainConfig(out_dir=out, **fields)  # type: ignore[arg-type]


def _train(out: Path, control: RunControl | None = None, dropout: float = 0.3, **kw: object):
    model = toy.make_model(dropout=dropout)
    ctx = run_control(control) if control is not None else None
    if ctx is None:
        trainer = Trainer(model, toy.loss_fn, toy.train_data, _config(out, **kw))
        return trainer.train(), model
    with ctx:
        trainer = Trainer(model, toy.loss_fn, toy.train_data, _config(out, **kw))
        return trainer.train(), model


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_stop_then_resume_under_control_is_bit_exact(tmp_path: Path) -> None:
    """Stopped after update 5 (checkpoint, TrainingInterrupted), resumed by a fresh Trainer
    under RunControl(resume=True): the weights and the logged losses equal one straight
    run's (dropout on: the RNG states come back too)."""
    straight_losses, straight = _train(tmp_path / "a")
    control = RunControl(stop_at_step=5)
    with pytest.raises(TrainingInterrupted) as info:
        _train(tmp_path / "b", control)
    assert info.value.step == 5 and control.checkpoints == [(tmp_path / "b" / "train_state", 5)]
    losses, resumed = _train(tmp_path / "b", RunControl(resume=True))
    assert len(losses) == 7
    assert _equal(resumed, straight)
    logged = [
        json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged == straight_losses


def test_periodic_checkpoints_by_steps_and_time(tmp_path: Path) -> None:
    control = RunControl(checkpoint_every_steps=4)
    _train(tmp_path / "a", control)
    assert [s for _, s in control.checkpoints] == [4, 8, 12]
    timed = RunControl(checkpoint_every_seconds=1e-9)  # every update is past due
    _train(tmp_path / "b", timed)
    assert [s for _, s in timed.checkpoints] == list(range(1, 13))


def test_resume_refuses_a_changed_train_config(tmp_path: Path) -> None:
    with pytest.raises(TrainingInterrupted):
        _train(tmp_path, RunControl(stop_at_step=3))
    with pytest.raises(CheckpointError, match=r"lr: 0\.03 -> 0\.05"):
        _train(tmp_path, RunControl(resume=True), lr=5e-2)
    losses, _ = _train(tmp_path, RunControl(resume=True), steps=14)  # steps may change
    assert len(losses) == 11


def test_sigint_during_training_saves_and_stops(tmp_path: Path) -> None:
    """A real SIGINT to this process during train(): the update in flight finishes, a
    checkpoint is written, TrainingInterrupted names it; the old handler is back after."""
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT)
    calls = {"n": 0}

    def loss_fn(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return toy.loss_fn(model, batch)

    control = RunControl()
    trainer_cfg = _config(tmp_path, steps=50)
    with run_control(control), pytest.raises(TrainingInterrupted) as info:
        Trainer(toy.make_model(), loss_fn, toy.train_data, trainer_cfg).train()
    assert info.value.step == 4
    assert control.checkpoints == [(tmp_path / "train_state", 4)]
    assert signal.getsignal(signal.SIGINT) is before


class _Cfg(pydantic.BaseModel):
    lr: float = 0.1
    steps: int = 10


def _mark(folder: Path, status: str, **config: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    run = {"recipe": "r", "config": _Cfg(**config).model_dump(), "status": status}  # type: ignore[arg-type]
    (folder / RUN_FILE).write_text(json.dumps(run))


def test_run_folder_decisions(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with RunFolder(fresh, recipe="r", config=_Cfg()) as run:
        assert run.work == fresh
        assert json.loads((fresh / RUN_FILE).read_text())["status"] == "running"
        run.failed("boom")  # before any checkpoint: the folder holds no run again
    assert not (fresh / RUN_FILE).exists()

    done = tmp_path / "done"
    _mark(done, "complete")
    with pytest.raises(ConfigError, match="--resume to continue it or --overwrite"):
        RunFolder(done, recipe="r", config=_Cfg()).__enter__()
    with pytest.raises(ConfigError, match="is complete, nothing to resume"):
        RunFolder(done, recipe="r", config=_Cfg(), resume=True).__enter__()
    with RunFolder(done, recipe="r", config=_Cfg(lr=0.2), overwrite=True) as run:
        assert run.work == tmp_path / ".done.partial"
        run.failed("boom")
    assert not (tmp_path / ".done.partial").exists()
    assert json.loads((done / RUN_FILE).read_text())["status"] == "complete"

    stopped = tmp_path / "stopped"
    _mark(stopped, "interrupted", lr=0.1)
    with pytest.raises(ConfigError, match=r"lr: 0\.1 -> 0\.5"):
        RunFolder(
            stopped, recipe="r", config=_Cfg(), resume=True, overrides={"lr": 0.5}
        ).__enter__()
    with pytest.raises(ConfigError, match="recipe 'r', not 'q'"):
        RunFolder(stopped, recipe="q", config=_Cfg(), resume=True).__enter__()
    with RunFolder(
        stopped, recipe="r", config=_Cfg(lr=9.0), resume=True, overrides={"steps": 20}
    ) as run:
        assert run.work == stopped and run.config == _Cfg(lr=0.1, steps=20)


def _hold(path: str, ready, done) -> None:  # type: ignore[no-untyped-def]
    with RunFolder(Path(path), recipe="r", config=_Cfg()):
        ready.set()
        done.wait(30)


def test_a_second_run_into_a_locked_folder_fails_at_once(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(tmp_path / "run"), ready, done))
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockedError, match=f"in use by another run \\(pid {child.pid}\\)"):
            RunFolder(tmp_path / "run", recipe="r", config=_Cfg(), overwrite=True).__enter__()
    finally:
        done.set()
        child.join()
