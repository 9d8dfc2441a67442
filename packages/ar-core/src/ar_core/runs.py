"""Run folders: what ``ar train --out DIR`` writes, and how a run is interrupted and resumed.

A **run folder** holds one recipe run::

    run.json        {"recipe", "config", "status", "pid", "started", ...}: written (atomically)
                    when the run starts, updated when it ends (complete, interrupted, failed)
    recipe.json     recipe name + config; written only when the run completed (``ar sample``
                    reads it), with ``result.json`` and ``index.html``
    ...             what the recipe writes: models, ``train/train_state`` checkpoints,
                    ``metrics.jsonl``, pictures

:class:`RunFolder` decides where a run writes:

* a folder without a run: the run writes into it;
* a folder with a run: refused unless ``resume`` (continue the unfinished run from its last
  checkpoint, with the same config except :data:`RESUME_MUTABLE` fields) or ``overwrite``
  (the new run writes into ``.<name>.partial`` beside it, which replaces the folder in one
  rename only when the run completes: a failed or interrupted run leaves the old one
  intact);
* the folder's lock (:func:`ar_core.atomic.folder_lock`) is held for the whole run, so a
  second run into the same folder fails at once with a clear error.

:class:`RunControl` is how a driver (the CLI) talks to every :class:`~ar_core.trainer.Trainer`
a recipe builds, without the recipe passing anything along: inside
``with run_control(RunControl(...)):`` each Trainer with an ``out_dir`` resumes from its
``train_state`` when ``resume`` is set, checkpoints every ``checkpoint_every_steps``
updates and every ``checkpoint_every_seconds``, and on Ctrl-C (SIGINT) finishes the
update in flight, saves, and raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``)
naming the checkpoint. ``stop_at_step`` does the same without a signal (tests).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from ar_core.atomic import (
    LockedError,
    atomic_write_text,
    folder_lock,
    fsync_dir,
    lock_path,
    replace_folder,
)
from ar_core.errors import ConfigError
from ar_core.recipes import RECIPE_FILE

__all__ = [
    "RESUME_MUTABLE",
    "RUN_FILE",
    "RunControl",
    "RunFolder",
    "TrainingInterrupted",
    "config_differences",
    "current_control",
    "read_run_file",
    "run_control",
]

RUN_FILE = "run.json"
PARTIAL_SUFFIX = ".partial"
# fields a resumed run may change: how long it trains and how it shows progress / uses
# the machine (steps changes the schedule's length, so such a run is not bit-exact)
RESUME_MUTABLE = frozenset({"steps", "threads", "progress_bar", "progress", "device"})


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C or ``stop_at_step``) after saving a checkpoint."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = f"checkpoint at step {step} in {checkpoint}" if checkpoint else "no checkpoint"
        super().__init__(f"training interrupted after update {step} ({where})")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class RunControl:
    """Settings every Trainer of a run follows (see the module docstring)."""

    resume: bool = False  # Trainers with an out_dir continue from out_dir/train_state
    checkpoint_every_steps: int = 0  # 0: off
    checkpoint_every_seconds: float = 0.0  # 0: off
    catch_sigint: bool = True  # Ctrl-C: finish the update, save, raise TrainingInterrupted
    stop_at_step: int | None = None  # as if Ctrl-C came during this update (tests)
    # filled in by the Trainers: (checkpoint folder, step) of every save, in order
    checkpoints: list[tuple[Path, int]] = field(default_factory=list)
    stop_requested: bool = False

    def last_checkpoint(self) -> tuple[Path, int] | None:
        return self.checkpoints[-1] if self.checkpoints else None


_control: contextvars.ContextVar[RunControl | None] = contextvars.ContextVar(
    "ar_run_control", default=None
)


def current_control() -> RunControl | None:
    """The :class:`RunControl` of the enclosing :func:`run_control` block, if any."""
    return _control.get()


@contextlib.contextmanager
def run_control(control: RunControl) -> Iterator[RunControl]:
    """Every Trainer built inside the block follows ``control``."""
    token = _control.set(control)
    try:
        yield control
    finally:
        _control.reset(token)


# -- configs ----------------------------------------------------------------------------


def config_differences(
    old: dict[str, Any], new: dict[str, Any], *, ignore: frozenset[str] = RESUME_MUTABLE
) -> list[str]:
    """``["lr: 0.003 -> 0.01", ...]`` for every top-level field that differs (but ``ignore``)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ignore:
            continue
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def read_run_file(folder: Path) -> dict[str, Any] | None:
    """The ``run.json`` of ``folder`` (None when there is none or it cannot be read)."""
    try:
        data = json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _status(folder: Path) -> str | None:
    """complete / running / interrupted / failed, or None when ``folder`` holds no run."""
    run = read_run_file(folder)
    if run is not None:
        return str(run.get("status", "running"))
    if (folder / RECIPE_FILE).is_file():
        return "complete"  # a run written before run.json existed
    return None


# -- the run folder ----------------------------------------------------------------------


