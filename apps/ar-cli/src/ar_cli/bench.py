"""Discovery of benchmarks for ``ar bench``.

Two sources: benchmarks registered by plugins (``register_benchmarks``), and the
``benchmarks/*.py`` scripts of each package of the checkout we run in (a script exposes
``main(argv: list[str]) -> dict``; it prints its table and writes its JSON itself).
"""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ar_core import registry
from ar_core.errors import UnknownNameError

BenchFn = Callable[[list[str]], dict[str, Any]]


def workspace_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` whose pyproject declares a uv workspace."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text())
            except tomllib.TOMLDecodeError:
                continue
            if "workspace" in data.get("tool", {}).get("uv", {}):
                return folder
    return None


def script_benchmarks(root: Path | None) -> dict[str, Path]:
    if root is None:
        return {}
    found: dict[str, Path] = {}
    for script in sorted(root.glob("packages/*/benchmarks/*.py")):
        if not script.name.startswith("_"):
            found[script.stem] = script
    return found


def available() -> dict[str, str]:
    """Benchmark name -> where it comes from."""
    out = {
        name: f"plugin {registry.benchmarks.provider(name)}" for name in registry.benchmarks.names()
    }
    root = workspace_root()
    for name, path in script_benchmarks(root).items():
        out.setdefault(name, str(path.relative_to(root)) if root else str(path))
    return out


def load(name: str) -> BenchFn:
    if name in registry.benchmarks:
        fn: BenchFn = registry.benchmarks.get(name)
        return fn
    scripts = script_benchmarks(workspace_root())
    if name not in scripts:
        names = ", ".join(sorted(available())) or "none (run inside an ar checkout)"
        raise UnknownNameError(f"unknown benchmark {name!r}; available: {names}")
    spec = importlib.util.spec_from_file_location(f"ar_bench_{name}", scripts[name])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None:
        raise UnknownNameError(f"benchmark script {scripts[name]} defines no main(argv)")
    return main  # type: ignore[no-any-return]
