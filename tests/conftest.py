"""Shared fixtures of the cross-package tests."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ar_core import plugins


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with AR_PLUGINS unset and reloads the plugins it needs."""
    monkeypatch.delenv("AR_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def fake_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str, str, str], Path]:
    """Install a throw-away distribution with an ``ar`` entry point on sys.path.

    ``fake_distribution(dist_name, entry_point_name, module_source)``.
    """

    def make(dist: str, ep_name: str, source: str) -> Path:
        module = f"{dist.replace('-', '_')}_plugin"
        root = tmp_path / dist
        root.mkdir()
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "entry_points.txt").write_text(f"[ar]\n{ep_name} = {module}\n")
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.delitem(sys.modules, module, raising=False)
        return root

    return make
