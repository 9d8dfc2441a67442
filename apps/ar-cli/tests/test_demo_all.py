"""`ar demo --all` runs every recipe (in_demo=False too) at its demo settings; a demo
lists the recipes it did not run with the commands that run them (terminal, page, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from ar_cli.main import main
from ar_core import plugins, registry
from ar_core.recipes import RecipeBase, RecipeResult


class _Config(pydantic.BaseModel):
    value: float = 1.0


class _Recipe(RecipeBase):
    name = "fake"
    description = "a test recipe"
    config_class = _Config

    def __init__(self, name: str, in_demo: bool) -> None:
        self.name = name  # type: ignore[misc]
        self.in_demo = in_demo  # type: ignore[misc]

    def demo_config(self) -> _Config:
        return _Config(value=0.25)  # not the default: shows the demo settings were used

    def _run(self, config: _Config, out_dir: Path, progress) -> RecipeResult:  # type: ignore[no-untyped-def]
        return RecipeResult(title=f"{self.name} ran", metrics={"value": config.value})


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR_PLUGINS", "core")
    plugins.ensure_loaded()
    registry.recipes.register("fake-in", _Recipe("fake-in", True), provider="test")
    registry.recipes.register("fake-out", _Recipe("fake-out", False), provider="test")
    monkeypatch.setattr(registry.recipes, "names", lambda: ["fake-in", "fake-out"])


def test_demo_lists_what_it_did_not_run(fakes: None, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    terminal = capsys.readouterr().out
    payload = json.loads((out / "result.json").read_text())
    assert [r["recipe"] for r in payload["runs"]] == ["fake-in"]
    assert payload["not_run"] == [
        {
            "recipe": "fake-out",
            "demo_command": "ar demo --only fake-out",
            "train_command": "ar train fake-out",
        }
    ]
    page = (out / "index.html").read_text()
    assert "<caption>Recipes not run</caption>" in page
    assert "<td>ar demo --only fake-out</td>" in page and "<td>ar train fake-out</td>" in page
    assert "ar demo --only fake-out" in terminal and "not in the default demo" in terminal


def test_demo_all_runs_every_recipe_at_its_demo_settings(fakes: None, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--all", "--out", str(out)]) == 0
    payload = json.loads((out / "result.json").read_text())
    assert [r["recipe"] for r in payload["runs"]] == ["fake-in", "fake-out"]
    assert all(r["metrics"] == {"value": 0.25} for r in payload["runs"])
    assert payload["not_run"] == []
    assert "Recipes not run" not in (out / "index.html").read_text()


def test_only_leaves_the_others_listed(fakes: None, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--only", "fake-out", "--out", str(out)]) == 0
    payload = json.loads((out / "result.json").read_text())
    assert [r["recipe"] for r in payload["runs"]] == ["fake-out"]
    assert [n["recipe"] for n in payload["not_run"]] == ["fake-in"]
    assert main(["demo", "--only", "fake-out", "--all"]) == 2
