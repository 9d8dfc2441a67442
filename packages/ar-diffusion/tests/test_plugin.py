"""The plugin registers every strategy of ar-diffusion, lazily."""

from ar_core import registry
from ar_core.plugins import get_plugin_manager
from ar_diffusion import _plugin


def test_plugin_registers_strategies() -> None:
    get_plugin_manager()
    for name in _plugin.STRATEGIES:
        assert name in registry.strategies.names()
