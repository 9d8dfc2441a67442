"""The package is found as an ar plugin by its entry point."""

from importlib.metadata import entry_points


def test_entry_point() -> None:
    (ep,) = [e for e in entry_points(group="ar") if e.name == "timeseries"]
    assert ep.value == "ar_timeseries._plugin"
    assert ep.load().__name__ == "ar_timeseries._plugin"
