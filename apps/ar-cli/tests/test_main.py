"""The `ar` command: user mistakes end with one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from ar_cli.main import main
from ar_cli.report import write_html
from ar_core.recipes import RecipeBase, RecipeResult, Table


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["bench", "no-such-benchmark"], "unknown benchmark 'no-such-benchmark'"),
        (["sample", "/no/such/folder"], "is not a folder"),
        (["no-such-command"], "No such command"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


def test_sample_refuses_a_folder_without_recipe_file(tmp_path: Path, capsys):
    assert main(["sample", str(tmp_path)]) == 2
    assert "recipe.json" in capsys.readouterr().err


def test_bench_lists_installed_benchmarks_anywhere(tmp_path: Path, capsys, monkeypatch):
    """Benchmarks come from the installed plugins, not from a checkout's folders."""
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["decode"] == "plugin core (ar_core.benchmarks.decode)"


@pytest.mark.parametrize(
    ("argv", "package"),
    [
        (["train", "text-code"], "ar-text"),
        (["train", "vision-digits", "--demo"], "ar-vision"),
        (["bench", "vision"], "ar-vision"),
        (["bench", "flex_vs_sdpa"], "ar-kernels"),
        (["demo", "--only", "text-stargraph"], "ar-text"),
    ],
)
def test_a_recipe_or_benchmark_of_a_missing_package_names_it(argv, package, capsys, monkeypatch):
    monkeypatch.setenv("AR_PLUGINS", "core")  # as if only ar-core and ar-cli were installed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"pip install {package}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_html_report_has_tables_and_images(tmp_path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = tmp_path / "pic.png"
    plt.imsave(png, [[0.0, 1.0], [1.0, 0.0]])
    result = RecipeResult(
        title="t",
        tables=[Table("accuracy", ["ordering", "acc"], [["raster", 0.5]])],
        images=[("a picture", png)],
        curves={"loss": [(0, 2.0), (1, 1.0)]},
        samples=["<b>not html</b>"],
    )
    index = write_html(tmp_path / "out", "report", [(result, 1.0)], [])
    text = index.read_text()
    assert "<caption>accuracy</caption>" in text and "<td>raster</td>" in text
    assert "&lt;b&gt;not html&lt;/b&gt;" in text
    assert (tmp_path / "out" / "img" / "0-pic.png").is_file()  # copied next to the page
    assert (tmp_path / "out" / "img" / "curves-0.png").is_file()
    assert "src='img/curves-0.png'" in text  # made in place, referenced, not copied again
    assert not (tmp_path / "out" / "img" / "0-curves-0.png").exists()


def test_terminal_report_prints_brackets_verbatim():
    """Recipe text is data, not rich markup: "[before]" or "[/x]" must print as written
    (unescaped, rich drops the first and raises on the second)."""
    from rich.console import Console

    from ar_cli.report import print_result

    console = Console(record=True, width=200)
    result = RecipeResult(
        title="[b]title[/b]",
        summary="a [red]summary[/red]",
        tables=[Table("[t]", ["[col]"], [["[cell]", 1.0]], note="[/note]")],
        samples=["[before] x[0] = [/y]"],
    )
    print_result(console, result)
    text = console.export_text()
    for needle in ["[b]title[/b]", "a [red]summary[/red]", "[t]", "[col]", "[cell]", "[/note]"]:
        assert needle in text, needle
    assert "'[before] x[0] = [/y]'" in text


def _shown_cells(table: dict) -> list[str]:
    from ar_cli.report import fmt

    return [fmt(v) for row in table["rows"] for v in row]


