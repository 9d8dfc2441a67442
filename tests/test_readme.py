"""The Python examples of the README, the package READMEs and the package pages run.

(Other docs pages show signatures and fragments, not whole programs; they are not run.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
RUNNABLE = [
    README,
    *sorted(ROOT.glob("packages/*/README.md")),
    ROOT / "docs" / "packages" / "ar-text.md",
    ROOT / "docs" / "concepts" / "loop.md",
]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_has_a_python_example():
    assert _python_blocks(README)


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(path: Path):
    for block in _python_blocks(path):
        exec(compile(block, str(path), "exec"), {"__name__": "docs_example"})
