"""The Python examples of the README, the package READMEs, the package pages and the
getting-started pages run.

(Other docs pages show signatures and fragments, not whole programs; they are not run.)
A page may show what its program prints: a ```text block right after an
``<!-- output -->`` line must equal the printed text, except lines that say
``(this machine)`` (timings).
"""

from __future__ import annotations

import contextlib
import io
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
    *sorted((ROOT / "docs" / "getting-started").glob("*.md")),
]
GETTING_STARTED = ["diffusion-lm.md", "image-folder.md", "speed-up-hf.md", "strategy-plugin.md"]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_has_a_python_example():
    assert _python_blocks(README)


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(path: Path):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in _python_blocks(path):
            exec(compile(block, str(path), "exec"), {"__name__": "docs_example"})
    shown = re.findall(r"<!-- output -->\n```text\n(.*?)```", path.read_text(), flags=re.S)
    if shown:
        assert _steady(printed.getvalue()) == _steady("".join(shown))


def _steady(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if "(this machine)" not in line]


def test_getting_started_pages_are_run():
    names = [p.name for p in RUNNABLE if p.parent.name == "getting-started"]
    assert names == sorted(GETTING_STARTED)
