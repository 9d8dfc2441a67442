"""The error contract, walked as a table: every user mistake, through the ``ar`` command or
the Python API, ends in one line that names the problem and the fix; the command exits 2,
the API raises an ``ArError`` subclass. No traceback, no pydantic dump, no raw error of a
library. CLI cases fail at validation, before any training (the whole table takes seconds).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ar_cli.main import main
from ar_core import plugins
from ar_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_model, save_model
from ar_core.errors import ArError, CheckpointError, ConfigError, InputError, UnknownNameError
from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.recipes import build_config, torch_threads, write_recipe_file
from ar_core.recipes.anyorder import AnyOrderConfig, build_model
from ar_core.steps import TWO_STREAM_FILE, TwoStreamStepModel
from ar_core.trainer import TrainConfig

TRAIN = ["train", "core-anyorder"]


def _file(tmp: Path) -> str:
    (tmp / "a-file").write_text("not a folder")
    return str(tmp / "a-file")


def _read_only(tmp: Path) -> str:
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only filesystem
        return "/proc/ar-out"
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder / "run")


def _run_folder(tmp: Path, damage: str) -> str:
    """A folder as `ar train core-anyorder` leaves it, with one file damaged."""
    run = tmp / "run"
    config = AnyOrderConfig(dim=16, n_heads=2, n_layers=1, length=6, vocab_size=6, max_stride=2)
    write_recipe_file(run, "core-anyorder", config)
    build_model(config).save_pretrained(run / "model")
    if damage == "recipe.json":
        (run / "recipe.json").write_text('{"recipe": "core-anyorder", "conf')
    elif damage == "recipe-unknown":
        (run / "recipe.json").write_text(json.dumps({"recipe": "no-such", "config": {}}))
    elif damage == "recipe-fields":
        (run / "recipe.json").write_text(
            json.dumps({"recipe": "core-anyorder", "config": {"x": 1}})
        )
    elif damage == "nan":  # one NaN weight, saved as training would have saved it
        model = TwoStreamStepModel.from_pretrained(run / "model")
        with torch.no_grad():
            model.transformer.layers[0].attn.wqkv.weight[0, 0] = float("nan")
        model.save_pretrained(run / "model")
    elif damage == "n_heads":  # config.json edited: n_heads 2 -> 4 (the weights' shapes fit)
        cfg = json.loads((run / "model" / CONFIG_NAME).read_text())
        (run / "model" / CONFIG_NAME).write_text(json.dumps({**cfg, "n_heads": 4}))
    else:
        path = run / "model" / damage
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage.endswith("safetensors") else b"{")
    return str(run)


# (argv, or a function of tmp_path giving it; a phrase of the one-line message)
CLI: list[tuple[Any, str]] = [
    (["train", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["bench", "no-such-benchmark"], "unknown benchmark 'no-such-benchmark'"),
    (["sample", "/no/such/folder"], "is not a folder"),
    (["no-such-command"], "No such command"),
    (["train"], "Missing argument"),
    (["sample", "/tmp", "-n", "0"], "-n"),
    (["demo", "--only", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    ([*TRAIN, "--set", "n_heads=3"], "dim=64 is not divisible by n_heads=3"),
    ([*TRAIN, "--set", "n_heads=64"], "head dimension"),
    ([*TRAIN, "--set", "dim=20", "--set", "n_heads=3"], "dim=20 is not divisible"),
    ([*TRAIN, "--set", "lr=Infinity"], "lr=inf is not a finite number"),
    ([*TRAIN, "--set", "lr=-Infinity"], "lr"),
    ([*TRAIN, "--set", "lr=NaN"], "lr"),
    ([*TRAIN, "--set", "lr=-1"], "lr"),
    ([*TRAIN, "--set", "temperature=Infinity"], "temperature=inf is not a finite number"),
    ([*TRAIN, "--set", "threads=100000"], "threads=100000 is out of range"),
    ([*TRAIN, "--set", "threads=-1"], "threads"),
    ([*TRAIN, "--set", "orderings=[]"], "orderings is empty"),
    ([*TRAIN, "--set", "steps=0"], "steps"),
    ([*TRAIN, "--set", "batch_size=0"], "batch_size"),
    ([*TRAIN, "--set", "vocab_size=3"], "vocab_size"),
    ([*TRAIN, "--set", "max_stride=100"], "max_stride (100) must be below vocab_size"),
    ([*TRAIN, "--set", "length=1000"], "length"),
    ([*TRAIN, "--set", "dim=abc"], "dim"),
    ([*TRAIN, "--set", "no_such_field=1"], "no_such_field"),
    ([*TRAIN, "--set", "lr"], "--set expects key=value"),
    ([*TRAIN, "--set", "=3"], "--set expects key=value"),
    (lambda t: [*TRAIN, "--out", _file(t)], "is a file, not a folder"),
    ([*TRAIN, "--out", "/dev/null"], "/dev/null is a file, not a folder"),
    (lambda t: [*TRAIN, "--out", _read_only(t)], "cannot be written"),
    (lambda t: ["demo", "--out", _file(t)], "is a file, not a folder"),
    (lambda t: ["sample", str(t)], "holds no recipe.json"),
    (lambda t: ["sample", _run_folder(t, "recipe.json")], "recipe.json is corrupted"),
    (lambda t: ["sample", _run_folder(t, "recipe-unknown")], "unknown recipe 'no-such'"),
    (lambda t: ["sample", _run_folder(t, "recipe-fields")], "recipe.json holds no valid"),
    (lambda t: ["sample", _run_folder(t, TWO_STREAM_FILE)], "two_stream.safetensors is damaged"),
    (lambda t: ["sample", _run_folder(t, WEIGHTS_NAME)], "model.safetensors"),
    (lambda t: ["sample", _run_folder(t, CONFIG_NAME)], "config.json is not valid JSON"),
    (lambda t: ["sample", _run_folder(t, "nan")], "wqkv.weight holds 1 NaN/inf values"),
    (lambda t: ["sample", _run_folder(t, "n_heads")], "n_heads=4 but the weights were saved"),
    (["train", "core-anyorder", "--no-such-option"], "No such option"),
    (["train", "core-anyorder", "--resume", "--overwrite"], "not both"),
    (lambda t: ["sample", str(t), "--out", str(t)], "holds no recipe.json"),
]


USAGE = {
    "No such command",
    "Missing argument",
    "-n",
    "No such option",
}  # typer's parser reports these


@pytest.mark.parametrize(("argv", "phrase"), CLI)
def test_cli_mistake_exits_2_with_one_line(argv, phrase, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AR_PLUGINS", "core")  # nothing else can print a warning
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal must not wrap the line
    plugins.reset()
    args = argv(tmp_path) if callable(argv) else argv
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], captured.err  # one line, last
    assert phrase in errors[0], errors  # (progress lines such as "loading ..." may precede)
    if phrase in USAGE:  # typer's own usage errors, as one line too (no usage block)
        assert len(lines) == 1 and "--help" in lines[0], captured.err


def _model() -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=16, dim=16, n_layers=1, n_heads=2, max_seq_len=32)
    return Transformer(cfg).eval()


def _saved(tmp: Path, damage: str) -> Path:
    folder = save_model(_model(), tmp / "m")
    path = folder / damage
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == WEIGHTS_NAME else b'{"dim": 1')
    return folder


def _two_stream(tmp: Path) -> Path:
    config = AnyOrderConfig(dim=16, n_heads=2, n_layers=1, length=6, vocab_size=6, max_stride=2)
    folder = build_model(config).save_pretrained(tmp / "ts")
    path = Path(folder) / TWO_STREAM_FILE
    path.write_bytes(path.read_bytes()[:40])
    return Path(folder)


X = torch.zeros(2, 3, dtype=torch.long)
TC = {"vocab_size": 16, "dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32}

# (call of tmp_path, the ArError subclass, a phrase of the message)
API: list[tuple[Callable[[Path], Any], type[ArError], str]] = [
    (lambda t: GenerationConfig(max_new_tokens=-1), ConfigError, "max_new_tokens"),
    (lambda t: GenerationConfig(temperature=float("inf")), ConfigError, "temperature"),
    (lambda t: GenerationConfig(top_p=2.0), ConfigError, "top_p"),
    (lambda t: GenerationConfig(max_new_tokns=3), ConfigError, "max_new_tokns"),
    (lambda t: TransformerConfig(**{**TC, "n_heads": 3}), ConfigError, "not divisible by n_heads"),
    (lambda t: TransformerConfig(**{**TC, "n_kv_heads": 3}), ConfigError, "n_kv_heads"),
    (lambda t: TransformerConfig(**{**TC, "rope_theta": float("nan")}), ConfigError, "rope_theta"),
    (lambda t: generate(_model(), X[:0]), InputError, "empty batch"),
    (lambda t: generate(_model(), X, bogus=1), ConfigError, "takes no argument 'bogus'"),
    (lambda t: generate(_model(), X, strategy="sample", topk=3), ConfigError, "'topk'"),
    (lambda t: generate(_model(), X.float()), InputError, "long tensor"),
    (lambda t: generate(_model(), X[:, :0]), InputError, "at least one prompt token"),
    (lambda t: generate(_model(), X, strategy="nope"), UnknownNameError, "unknown strategy"),
    (lambda t: generate(_model(), X, prompt_lengths=[0, 3]), InputError, "prompt_lengths"),
    (
        lambda t: generate(_model(), X, config={"max_new_tokens": 2}),
        ConfigError,
        "GenerationConfig",
    ),
    (lambda t: TrainConfig.build(lr=float("inf")), ConfigError, "lr"),
    (lambda t: TrainConfig.build(steps=5, warmup_steps=10), ConfigError, "warmup_steps"),
    (lambda t: load_model(_saved(t, WEIGHTS_NAME)), CheckpointError, "model.safetensors"),
    (lambda t: load_model(_saved(t, CONFIG_NAME)), CheckpointError, "not valid JSON"),
    (lambda t: load_model(t / "missing"), CheckpointError, "missing"),
    (lambda t: TwoStreamStepModel.from_pretrained(_two_stream(t)), CheckpointError, "damaged"),
    (lambda t: torch_threads(100_000).__enter__(), ConfigError, "threads=100000"),
    (lambda t: build_config(AnyOrderConfig, None, {"n_heads": 3}), ConfigError, "n_heads=3"),
    (lambda t: build_config(AnyOrderConfig, None, {"lr": float("inf")}), ConfigError, "lr=inf"),
]


@pytest.mark.parametrize(("call", "error", "phrase"), API)
def test_api_mistake_raises_one_line_ar_error(call, error, phrase, tmp_path):
    with pytest.raises(ArError) as info:
        call(tmp_path)
    assert isinstance(info.value, error), repr(info.value)
    message = str(info.value)
    assert phrase in message and "\n" not in message, message


def test_the_table_is_long_enough():
    assert len(CLI) + len(API) >= 40


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
