"""Registries: duplicates name both providers, unknown names list what is available."""

from __future__ import annotations

import pytest

from ar_core.errors import DuplicateRegistrationError, UnknownNameError
from ar_core.registry import Registry


def test_duplicate_names_both_providers():
    reg: Registry[int] = Registry("orderings", "ordering")
    reg.register("a", 1, provider="first")
    with pytest.raises(DuplicateRegistrationError, match="'a'.*'first'.*'second'"):
        reg.register("a", 2, provider="second")


def test_unknown_lists_available_and_package(monkeypatch):
    from ar_core import plugins

    monkeypatch.setattr(plugins, "ensure_loaded", lambda: None)
    reg: Registry[int] = Registry("strategies", "strategy")
    reg.register("greedy", 1, provider="core")
    with pytest.raises(UnknownNameError) as err:
        reg.get("speculative")
    assert "available: greedy" in str(err.value)
    assert "pip install ar-decoding" in str(err.value)
    assert reg.names() == ["greedy"] and reg.provider("greedy") == "core"
