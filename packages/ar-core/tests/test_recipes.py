"""Recipe configuration: --set parsing and validation, recipe files."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from ar_core.errors import ConfigError
from ar_core.recipes import (
    build_config,
    parse_overrides,
    read_recipe_file,
    write_recipe_file,
)


class _Inner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    width: int = 8


class _Config(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    steps: int = 10
    name: str = "x"
    inner: _Inner = _Inner()


def test_parse_overrides_nests_and_parses_json():
    assert parse_overrides(["steps=5", "inner.width=3", "name=abc", "flag=true"]) == {
        "steps": 5,
        "inner": {"width": 3},
        "name": "abc",
        "flag": True,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])


def test_build_config_merges_and_names_the_bad_field():
    cfg = build_config(_Config, _Config(steps=7), {"inner": {"width": 2}})
    assert cfg == _Config(steps=7, inner=_Inner(width=2))
    with pytest.raises(ConfigError, match=r"steps: .*integer.*'many'"):
        build_config(_Config, None, {"steps": "many"})
    with pytest.raises(ConfigError, match="inner.depth"):
        build_config(_Config, None, {"inner": {"depth": 1}})


class _Checked(_Config):
    @pydantic.model_validator(mode="after")
    def _check(self) -> _Checked:
        if self.steps > self.inner.width:
            raise ValueError(f"steps ({self.steps}) exceeds inner.width ({self.inner.width})")
        return self


def test_whole_config_check_is_one_short_line():
    """A model-level check names its fields itself; the whole config is not dumped."""
    with pytest.raises(ConfigError) as info:
        build_config(_Checked, None, {"steps": 9})
    assert str(info.value) == (
        "invalid _Checked: config: Value error, steps (9) exceeds inner.width (8)"
    )


def test_recipe_file_round_trip_and_corruption(tmp_path: Path):
    write_recipe_file(tmp_path, "demo", _Config(steps=3))
    assert read_recipe_file(tmp_path) == ("demo", _Config(steps=3).model_dump())
    (tmp_path / "recipe.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupted"):
        read_recipe_file(tmp_path)
    with pytest.raises(ConfigError, match="no recipe.json"):
        read_recipe_file(tmp_path / "missing")


def test_torch_threads_sets_and_restores_even_on_error():
    import torch

    from ar_core.recipes import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0: leave torch's setting alone
        assert torch.get_num_threads() == before


def test_recipe_base_checks_the_config_and_runs_under_its_threads(tmp_path: Path):
    import torch

    from ar_core.recipes import Recipe, RecipeBase, RecipeResult

    class _Threaded(_Config):
        threads: int = 1

    class _R(RecipeBase):
        name = "t-recipe"
        description = "test"
        config_class = _Threaded

        def _run(self, config: _Threaded, out_dir: Path, progress) -> RecipeResult:
            return RecipeResult(title=f"{torch.get_num_threads()} {type(out_dir).__name__}")

    r = _R()
    assert isinstance(r, Recipe)
    before = torch.get_num_threads()
    assert r.run(_Threaded(threads=1), str(tmp_path), print).title == "1 PosixPath"  # type: ignore[arg-type]
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="'t-recipe' expects a _Threaded, got _Config"):
        r.run(_Config(), tmp_path, print)
    write_recipe_file(tmp_path, "t-recipe", _Threaded(steps=4))
    assert r.read_config(tmp_path, name="y") == _Threaded(steps=4, name="y")
    with pytest.raises(ConfigError, match="holds no valid _Threaded"):
        r.read_config(tmp_path, steps="many")
    with pytest.raises(TypeError, match="must set config_class"):

        class _Missing(RecipeBase):
            name = "x"
            description = "x"
