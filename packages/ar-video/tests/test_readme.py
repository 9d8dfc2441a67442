"""The README's Python example runs."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_example_runs() -> None:
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert tuple(namespace["frames"].shape) == (2, 3, 1, 32, 32)  # type: ignore[attr-defined]
