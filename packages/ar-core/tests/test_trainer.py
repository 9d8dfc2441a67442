"""Tests of ar_core.trainer: exact resume in a fresh process, DDP == one process,
the warm-up/cosine schedule, gradient accumulation, and config errors."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ar_core import ConfigError
from ar_core.trainer import STATE_DIR, TrainConfig, Trainer, read_metrics

sys.path.insert(0, str(Path(__file__).parent))
import _trainer_toy as toy

SCRIPT = Path(__file__).parent / "_trainer_toy.py"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as in the script's processes: bitwise-equal float32 sums, and
    these tiny models run faster than with threads that contend for 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parent), env.get("PYTHONPATH", "")])
    return env


def _run_script(args: list[str], *, timeout: float = 120) -> None:
    proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"


def _losses(out_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out_dir) if "loss" in r]


def _params(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / STATE_DIR / "model.safetensors"))


def _config(out_dir: Path | None, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        steps=10,
        batch_size=8,
        lr=3e-2,
        warmup_steps=3,
        log_every=1,
        progress=False,
        eval_every=4,
        eval_batches=2,
        out_dir=None if out_dir is None else str(out_dir),
    )
    base.update(over)
    return base


def test_resume_in_fresh_process_is_exact(tmp_path: Path) -> None:
    """10 updates straight == 4 updates, save, a new process resumes, 6 more (with dropout)."""
    straight, staged = tmp_path / "straight", tmp_path / "staged"
    fields = _config(straight, seed=7)
    trainer = Trainer(
        toy.make_model(dropout=0.3),
        toy.loss_fn,
        toy.train_data,
        TrainConfig(**fields),
        eval_data=toy.train_data,
    )
    trainer.train()

    fields = _config(staged, seed=7)
    first = Trainer(
        toy.make_model(dropout=0.3),
        toy.loss_fn,
        toy.train_data,
        TrainConfig(**fields),
        eval_data=toy.train_data,
    )
    first.train(until=4)
    assert (staged / STATE_DIR).is_dir()
    # an interrupted run may have logged past its last save: resume must drop those lines
    with open(staged / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 123.0}) + "\n")
    _run_script(
        [sys.executable, str(SCRIPT), json.dumps({**fields, "dropout": 0.3, "resume": True})]
    )

    assert _losses(staged) == _losses(straight)
    assert len(_losses(straight)) == 10
    evals = [r["eval_loss"] for r in read_metrics(straight) if "eval_loss" in r]
    assert evals == [r["eval_loss"] for r in read_metrics(staged) if "eval_loss" in r]
    a, b = _params(straight), _params(staged)
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_two_processes_equal_one_process(tmp_path: Path) -> None:
    """torchrun --nproc_per_node 2 (gloo, each rank half the global batch, grad_accum 2)
    gives the losses and parameters of one process on the whole batch."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    fields = _config(single, steps=6, eval_every=0, seed=3)
    Trainer(toy.make_model(), toy.loss_fn, toy.train_data, TrainConfig(**fields)).train()

    _torchrun(_config(ddp, steps=6, eval_every=0, seed=3, grad_accum=2))
    torch.testing.assert_close(
        torch.tensor(_losses(ddp)), torch.tensor(_losses(single)), rtol=1e-5, atol=1e-6
    )
    a, b = _params(single), _params(ddp)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def _torchrun(fields: dict[str, Any], *extra: str) -> None:
    _run_script(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            str(SCRIPT),
            json.dumps(fields),
            *extra,
        ],
        timeout=150,
    )


@pytest.mark.slow  # two torchrun launches of 2 processes: ~56 s of CPU
def test_fsdp_two_processes_equal_one_process_through_save_and_resume(tmp_path: Path) -> None:
    """FSDP2 under torchrun (gloo, 2 CPU processes, grad_accum 2) trains 3 updates, saves
    (the full state gathered onto rank 0), and a second torchrun resumes it for 3 more:
    losses and final parameters equal one process on the whole batch within rtol 1e-5 /
    atol 1e-6 (float32 sums in another order), and each rank held half of every block."""
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    fields = _config(single, steps=6, eval_every=0, seed=3)
    Trainer(toy.make_model(blocks=2), toy.loss_fn, toy.train_data, TrainConfig(**fields)).train()

    sharded = {**_config(fsdp, steps=6, eval_every=0, seed=3, grad_accum=2), "blocks": 2}
    _torchrun({**sharded, "parallel": "fsdp"}, "3")
    assert len(_losses(fsdp)) == 3 and (fsdp / STATE_DIR).is_dir()
    _torchrun({**sharded, "parallel": "fsdp", "resume": True})
    torch.testing.assert_close(
        torch.tensor(_losses(fsdp)), torch.tensor(_losses(single)), rtol=1e-5, atol=1e-6
    )
    a, b = _params(single), _params(fsdp)
    assert a.keys() == b.keys()
    for k in a:  # the saved weights are whole, not one rank's shard
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    shapes = [json.loads((fsdp / f"shards_rank{r}.json").read_text()) for r in (0, 1)]
    full = {k: list(v.shape) for k, v in a.items()}
    for name in ("blocks.0.weight", "blocks.1.weight", "head.weight", "embed.weight"):
        assert shapes[0][name][0] + shapes[1][name][0] == full[name][0], name
        assert shapes[0][name][0] < full[name][0], name  # dim 0 is split between the ranks


