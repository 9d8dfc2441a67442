from collections.abc import Iterator

import pytest

from ar_core import plugins


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AR_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()