def test_train_writes_result_json_matching_the_report(tmp_path: Path, capsys):
    out = tmp_path / "run"
    sets = ["steps=3", "eval_sequences=4", "batch_size=4", "progress_bar=false", "dim=16"]
    argv = ["train", "core-anyorder", "--out", str(out)]
    assert main([*argv, *(x for s in sets for x in ("--set", s))]) == 0
    terminal = capsys.readouterr().out
    payload = json.loads((out / "result.json").read_text())
    page = (out / "index.html").read_text()
    assert payload["title"] == "ar train core-anyorder"
    (run,) = payload["runs"]
    assert run["recipe"] == "core-anyorder"
    assert run["config"]["steps"] == 3 and run["config"]["dim"] == 16
    assert run["seconds"] > 0
    assert set(run["metrics"]) >= {"loss_floor", "exact_match/raster", "exact_match/reverse"}
    (table,) = run["tables"]
    assert table["title"] == "exact match per ordering"
    assert [r[0] for r in table["rows"]] == ["raster", "reverse", "random", "block"]
    for cell in _shown_cells(table):  # the same numbers as the page and the terminal
        assert f"<td>{cell}</td>" in page and cell in terminal
    assert run["curves"]["train loss"] and all(len(p) == 2 for p in run["curves"]["train loss"])
    for image in run["images"]:
        assert (out / image["path"]).is_file()
        assert f"src='{image['path']}'" in page


class _FakeConfig(pydantic.BaseModel):
    value: float = 0.5


class _FakeRecipe(RecipeBase):
    description = "a test recipe"
    config_class = _FakeConfig
    name = "fake"

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]

    def _run(self, config: _FakeConfig, out_dir: Path, progress) -> RecipeResult:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        png = out_dir / "pic.png"
        plt.imsave(png, [[0.0, 1.0], [1.0, 0.0]])
        return RecipeResult(
            title=f"{self.name} result",
            summary="s",
            tables=[Table("t", ["k", "v"], [["a", config.value], ["nan", float("nan")]])],
            images=[("pic", png)],
            curves={"loss": [(0, 1.0), (1, 0.5)]},
            metrics={"value": config.value},
        )


def test_demo_writes_one_result_json_with_a_run_per_recipe(tmp_path: Path, capsys):
    from ar_core import plugins, registry

    plugins.ensure_loaded()
    for name in ("fake-a", "fake-b"):
        registry.recipes.register(name, _FakeRecipe(name), provider="test")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--only", "fake-a", "--only", "fake-b"]) == 0
    payload = json.loads((out / "result.json").read_text())
    page = (out / "index.html").read_text()
    assert payload["title"] == "ar demo" and payload["total_seconds"] > 0
    assert [r["recipe"] for r in payload["runs"]] == ["fake-a", "fake-b"]
    for run in payload["runs"]:
        assert run["config"] == {"value": 0.5} and run["metrics"] == {"value": 0.5}
        assert run["tables"][0]["rows"] == [["a", 0.5], ["nan", None]]  # NaN: null
        assert run["curves"] == {"loss": [[0, 1.0], [1, 0.5]]}
        paths = [i["path"] for i in run["images"]]
        assert paths[0] == f"{run['recipe']}/pic.png"  # the run's own folder, inside OUT
        assert [i["caption"] for i in run["images"]] == ["pic", "training curves"]
        for path in paths:
            assert (out / path).is_file() and f"src='{path}'" in page
    assert "<td>0.5</td>" in page


class _RaisingRecipe(_FakeRecipe):
    def _run(self, config: _FakeConfig, out_dir: Path, progress) -> RecipeResult:
        raise RuntimeError("recipe exploded")


def test_demo_continues_past_a_failing_recipe_and_reports_it(tmp_path: Path, capsys):
    from ar_core import plugins, registry

    plugins.ensure_loaded()
    registry.recipes.register("fake-bad", _RaisingRecipe("fake-bad"), provider="test")
    registry.recipes.register("fake-good", _FakeRecipe("fake-good"), provider="test")
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--only", "fake-bad", "--only", "fake-good"]
    assert main(argv) == 1  # the run as a whole failed ...
    err = capsys.readouterr().err
    assert "recipe 'fake-bad' failed: RuntimeError: recipe exploded" in err
    assert "1 of 2 recipes failed (fake-bad)" in err and "Traceback" not in err
    payload = json.loads((out / "result.json").read_text())  # ... but the report is written
    assert payload["failed"] == ["fake-bad"]
    bad, good = payload["runs"]
    assert bad["status"] == "failed" and bad["error"] == "RuntimeError: recipe exploded"
    assert good["status"] == "ok" and good["error"] is None
    assert good["metrics"] == {"value": 0.5}  # the recipe after the failure still ran
    page = (out / "index.html").read_text()
    assert "fake-bad: FAILED" in page and "recipe exploded" in page
    assert "fake-good result" in page
