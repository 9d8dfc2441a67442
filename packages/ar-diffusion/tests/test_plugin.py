"""The plugin registers every strategy of ar-diffusion, lazily, under its own name."""

from ar_core import registry
from ar_diffusion import _plugin


def test_plugin_registers_strategies() -> None:
    assert set(_plugin.STRATEGIES) == {
        "mdlm",
        "block-diffusion",
        "freecache",
        "ar-guided-diffusion",
        "ctrldiff",
    }
    for name in _plugin.STRATEGIES:
        assert registry.strategies.provider(name) == "diffusion"
        assert "imported on first use" in (registry.strategies.get(name).__doc__ or "")