class RunFolder:
    """One ``ar train`` run's folder: checks, lock, where to write, and the final swap.

    ``with RunFolder(out, recipe=..., config=..., resume=..., overwrite=...) as run:``
    takes the lock and decides ``run.work`` (the folder the recipe writes into) and
    ``run.config`` (the saved one on resume, with the allowed changes applied); call
    ``run.complete()`` after the recipe's results are written into ``run.work``, or
    ``run.interrupted()`` / ``run.failed(error)``.
    """

    def __init__(
        self,
        path: Path,
        *,
        recipe: str,
        config: pydantic.BaseModel,
        resume: bool = False,
        overwrite: bool = False,
        overrides: dict[str, Any] | None = None,
        command: str = "ar train",
    ) -> None:
        if resume and overwrite:
            raise ConfigError("pass --resume or --overwrite, not both")
        self.path = Path(path)
        self.recipe = recipe
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.overrides = overrides or {}
        self.command = command
        self.work = self.path
        self._locked = False

    @property
    def partial(self) -> Path:
        return self.path.with_name(f".{self.path.name}{PARTIAL_SUFFIX}")

    def resume_command(self) -> str:
        return f"ar train {self.recipe} --out {self.path} --resume"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> RunFolder:
        lock = folder_lock(self.path)
        try:
            lock.acquire(timeout=0)
        except Exception:
            owner = read_run_file(self.path) or read_run_file(self.partial) or {}
            pid = f" (pid {owner['pid']})" if "pid" in owner else ""
            raise LockedError(
                f"--out {self.path} is in use by another run{pid} (lock {lock_path(self.path)}); "
                f"wait for it to finish or pass another --out"
            ) from None
        self._locked = True
        try:
            self._choose()
            self._write_run_file("running")
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._locked:
            folder_lock(self.path).release()
            self._locked = False

    def _choose(self) -> None:
        status = _status(self.path)
        if self.resume:
            self._choose_resume(status)
        elif status is None:
            self.work = self.path
        elif self.overwrite:
            if self.partial.exists():  # an earlier --overwrite that did not complete
                shutil.rmtree(self.partial)
            self.partial.mkdir()
            self.work = self.partial
        else:
            owner = read_run_file(self.path) or {}
            name = owner.get("recipe") or self.recipe
            raise ConfigError(
                f"--out {self.path} holds a previous run ({name}, {status}); pass --resume to "
                f"continue it or --overwrite to replace it (the old run stays until the new "
                f"one completes)"
            )

    def _choose_resume(self, status: str | None) -> None:
        candidates = [self.partial, self.path] if _status(self.partial) else [self.path]
        work = candidates[0]
        work_status = _status(work)
        if work_status is None:
            raise ConfigError(
                f"--resume: {self.path} holds no run to resume; run without --resume to start one"
            )
        if work_status == "complete":
            raise ConfigError(
                f"--resume: the run in {self.path} is complete, nothing to resume; pass "
                f"--overwrite to train it again or another --out"
            )
        saved = read_run_file(work) or {}
        if saved.get("recipe") != self.recipe:
            raise ConfigError(
                f"--resume: {self.path} holds a run of recipe {saved.get('recipe')!r}, not "
                f"{self.recipe!r}; resume it with ar train {saved.get('recipe')} --out "
                f"{self.path} --resume"
            )
        cls = type(self.config)
        fields = saved.get("config")
        if not isinstance(fields, dict):
            raise ConfigError(f"--resume: {work / RUN_FILE} holds no config; use --overwrite")
        from ar_core.recipes import build_config

        base = build_config(cls, None, fields)
        config = build_config(cls, base, self.overrides)
        old = base.model_dump(mode="json")
        changed = config_differences(old, config.model_dump(mode="json"))
        if changed:
            raise ConfigError(
                f"--resume: the config differs from the run's ({'; '.join(changed)}); only "
                f"{', '.join(sorted(RESUME_MUTABLE))} may change on resume (or use --overwrite)"
            )
        self.config = config
        self.work = work
        del status

    def _write_run_file(self, status: str, **extra: Any) -> None:
        payload = {
            "recipe": self.recipe,
            "config": self.config.model_dump(mode="json"),
            "status": status,
            "pid": os.getpid(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        atomic_write_text(self.work / RUN_FILE, json.dumps(payload, indent=2))

    def interrupted(self, checkpoint: tuple[Path, int] | None) -> str:
        """Record the interruption; return the message for the user (one line)."""
        self._write_run_file(
            "interrupted",
            checkpoint=None if checkpoint is None else [str(checkpoint[0]), checkpoint[1]],
        )
        if checkpoint is None:
            return (
                f"interrupted before the first checkpoint; start it again with: "
                f"{self.resume_command()}"
            )
        return (
            f"interrupted: checkpoint at update {checkpoint[1]} saved in {checkpoint[0]}; "
            f"resume with: {self.resume_command()}"
        )

    def failed(self, error: str, *, checkpoints: int = 0) -> None:
        """Record the failure. A run that was to replace another is dropped (the old run
        stays as it was); a new run that failed before any checkpoint leaves no run
        behind (the folder can be used again without flags); else ``run.json`` says it
        failed (``--resume`` continues from its last checkpoint)."""
        if self.work == self.partial:
            shutil.rmtree(self.partial, ignore_errors=True)
            return
        if not checkpoints and not self.resume:
            (self.work / RUN_FILE).unlink(missing_ok=True)
            return
        self._write_run_file("failed", error=error)

    def complete(self) -> Path:
        """Mark the run complete; a run written beside the old one now replaces it."""
        from ar_core.recipes import write_recipe_file

        write_recipe_file(self.work, self.recipe, self.config)
        self._write_run_file("complete")
        if self.work != self.path:
            replace_folder(self.work, self.path)
            self.work = self.path
        fsync_dir(self.path)
        return self.path
