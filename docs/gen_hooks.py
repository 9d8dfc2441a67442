"""Generate docs/plugins/hooks.md from the hookspec docstrings of ar_core.hookspecs.

Run ``uv run python docs/gen_hooks.py`` after changing a hook; a test fails while the
committed page differs from what this script writes.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from ar_core import hookspecs

PAGE = Path(__file__).parent / "plugins" / "hooks.md"

HEADER = """# Hook reference

Every hook a plugin can implement, generated from the docstrings of
`ar_core/hookspecs.py` by `docs/gen_hooks.py` (a test keeps this page in step with the
code). Implement a hook with `@ar_core.hookimpl` in the module your entry point names;
hooks are called with keyword arguments, so your function must use the parameter name
shown. A `register_*` hook receives a callback: call `register(name, obj)` once per item.
See the [tutorial](tutorial.md) for a complete plugin.
"""


def hook_names() -> list[str]:
    return sorted(
        name
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec")
    )


def signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def render() -> str:
    parts = [HEADER]
    for name in hook_names():
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        parts.append(f"## `{signature(name)}`\n\n{doc}\n")
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run `uv run python docs/gen_hooks.py`")
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
