"""The package is found as an ar plugin by its entry point."""

from importlib.metadata import entry_points


def test_entry_point() -> None:
    (ep,) = [e for e in entry_points(group="ar") if e.name == "video"]
    assert ep.value == "ar_video._plugin"
    assert ep.load().__name__ == "ar_video._plugin"


def test_registers_recipe_and_benchmark() -> None:
    from ar_core.registry import benchmarks, recipes

    assert recipes.get("video-moving-digits").name == "video-moving-digits"
    assert "video" in benchmarks.names()
