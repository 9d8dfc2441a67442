"""The Trainer: one training loop for every step model, in one process or under ``torchrun``.

AdamW (decoupled weight decay, Loshchilov & Hutter 2019, arXiv:1711.05101) with a linear
warm-up and a cosine decay to ``min_lr_ratio * lr`` (SGDR, arXiv:1608.03983), gradient
clipping and accumulation, optional bf16 autocast, periodic evaluation, a tqdm bar,
metrics as JSON lines and atomic, exactly resumable training states.

Data protocol (one, so that resume is exact)::

    train_data(generator: torch.Generator, batch_size: int) -> batch

returns the *global* batch of ``batch_size`` rows, drawing all of its randomness from
``generator``. ``batch`` is a tensor, or a tuple / list / dict of tensors whose first
dimension is the batch. The Trainer owns the generator (seeded with ``config.seed``) and
saves its state with every checkpoint, so the data order after a resume is the one an
uninterrupted run sees. Under DDP every rank draws the same global batch and keeps its
own contiguous shard of rows; with ``grad_accum`` a shard is further split into
micro-batches. Because the loss of each micro-batch is a mean and all shards are equally
large, the update equals the single-process update on the full global batch.

Under ``torchrun`` the Trainer replicates the model with DDP (``parallel="ddp"``, the
default) or shards it with FSDP2 (``parallel="fsdp"``: ``torch.distributed.fsdp.fully_shard``
on every block of the model's ``nn.ModuleList`` s, then on the whole model, over a 1-D mesh
of all ranks; ZeRO-3 style, Zhao et al. "PyTorch FSDP", 2023, arXiv:2304.11277). The data
split, the averaging of gradients and so the updates are the same; FSDP keeps only 1/W of
the parameters, gradients and optimizer state on each rank. Checkpoints gather the full
model and optimizer state onto rank 0 (``torch.distributed.checkpoint.state_dict``): the
model files are the ordinary ones, the optimizer state is keyed by parameter name.

``loss_fn(model, batch) -> scalar loss`` (a mean over the rows of ``batch``); under DDP
``model`` is the ``DistributedDataParallel`` wrapper (under FSDP the sharded model itself). A ``loss_fn`` that also takes a
``step`` keyword receives the number of updates done so far (0 for the first; in
evaluation the current count), for losses with schedules (warm-ups, mixing weights).

Files in ``out_dir`` (only rank 0 writes): ``metrics.jsonl`` (one JSON object per logged
step: ``step, loss, lr, grad_norm, seconds``; eval lines carry ``eval_loss``) and
``train_state/`` (a training checkpoint folder of :mod:`ar_core.checkpoint`, written
atomically: model weights, optimizer, scheduler, RNG states of torch / CUDA / numpy /
python, the step, and the data generator's state).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ar_core.checkpoint import (
    TRAINING_STATE_NAME,
    TrainingState,
    load_training_state,
    save_training_state,
)
from ar_core.errors import CheckpointError, ConfigError, NonFiniteError
from ar_core.runs import RunControl, TrainingInterrupted, config_differences, current_control

Batch = Any  # a tensor, or a tuple / list / dict of tensors with the batch first
DataFn = Callable[[torch.Generator, int], Batch]
LossFn = Callable[..., torch.Tensor]  # loss_fn(model, batch) or loss_fn(model, batch, *, step)

# TrainConfig fields a resume may change (the rest must equal the checkpoint's): how long
# it runs (steps lengthens the schedule: no longer bit-exact), where, and what it logs
RESUME_MAY_CHANGE = frozenset(
    {
        "steps",
        "resume",
        "out_dir",
        "device",
        "progress",
        "log_every",
        "eval_every",
        "eval_batches",
        "save_every",
    }
)

STATE_DIR = "train_state"  # a checkpoint folder of ar_core.checkpoint
METRICS_FILE = "metrics.jsonl"


class TrainConfig(pydantic.BaseModel):
    """Flat training settings; every default says why it is what it is."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)  # lr=inf: refused

    steps: int = pydantic.Field(1000, ge=1)  # optimizer updates; the schedule spans them
    batch_size: int = pydantic.Field(32, ge=1)  # global rows per update, over all ranks
    lr: float = pydantic.Field(3e-4, gt=0)  # the usual AdamW peak for small Transformers
    weight_decay: float = pydantic.Field(0.1, ge=0)  # GPT-style; only on matrices (dim >= 2)
    # also decay vectors (norm gains, biases), as torch.optim.AdamW(model.parameters()) does
    decay_vectors: bool = False
    betas: tuple[float, float] = (0.9, 0.95)  # beta2 0.95 is stabler than 0.999 for LMs
    warmup_steps: int = pydantic.Field(100, ge=0)  # linear warm-up keeps Adam's early steps small
    min_lr_ratio: float = pydantic.Field(0.1, ge=0, le=1)  # cosine floor (Chinchilla uses 0.1)
    grad_clip: float = pydantic.Field(1.0, ge=0)  # max global grad norm; 0 turns clipping off
    grad_accum: int = pydantic.Field(1, ge=1)  # micro-batches per update (memory, not math)
    eval_every: int = pydantic.Field(0, ge=0)  # 0: no periodic eval (needs eval_data)
    eval_batches: int = pydantic.Field(4, ge=1)  # eval batches per eval, same ones every time
    save_every: int = pydantic.Field(0, ge=0)  # 0: save only at the end
    out_dir: Path | None = None  # None: write nothing (tests, notebooks)
    seed: int = 0  # seeds the data generator and the global RNGs
    autocast: Literal["auto", "off", "bf16"] = "auto"  # auto: bf16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda (cuda:LOCAL_RANK under torchrun) if available, else cpu
    log_every: int = pydantic.Field(10, ge=1)  # metrics.jsonl line every this many steps
    progress: bool = True  # a tqdm bar on rank 0
    resume: bool = False  # continue from out_dir/train_state (an error if there is none)
    # under torchrun: replicate (DDP) or shard (FSDP2) the model; one process ignores it
    parallel: Literal["ddp", "fsdp"] = "ddp"

    @pydantic.field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"both betas must lie in [0, 1), got {v}")
        return v

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.warmup_steps > self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps}); lower warmup_steps"
            )
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})"
            )
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir, the folder that holds train_state/")
        return self

    @classmethod
    def build(cls, **kwargs: Any) -> TrainConfig:
        """Validate ``kwargs``; a bad value raises a one-line ConfigError naming the field."""
        try:
            return cls(**kwargs)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid TrainConfig: {problems}") from None