@pytest.mark.slow  # a third torchrun launch (~10 s of CPU)
def test_fsdp_refuses_a_checkpoint_saved_without_it(tmp_path: Path) -> None:
    fields = _config(tmp_path, steps=4, eval_every=0, seed=3)
    trainer = Trainer(toy.make_model(blocks=1), toy.loss_fn, toy.train_data, TrainConfig(**fields))
    trainer.train(until=2)
    resumed = {**fields, "blocks": 1, "resume": True, "parallel": "fsdp"}
    with pytest.raises(AssertionError, match="saved without FSDP.*parallel=.ddp"):
        _torchrun(resumed)


def test_warmup_cosine_schedule_matches_formula() -> None:
    lr, steps, warmup, floor = 1e-2, 20, 5, 0.1
    config = TrainConfig(
        steps=steps, batch_size=4, lr=lr, warmup_steps=warmup, min_lr_ratio=floor, progress=False
    )
    trainer = Trainer(toy.make_model(), toy.loss_fn, toy.train_data, config)
    used = []
    for _ in range(steps):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step()

    def expected(s: int) -> float:
        if s < warmup:
            return lr * (s + 1) / warmup
        t = (s - warmup) / (steps - warmup - 1)
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))

    assert used == pytest.approx([expected(s) for s in range(steps)], rel=1e-12)
    assert used[warmup - 1] == pytest.approx(lr) and used[-1] == pytest.approx(floor * lr)


def test_grad_accumulation_equals_full_batch() -> None:
    def run(grad_accum: int) -> tuple[list[float], dict[str, torch.Tensor]]:
        config = TrainConfig(
            steps=4, batch_size=8, grad_accum=grad_accum, lr=3e-2, warmup_steps=1, progress=False
        )
        trainer = Trainer(toy.make_model(), toy.loss_fn, toy.train_data, config)
        return trainer.train(), trainer.model.state_dict()

    losses_full, params_full = run(1)
    losses_acc, params_acc = run(2)
    torch.testing.assert_close(torch.tensor(losses_acc), torch.tensor(losses_full))
    for k in params_full:
        torch.testing.assert_close(params_acc[k], params_full[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", -1.0),
        ("steps", 0),
        ("warmup_steps", 50),  # more than steps
        ("grad_accum", 3),  # batch_size 8 is not a multiple
        ("min_lr_ratio", 1.5),
        ("betas", (0.9, 1.0)),
        ("autocast", "fp8"),
        ("parallel", "zero3"),  # ddp or fsdp
        ("batch_sise", 4),  # unknown field
    ],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    kwargs = {"steps": 10, "batch_size": 8, "warmup_steps": 2, field: value}
    with pytest.raises(ConfigError, match=field):
        TrainConfig.build(**kwargs)


def test_trainer_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval_data"):
        Trainer(toy.make_model(), toy.loss_fn, toy.train_data, TrainConfig(eval_every=5))
    config = TrainConfig(steps=2, batch_size=4, warmup_steps=0, resume=True, out_dir=tmp_path)
    with pytest.raises(Exception, match="does not exist"):
        Trainer(toy.make_model(), toy.loss_fn, toy.train_data, config)


def test_transformer_lm_resume_is_exact(tmp_path: Path) -> None:
    """The reference Transformer as a causal LM: 6 updates straight == 3, resume, 3."""
    from ar_core.model import Transformer, TransformerConfig

    def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch[:, :-1]).logits  # (B, T-1, V)
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )

    def run(out_dir: Path, stages: list[int]) -> list[float]:
        losses: list[float] = []
        for i, until in enumerate(stages):
            torch.manual_seed(0)
            cfg = TransformerConfig(vocab_size=toy.VOCAB, dim=32, n_layers=2, n_heads=4)
            config = TrainConfig(
                **_config(out_dir, steps=6, eval_every=0, resume=i > 0, autocast="off")
            )
            trainer = Trainer(Transformer(cfg), lm_loss, toy.train_data, config)
            losses += trainer.train(until=until)
        return losses

    straight = run(tmp_path / "a", [6])
    assert run(tmp_path / "b", [3, 6]) == straight
    assert straight[-1] < straight[0]


def test_non_finite_loss_stops_with_the_last_good_checkpoint_kept(tmp_path: Path) -> None:
    """A loss that turns NaN at update 3: a NonFiniteError (an ArError) naming the step;
    the update is not applied and train_state/ on disk is still step 2's."""
    from ar_core.errors import ArError, NonFiniteError

    calls = {"n": 0}

    def loss_fn(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = toy.loss_fn(model, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    config = TrainConfig(
        steps=6, batch_size=4, warmup_steps=0, save_every=1, out_dir=tmp_path, progress=False
    )
    trainer = Trainer(toy.make_model(), loss_fn, toy.train_data, config)
    with pytest.raises(NonFiniteError, match=r"loss is nan at step 3, the update was not") as err:
        trainer.train()
    assert isinstance(err.value, ArError) and "last good checkpoint" in str(err.value)
    assert trainer.step == 2 and all(bool(p.isfinite().all()) for p in trainer.model.parameters())
    saved = load_file(str(tmp_path / STATE_DIR / "model.safetensors"))
    for name, tensor in trainer.model.state_dict().items():  # the weights of step 2
        assert torch.equal(saved[name], tensor), name
    resumed = Trainer(toy.make_model(), toy.loss_fn, toy.train_data, config)
    assert resumed.resume() == 2


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "Infinity"])
def test_non_finite_learning_rate_is_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig.build(steps=10, batch_size=8, warmup_steps=2, lr=value)
