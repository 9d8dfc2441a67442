"""Recipe ``text-stargraph`` end to end on tiny settings: files, numbers that agree with a
recomputation from the saved models, curves, samples, refused checkpoints and configs."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ar_core.errors import CheckpointError, ConfigError
from ar_core.recipes import Recipe, RecipeResult, build_config, torch_threads, write_recipe_file
from ar_text.recipes.stargraph import (
    AR_DIR,
    ILM_DIR,
    TRAINERS,
    StarGraphConfig,
    ar_paths,
    graph_arms,
    held_out_graphs,
    ilm_paths,
    load_ar,
    load_ilm,
    recipe,
)
from ar_text.stargraph import StarGraph, ar_path_accuracy, ilm_path_accuracy

# degree 2, arm 1: the path is (start, goal), both in the prompt, so 60 updates already
# give both models a non-zero accuracy (AR about 0.9, the ILM about 0.5), which makes the
# recomputation checks below meaningful
TINY = dict(
    degree=2,
    arm_len=1,
    steps=60,
    eval_every=20,
    lr=3e-3,
    batch_size=16,
    n_test=40,
    n_show=2,
    progress_bar=False,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The checks outside ``run``/``sample`` too: tiny models on 2 threads mostly contend."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StarGraphConfig, RecipeResult]:
    out = tmp_path_factory.mktemp("stargraph")
    config = StarGraphConfig(**TINY)  # type: ignore[arg-type]
    write_recipe_file(out, recipe.name, config)
    messages: list[str] = []
    result = recipe.run(config, out, messages.append)
    assert any("ar step 60" in m for m in messages) and any("ilm step 60" in m for m in messages)
    return out, config, result


def test_files_and_table(trained: tuple[Path, StarGraphConfig, RecipeResult]) -> None:
    out, config, result = trained
    for sub in (AR_DIR, ILM_DIR):
        assert (out / sub / "config.json").is_file() and (out / sub / "model.safetensors").is_file()
    table = result.tables[0]
    rows = {r[0]: dict(zip(table.columns, r, strict=True)) for r in table.rows}
    assert list(rows) == ["ar", "ilm"]
    for name, row in rows.items():
        acc = row["path accuracy"]
        assert row["steps"] == 60 and row["1/degree"] == 0.5
        assert row["+- s.e."] == pytest.approx(math.sqrt(acc * (1 - acc) / 40), abs=1e-4)
        # the loss column is the last training step's loss: a second Trainer of the same
        # settings reproduces it
        again = TRAINERS[name](
            config.task(),
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
        )
        again.config.progress = False
        assert row["loss"] == round(again.train()[-1], 4)
        # the curve has one point per evaluation step and ends at the table's number
        curve = result.curves[f"{name} path accuracy"]
        assert [x for x, _ in curve] == [20.0, 40.0, 60.0]
        assert curve[-1][1] == pytest.approx(acc, abs=1e-4)
        assert result.metrics[f"{name}_accuracy"] == acc
    by_step = result.tables[1]
    assert by_step.columns == ["step", "ar", "ilm"]
    assert [r[0] for r in by_step.rows] == [20, 40, 60]
    assert by_step.rows[-1][1:] == [rows["ar"]["path accuracy"], rows["ilm"]["path accuracy"]]
    # both learned something, so the recomputation below compares non-trivial numbers
    assert rows["ar"]["path accuracy"] > 0 and rows["ilm"]["path accuracy"] > 0


def test_table_matches_reloaded_models(
    trained: tuple[Path, StarGraphConfig, RecipeResult],
) -> None:
    """The reported accuracy is what the saved models score on the same held-out graphs."""
    out, config, result = trained
    task = config.task()
    test = held_out_graphs(task, config.n_test)
    assert torch.equal(test, task.sample(torch.Generator().manual_seed(12345), config.n_test))
    ar = load_ar(out / AR_DIR, task)
    ilm = load_ilm(out / ILM_DIR, task)
    acc = {r[0]: r[2] for r in result.tables[0].rows}
    ar_acc = ar_path_accuracy(ar, task, test)
    ilm_acc = ilm_path_accuracy(ilm, task, test, torch.Generator().manual_seed(0))
    assert round(ar_acc, 4) == acc["ar"]
    assert round(ilm_acc, 4) == acc["ilm"]
    # the paths shown in samples decode the same way the accuracy functions do
    truth = test[:, task.prompt_len :].tolist()
    ar_p = ar_paths(ar, task, test)
    ilm_p, built = ilm_paths(ilm, task, test)
    ar_right = sum(p == t for p, t in zip(ar_p, truth, strict=True))
    ilm_right = sum(p == t for p, t in zip(ilm_p, truth, strict=True))
    assert ar_right / len(truth) == pytest.approx(ar_acc, abs=1e-6)
    assert ilm_right / len(truth) == pytest.approx(ilm_acc, abs=1e-6)
    for path, states in zip(ilm_p, built, strict=True):
        # one state per insertion, each one node longer, each inside the next, the last
        # the decoded path
        assert [len(s) for s in states] == list(range(1, len(path) + 1))
        assert states[-1] == path if path else states == []
        for a, b in itertools.pairwise(states):
            assert any(b[:i] + b[i + 1 :] == a for i in range(len(b)))


def test_sample_reloads_and_shows_the_same_graphs(
    trained: tuple[Path, StarGraphConfig, RecipeResult],
) -> None:
    out, _config, result = trained
    sampled = recipe.sample(out, 2, lambda _: None)
    assert sampled.samples == result.samples  # same graphs, same decoded paths
    more = recipe.sample(out, 4, lambda _: None)
    assert len(more.samples) == 4 and more.samples[0].startswith("graph 0")
    rows = {r[0]: r for r in more.tables[0].rows}
    assert set(rows) == {"ar", "ilm"} and all(r[2] == 4 for r in rows.values())
    # the counts are the accuracy functions' on the first 4 held-out graphs, recomputed
    task = _config.task()
    first = held_out_graphs(task, 4)
    ar = ar_path_accuracy(load_ar(out / AR_DIR, task), task, first)
    ilm = ilm_path_accuracy(
        load_ilm(out / ILM_DIR, task), task, first, torch.Generator().manual_seed(0)
    )
    assert rows["ar"][1] == round(4 * ar) and rows["ilm"][1] == round(4 * ilm)
    # every graph has one line per model, marked right or wrong as the table counts
    for name in ("ar", "ilm"):
        lines = [ln for s in more.samples for ln in s.splitlines() if ln.startswith(f"  {name} ")]
        assert len(lines) == 4 and all((" right" in ln) != (" wrong" in ln) for ln in lines)
        assert sum(" right" in ln for ln in lines) == rows[name][1]


def test_rendered_graph_is_the_graph() -> None:
    task = StarGraph(degree=3, arm_len=2)
    row = held_out_graphs(task, 1)[0]
    start, goal, arms = graph_arms(task, row)
    path = row[task.prompt_len :].tolist()
    assert len(arms) == 3 and all(len(a) == 2 for a in arms)
    assert sorted([start, *(n for a in arms for n in a)]) == list(range(task.n_nodes))
    assert path[0] == start and path[-1] == goal and path[1:] in arms


def _copy(trained: tuple[Path, StarGraphConfig, RecipeResult], tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    return out


def test_corrupted_checkpoints_are_refused(
    trained: tuple[Path, StarGraphConfig, RecipeResult], tmp_path: Path
) -> None:
    out = _copy(trained, tmp_path)
    weights = out / ILM_DIR / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match=r"ilm.*model\.safetensors.*re-run"):
        recipe.sample(out, 1, lambda _: None)

    out = _copy(trained, tmp_path / "b")
    (out / ILM_DIR / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"ilm/config\.json.*re-run"):
        recipe.sample(out, 1, lambda _: None)

    out = _copy(trained, tmp_path / "c")
    (out / AR_DIR / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"ar/model\.safetensors.*re-run"):
        recipe.sample(out, 1, lambda _: None)

    # a checkpoint that loads but belongs to another task (recipe.json says degree 3)
    out = _copy(trained, tmp_path / "d")
    payload = json.loads((out / "recipe.json").read_text())
    payload["config"]["degree"] = 3
    (out / "recipe.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"config\.json.*vocab_size.*degree 3.*re-run"):
        recipe.sample(out, 1, lambda _: None)


def test_weights_of_another_model_are_refused(
    trained: tuple[Path, StarGraphConfig, RecipeResult], tmp_path: Path
) -> None:
    """The AR weights (no stop head) in the ILM folder: names checked before loading."""
    out = _copy(trained, tmp_path)
    shutil.copy(out / AR_DIR / "model.safetensors", out / ILM_DIR / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"ilm/model\.safetensors does not match the model.*re-run"
    ):
        load_ilm(out / ILM_DIR, trained[1].task())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"degree": 1}, "degree"),
        ({"arm_len": 0}, "arm_len"),
        ({"steps": 0}, "steps"),
        ({"models": "ar,gpt"}, "models"),
        ({"models": []}, "models"),
        ({"models": "ilm,ilm"}, "models"),
        ({"seed": 12345}, "seed"),
        ({"n_test": 0}, "n_test"),
        ({"lr": 0}, "lr"),
        ({"depth": 3}, "depth"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid StarGraphConfig: {field}\b"):
        build_config(StarGraphConfig, None, overrides)


def test_config_parsing_and_eval_steps() -> None:
    config = build_config(StarGraphConfig, recipe.demo_config(), {"models": "ilm"})
    assert isinstance(config, StarGraphConfig) and config.models == ["ilm"]
    assert StarGraphConfig().models == ["ar", "ilm"] and StarGraphConfig().steps == 3000
    assert StarGraphConfig(steps=20, eval_every=7).eval_steps() == [7, 14, 20]
    assert StarGraphConfig(steps=20, eval_every=0).eval_steps() == [20]
    assert StarGraphConfig(steps=20, eval_every=50).eval_steps() == [20]
    assert not recipe.in_demo and recipe.name == "text-stargraph"
    assert isinstance(recipe, Recipe) and recipe.config_class is StarGraphConfig


def test_one_model_only(tmp_path: Path) -> None:
    config = StarGraphConfig(
        **{**TINY, "steps": 3, "eval_every": 0, "models": ["ilm"], "n_show": 0}
    )  # type: ignore[arg-type]
    write_recipe_file(tmp_path, recipe.name, config)
    result = recipe.run(config, tmp_path, lambda _: None)
    assert not (tmp_path / AR_DIR).exists() and (tmp_path / ILM_DIR / "model.safetensors").is_file()
    assert [r[0] for r in result.tables[0].rows] == ["ilm"] and list(result.curves) == [
        "ilm path accuracy"
    ]
    assert len(result.curves["ilm path accuracy"]) == 1 and result.samples == []
    sampled = recipe.sample(tmp_path, 1, lambda _: None)
    assert len(sampled.samples) == 1 and "  ar " not in sampled.samples[0]
    with pytest.raises(ConfigError, match="n must be >= 1"):
        recipe.sample(tmp_path, 0, lambda _: None)