def lr_factor(step: int, *, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of ``lr`` for update ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps``; then a cosine from
    1 down to ``min_lr_ratio`` at the last update ``steps - 1``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = steps - warmup_steps
    if decay_steps <= 1:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (decay_steps - 1))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# -- distributed --------------------------------------------------------------------


class DistInfo(pydantic.BaseModel):
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """Rank, world size and local rank as ``torchrun`` sets them (single process if unset)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as exc:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc})") from None


def _resolve_device(name: str, info: DistInfo) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank if info.enabled else 0)
    return torch.device("cpu")


def _init_distributed(info: DistInfo, device: torch.device) -> None:
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


# -- batches --------------------------------------------------------------------------


def _map_batch(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: _map_batch(v, fn) for k, v in batch.items()}
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        items = [_map_batch(v, fn) for v in batch]
        return tuple(items) if isinstance(batch, tuple) else items
    return batch  # non-tensor leaves (metadata) are shared by every shard


def _tensors(batch: Batch) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        for v in batch:
            yield from _tensors(v)


def _batch_rows(batch: Batch) -> int:
    rows = {int(t.shape[0]) for t in _tensors(batch)}
    if not rows:
        raise ConfigError(
            "train_data returned a batch without tensors; return tensors, batch first"
        )
    if len(rows) > 1:
        raise ConfigError(f"batch tensors disagree on the number of rows: {sorted(rows)}")
    return rows.pop()


def _shard(batch: Batch, index: int, parts: int) -> Batch:
    """Rows ``[index * n / parts, (index + 1) * n / parts)`` of every tensor in ``batch``."""
    rows = _batch_rows(batch)
    if rows % parts:
        raise ConfigError(
            f"a batch of {rows} rows cannot be split into {parts} equal parts "
            f"(world_size x grad_accum); make batch_size a multiple of {parts}"
        )
    size = rows // parts
    return _map_batch(batch, lambda t: t[index * size : (index + 1) * size])


def _takes_step(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a ``step`` keyword (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(
        (p.name == "step" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        or p.kind == p.VAR_KEYWORD
        for p in params
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- the Trainer ---------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` on ``loss_fn(model, train_data(generator, batch_size))``.

    ``trainer.train()`` runs up to ``config.steps`` updates and returns the loss of every
    update it ran (rank-averaged); ``trainer.resume(out_dir)`` loads a saved state first.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_data: DataFn,
        config: TrainConfig,
        eval_data: DataFn | None = None,
    ) -> None:
        if not callable(train_data):
            raise ConfigError(
                "train_data must be a callable train_data(generator, batch_size) -> batch; "
                "wrap a dataset in a function that samples rows with the generator"
            )
        if config.eval_every and eval_data is None:
            raise ConfigError("eval_every > 0 needs eval_data; pass eval_data or set eval_every=0")
        self.config = config
        self.loss_fn = loss_fn
        self._loss_takes_step = _takes_step(loss_fn)
        self.train_data = train_data
        self.eval_data = eval_data
        self.dist = dist_info_from_env()
        self.device = _resolve_device(config.device, self.dist)
        _init_distributed(self.dist, self.device)
        if config.batch_size % (self.dist.world_size * config.grad_accum):
            raise ConfigError(
                f"batch_size ({config.batch_size}) must be a multiple of world_size x grad_accum "
                f"({self.dist.world_size} x {config.grad_accum})"
            )
        _seed_everything(config.seed)

        self.model = model.to(self.device)  # the bare module (saved, evaluated)
        self.train_model: nn.Module = self.model
        self.sharded = self.dist.enabled and config.parallel == "fsdp"
        if self.sharded:
            _fully_shard(self.model, self.device, self.dist)  # in place: DTensor parameters
        elif self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)

        floor = 0 if config.decay_vectors else 2  # the smallest dim that is decayed
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= floor]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < floor]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
            betas=config.betas,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(
                s,
                steps=config.steps,
                warmup_steps=config.warmup_steps,
                min_lr_ratio=config.min_lr_ratio,
            ),
        )
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.step = 0  # updates done
        self.history: list[dict[str, Any]] = []  # records logged (also in metrics.jsonl)
        self.autocast_dtype = self._autocast_dtype()
        # a driver's settings (ar_core.runs.run_control: the CLI's --resume, periodic
        # checkpoints, Ctrl-C), read once here
        self.control: RunControl | None = current_control()
        self._last_save = time.monotonic()
        if config.resume:
            self.resume()
        elif self.control is not None and config.out_dir is not None:
            if self.control.resume and (config.out_dir / STATE_DIR).is_dir():
                self.resume()
            elif self.dist.is_main:  # a run from step 0: lines an earlier attempt logged go
                self._truncate_metrics(config.out_dir / METRICS_FILE, 0)

    # -- setup helpers --------------------------------------------------------------
    def _autocast_dtype(self) -> torch.dtype | None:
        mode = self.config.autocast
        if mode == "off" or (mode == "auto" and self.device.type != "cuda"):
            return None
        if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            if mode == "bf16":
                raise ConfigError(f"{self.device} has no bf16 support; set autocast='off'")
            return None
        return torch.bfloat16

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: Batch) -> Batch:
        return _map_batch(batch, lambda t: t.to(self.device, non_blocking=True))

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        if self.dist.enabled:
            value = value.detach().clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.dist.world_size
        return float(value)

    # -- the loop -----------------------------------------------------------------------
    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if self._loss_takes_step:
            return self.loss_fn(model, batch, step=self.step)  # type: ignore[call-arg]
        return self.loss_fn(model, batch)

    def train_step(self) -> tuple[float, float]:
        """One update on the next global batch; returns (loss, grad norm before clipping)."""
        cfg = self.config
        self.train_model.train()
        batch = self.train_data(self.data_generator, cfg.batch_size)
        shard = _shard(batch, self.dist.rank, self.dist.world_size)  # (B / W, ...)
        total = torch.zeros((), device=self.device)
        for i in range(cfg.grad_accum):
            micro = self._to_device(_shard(shard, i, cfg.grad_accum))  # (B / W / A, ...)
            last = i == cfg.grad_accum - 1
            if self.sharded:  # FSDP2: reduce-scatter the gradients on the last micro-batch
                self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            sync = (
                contextlib.nullcontext()
                if last or not self.dist.enabled or self.sharded
                else self.train_model.no_sync()  # type: ignore[operator]
            )
            with sync:
                with self._autocast():
                    loss = self._loss(self.train_model, micro)
                if loss.dim() != 0:
                    raise ConfigError(
                        f"loss_fn returned shape {tuple(loss.shape)}; it must return a scalar "
                        f"(take .mean() over the batch)"
                    )
                (loss.float() / cfg.grad_accum).backward()
            total += loss.detach().float()
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
        loss_value = self._mean_over_ranks(total / cfg.grad_accum)  # the same on every rank
        if isinstance(norm, DTensor):  # FSDP: the norm of the sharded gradients, replicated
            norm = norm.full_tensor()
        norm_value = float(norm)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            # refuse the update: the weights (and any saved state) stay the last good ones
            self.optimizer.zero_grad(set_to_none=True)
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            value = loss_value if what == "loss" else norm_value
            kept = (
                f"; the last good checkpoint in {self.config.out_dir / STATE_DIR} is kept"
                if self.config.out_dir is not None and (self.config.out_dir / STATE_DIR).exists()
                else ""
            )
            raise NonFiniteError(
                f"{what} is {value} at step {self.step + 1}, the update was not applied{kept}: "
                f"lower lr, enable grad_clip, or check the data and loss_fn for NaN/inf"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return loss_value, norm_value

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over ``eval_batches`` batches drawn from a fixed-seed generator."""
        if self.eval_data is None:
            raise ConfigError("evaluate() needs eval_data; pass it to Trainer(...)")
        cfg = self.config
        self.model.eval()
        generator = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches every eval
        total = torch.zeros((), device=self.device)
        for _ in range(cfg.eval_batches):
            batch = self.eval_data(generator, cfg.batch_size)
            shard = self._to_device(_shard(batch, self.dist.rank, self.dist.world_size))
            with self._autocast():
                total += self._loss(self.model, shard).float()
        self.model.train()
        return self._mean_over_ranks(total / cfg.eval_batches)

    def train(self, until: int | None = None) -> list[float]:
        """Run updates up to ``until`` (default ``config.steps``); returns their losses.

        ``until`` stops early without changing the schedule (a staged run); a later
        ``train()`` or a resumed Trainer carries on from there.
        """
        cfg = self.config
        end = cfg.steps if until is None else min(until, cfg.steps)
        losses: list[float] = []
        bar = self._progress_bar(end)
        start = time.perf_counter()
        with self._sigint_stops():
            try:
                self._loop(end, losses, bar, start)
            finally:
                if bar is not None:
                    bar.close()
        if cfg.out_dir is not None and losses:
            self.save()
        if self.control is not None and self.control.stop_requested:
            self._stop()
        return losses

    def _loop(self, end: int, losses: list[float], bar: Any, start: float) -> None:
        cfg = self.config
        while self.step < end:
            loss, norm = self.train_step()
            losses.append(loss)
            record: dict[str, Any] = {}
            if self.step % cfg.log_every == 0 or self.step == end:
                record = {
                    "step": self.step,
                    "loss": loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": norm,
                    "seconds": round(time.perf_counter() - start, 3),
                }
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                record = {"step": self.step, **record, "eval_loss": self.evaluate()}
            if record:
                self._log(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
            if self.control is not None and cfg.out_dir is not None:
                self._follow_control(end)

    # -- the driver's control: periodic checkpoints, Ctrl-C ----------------------------
    def _follow_control(self, end: int) -> None:
        ctl = self.control
        assert ctl is not None
        if ctl.stop_at_step is not None and self.step >= ctl.stop_at_step:
            ctl.stop_requested = True
        by_steps = bool(ctl.checkpoint_every_steps and self.step % ctl.checkpoint_every_steps == 0)
        by_time = bool(
            ctl.checkpoint_every_seconds
            and time.monotonic() - self._last_save >= ctl.checkpoint_every_seconds
        )
        if self.dist.enabled:  # every rank must take the same decision (save has a barrier)
            flags = torch.tensor([float(ctl.stop_requested), float(by_time)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            ctl.stop_requested, by_time = bool(flags[0]), bool(flags[1])
        if ctl.stop_requested:
            if self.step < end:  # at the end, train() saves (and stops) anyway
                self.save()
                self._stop()
            return
        if (by_steps or by_time) and self.step < end:
            self.save()

    def _stop(self) -> None:
        ctl = self.control
        last = ctl.last_checkpoint() if ctl is not None else None
        raise TrainingInterrupted(self.step, last[0] if last else None)

    @contextlib.contextmanager
    def _sigint_stops(self) -> Iterator[None]:
        """While training under a RunControl with ``catch_sigint``, the first Ctrl-C asks
        for a stop after the update in flight (saved, then TrainingInterrupted); a second
        one interrupts at once."""
        ctl = self.control
        import signal
        import threading

        if (
            ctl is None
            or not ctl.catch_sigint
            or self.config.out_dir is None
            or threading.current_thread() is not threading.main_thread()
        ):
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if ctl.stop_requested:
                raise KeyboardInterrupt
            ctl.stop_requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _progress_bar(self, end: int) -> Any:
        if not (self.config.progress and self.dist.is_main) or self.step >= end:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=end, initial=self.step, desc="train", dynamic_ncols=True)

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        out = self.config.out_dir
        if out is None or not self.dist.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        with open(out / METRICS_FILE, "a") as f:  # one write of one line: an atomic append
            f.write(json.dumps(record) + "\n")

    # -- checkpoints ------------------------------------------------------------------
    def save(self, out_dir: Path | None = None) -> Path | None:
        """Write ``out_dir/train_state`` atomically (rank 0 only); returns its path there."""
        folder = Path(out_dir) if out_dir is not None else self.config.out_dir
        if folder is None:
            raise ConfigError("save() needs a folder: set out_dir in TrainConfig or pass one")
        path = folder / STATE_DIR
        model: Any = self.model
        optimizer: Any = self.optimizer
        if self.sharded:  # every rank takes part in gathering the full state onto rank 0
            model, optimizer = _gathered_state(self.model, self.optimizer)
        if self.dist.is_main:
            save_training_state(
                path,
                model=model,
                step=self.step,
                optimizer=optimizer,
                scheduler=self.scheduler,
                extra={
                    "data_generator": self.data_generator.get_state(),
                    "config": self.config.model_dump(mode="json"),
                },
            )
        if self.dist.enabled:
            dist.barrier()
        self._last_save = time.monotonic()
        if self.control is not None:
            self.control.checkpoints.append((path, self.step))
        return path if self.dist.is_main else None

    def resume(self, out_dir: Path | None = None) -> int:
        """Load ``out_dir/train_state`` (default ``config.out_dir``); returns its step.

        Restores the model, optimizer, scheduler, data position and RNG states (every rank
        gets rank 0's), and drops lines of ``metrics.jsonl`` logged after that step (they
        will be logged again).
        """
        folder = Path(out_dir) if out_dir is not None else self.config.out_dir
        if folder is None:
            raise ConfigError("resume() needs a folder: set out_dir in TrainConfig or pass one")
        path = folder / STATE_DIR
        if not path.is_dir():
            raise CheckpointError(f"{path} does not exist; train once with out_dir={folder}")
        if self.sharded:
            state = _load_sharded(path, self.model, self.optimizer, self.scheduler)
        else:
            state = load_training_state(
                path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
            )
        saved = state.extra.get("config")
        if isinstance(saved, dict):
            saved.setdefault("parallel", "ddp")  # states saved before the field existed
            changed = config_differences(
                saved, self.config.model_dump(mode="json"), ignore=RESUME_MAY_CHANGE
            )
            if changed:
                raise CheckpointError(
                    f"{path} was trained with another TrainConfig ({'; '.join(changed)}); "
                    f"resume with the same settings (only {', '.join(sorted(RESUME_MAY_CHANGE))} "
                    f"may change) or train into another out_dir"
                )
        self.data_generator.set_state(state.extra["data_generator"])
        self.step = state.step
        if self.dist.is_main:
            self._truncate_metrics(folder / METRICS_FILE, self.step)
        if self.dist.enabled:
            dist.barrier()
        return self.step

    @staticmethod
    def _truncate_metrics(path: Path, step: int) -> None:
        if not path.is_file():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        if len(kept) != len(lines):
            from ar_core.recipes import atomic_write_text

            atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    def close(self) -> None:
        """Leave the process group this Trainer started (call at the end of a torchrun script)."""
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()


# -- FSDP2 ----------------------------------------------------------------------------


def _fully_shard(model: nn.Module, device: torch.device, info: DistInfo) -> None:
    """Shard ``model`` in place with FSDP2 over all ranks: each element of every
    ``nn.ModuleList`` (the blocks) is its own unit, deepest first, then the root (which
    keeps the rest: embeddings, final norm, output head, tied weights)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("parallel='fsdp' needs a model with trainable parameters")
    mesh = init_device_mesh(device.type, (info.world_size,))
    blocks = [m for ml in model.modules() if isinstance(ml, nn.ModuleList) for m in ml]
    order = {id(m): i for i, m in enumerate(model.modules())}
    shared = _shared_parameter_ids(model)
    for block in sorted(blocks, key=lambda m: -order[id(m)]):  # children before parents
        if not any(id(p) in shared for p in block.parameters()):  # tied ones stay at the root
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters reachable under more than one name (tied weights)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


class _StateHolder:
    """What :func:`save_training_state` / :func:`load_training_state` read from a model or
    optimizer (``state_dict()``, a model's ``cfg``), over a plain dict."""

    def __init__(self, state: dict[str, Any], cfg: Any = None) -> None:
        self._state, self.cfg = state, cfg

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def parameters(self) -> Iterator[torch.Tensor]:
        return (v for v in self._state.values() if isinstance(v, torch.Tensor))


def _gathered_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
    """Full (unsharded, CPU) model and optimizer state of an FSDP model, as holders; a
    collective: every rank calls it (the tensors arrive on rank 0)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    return _StateHolder(weights, getattr(model, "cfg", None)), _StateHolder(optim)


def _load_sharded(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainingState:
    """Restore a training state saved by an FSDP run into the sharded ``model`` and
    ``optimizer``: every rank reads the full tensors and keeps its own shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    # full-size CPU buffers (DTensor shapes are the global ones) the checked load fills
    holder = _StateHolder(
        {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    )
    state = load_training_state(path, model=holder, scheduler=scheduler)  # type: ignore[arg-type]
    set_model_state_dict(model, holder.state_dict(), options=options)
    payload = torch.load(path / TRAINING_STATE_NAME, map_location="cpu", weights_only=True)
    optim = payload.get("optimizer")
    if not isinstance(optim, dict) or not all(isinstance(k, str) for k in optim.get("state", {})):
        raise CheckpointError(
            f"{path} was saved without FSDP (its optimizer state is keyed by index, not by "
            f"parameter name); resume it with parallel='ddp' or in one process"
        )
    set_optimizer_state_dict(model, optimizer, optim, options=options)
    return state


def read_metrics(out_dir: Path) -> Iterator[dict[str, Any]]:
    """The records of ``out_dir/metrics.jsonl``, in order."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
