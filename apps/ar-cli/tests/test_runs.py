"""Run folders through `ar train`: a reused --out is refused, --overwrite replaces only on
completion, a failed run leaves the old one intact, Ctrl-C checkpoints and --resume is
bit-exact, two runs into one folder: the second is refused."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ar_cli import main as cli
from ar_cli.main import main
from ar_core.runs import RUN_FILE, RunControl

torch.set_num_threads(1)

TINY = [
    "steps=40",
    "batch_size=8",
    "length=6",
    "max_stride=2",
    "eval_sequences=4",
    "dim=16",
    "n_layers=1",
    'orderings=["raster"]',
    "progress_bar=false",
]


def _train(out: Path, *extra: str, sets: list[str] | None = None) -> int:
    argv = ["train", "core-anyorder", "--out", str(out), "--checkpoint-minutes", "0"]
    for s in TINY + (sets or []):
        argv += ["--set", s]
    return main(argv + list(extra))


def _tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _weights(run: Path) -> dict[str, torch.Tensor]:
    model = run / "model"
    out = load_file(str(model / "model.safetensors"))
    out.update({f"2s.{k}": v for k, v in load_file(str(model / "two_stream.safetensors")).items()})
    return out


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "train" / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


@pytest.fixture(autouse=True)
def _core_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR_PLUGINS", "core")  # core-anyorder needs no other package


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of the tiny config."""
    os.environ["AR_PLUGINS"] = "core"
    try:
        out = tmp_path_factory.mktemp("ref") / "run"
        assert _train(out) == 0
    finally:
        os.environ.pop("AR_PLUGINS", None)
    return out


def test_a_reused_out_is_refused_naming_both_flags(reference: Path, tmp_path: Path, capsys):
    before = _tree(reference)
    assert _train(reference) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "holds a previous run" in err and "--resume" in err and "--overwrite" in err
    assert _tree(reference) == before
    assert json.loads((reference / RUN_FILE).read_text())["status"] == "complete"


def test_resume_and_overwrite_together_are_refused(tmp_path: Path, capsys):
    assert _train(tmp_path / "r", "--resume", "--overwrite") == 2
    assert "not both" in capsys.readouterr().err


def test_a_failed_overwrite_leaves_the_old_run(reference: Path, capsys):
    """A run that fails (an unknown ordering, found after the run started) or is refused
    (a config that does not validate) into a good run's folder changes nothing in it."""
    before = _tree(reference)
    assert _train(reference, "--overwrite", sets=['orderings=["no-such-order"]']) == 2
    assert "no-such-order" in capsys.readouterr().err
    assert _train(reference, "--overwrite", sets=["n_heads=3"]) == 2
    assert "n_heads" in capsys.readouterr().err
    assert _tree(reference) == before
    assert not (reference.parent / f".{reference.name}.partial").exists()


def test_overwrite_replaces_the_run_when_it_completes(reference: Path, tmp_path: Path):
    run = tmp_path / "run"
    assert _train(run) == 0
    assert _same_weights(run, reference)  # same config, same weights
    assert _train(run, "--overwrite", sets=["seed=1"]) == 0
    assert json.loads((run / "recipe.json").read_text())["config"]["seed"] == 1
    assert not _same_weights(run, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]


def test_interrupt_then_resume_is_bit_exact(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """Stopped through the Trainer's hook after update 17 (as Ctrl-C would): a checkpoint,
    a message with the resume command, a run that cannot be sampled yet; --resume then
    ends with the uninterrupted run's weights and loss curve, bit for bit."""
    run = tmp_path / "run"
    monkeypatch.setattr(cli, "RunControl", functools.partial(RunControl, stop_at_step=17))
    assert _train(run) == 130
    err = capsys.readouterr().err
    assert "checkpoint at update 17" in err
    assert f"ar train core-anyorder --out {run} --resume" in err
    assert json.loads((run / RUN_FILE).read_text())["status"] == "interrupted"
    assert not (run / "recipe.json").exists()
    assert main(["sample", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    # a plain run into it is refused; a changed config on resume is refused, naming it
    assert _train(run) == 2
    assert "holds a previous run" in capsys.readouterr().err
    monkeypatch.undo()
    assert _train(run, "--resume", sets=["lr=0.01"]) == 2
    assert "lr: 0.003 -> 0.01" in capsys.readouterr().err
    assert _train(run, "--resume") == 0
    assert _same_weights(run, reference)
    assert _losses(run) == _losses(reference)
    assert json.loads((run / RUN_FILE).read_text())["status"] == "complete"


def test_periodic_checkpoints_by_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen: list[RunControl] = []

    def control(**kw: object) -> RunControl:
        seen.append(RunControl(**kw))  # type: ignore[arg-type]
        return seen[-1]

    monkeypatch.setattr(cli, "RunControl", control)
    assert _train(tmp_path / "run", "--checkpoint-every", "15") == 0
    assert [step for _, step in seen[0].checkpoints] == [15, 30, 40]


def _wait_for(predicate, seconds: float, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"ar train ended early:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for ar train")
        time.sleep(0.05)


def test_concurrent_run_refused_then_sigint_and_resume(reference: Path, tmp_path: Path, capsys):
    """A real `ar train` process: a second run into its folder fails at once; SIGINT makes
    it save and print the resume command (exit 130); --resume matches the reference."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "ar_cli", "train", "core-anyorder", "--out", str(run)]
    for s in TINY:
        argv += ["--set", s.replace("steps=40", "steps=200")]  # SIGINT lands inside
    env = {**os.environ, "AR_PLUGINS": "core", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        metrics = run / "train" / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0, 300, proc)
        # the second run, while the first trains
        assert _train(run, "--overwrite", sets=["steps=200"]) == 2
        err = capsys.readouterr().err.strip()
        assert "is in use by another run" in err and f"pid {proc.pid}" in err
        assert len(err.splitlines()) == 1
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert f"resume with: ar train core-anyorder --out {run} --resume" in stderr
    assert "Traceback" not in stderr
    state = json.loads((run / RUN_FILE).read_text())
    assert state["status"] == "interrupted" and state["checkpoint"][1] > 0
    stopped = state["checkpoint"][1]
    assert 0 < stopped < 200
    assert _train(run, "--resume", sets=["steps=200"]) == 0
    straight = tmp_path / "straight"
    assert _train(straight, sets=["steps=200"]) == 0
    assert _same_weights(run, straight)
    assert _losses(run) == _losses(straight)


def test_sample_reads_the_run_and_writes_elsewhere(reference: Path, tmp_path: Path, capsys):
    """`ar sample RUN` leaves RUN byte for byte as it was; every sample goes to RUN-samples
    (samples.txt, index.html, result.json); --out and --set choose the folder and config."""
    before = _tree(reference)
    assert main(["sample", str(reference), "-n", "6"]) == 0
    out = reference.with_name(f"{reference.name}-samples")
    assert _tree(reference) == before
    lines = (out / "samples.txt").read_text().split("\n\n")
    assert len([x for x in lines if x.strip()]) == 6  # 6 samples, one ordering
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "result.json", "samples.txt"]
    assert (
        main(
            [
                "sample",
                str(reference),
                "-n",
                "3",
                "--set",
                'orderings=["reverse","raster"]',
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    text = (tmp_path / "s" / "samples.txt").read_text()
    assert text.count("reverse:") == 3 and text.count("raster:") == 3
    assert _tree(reference) == before
    assert main(["sample", str(reference), "--out", str(reference)]) == 2
    assert "the run itself" in capsys.readouterr().err
