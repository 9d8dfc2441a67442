"""Recipes: named, pydantic-configured pipelines (data -> train -> sample -> evaluate -> report).

A package registers a recipe object through ``register_recipes``; ``ar train NAME --set
k=v``, ``ar sample DIR`` and ``ar demo`` run it. A recipe is thin and linear: it wires
the package's components together and returns a :class:`RecipeResult` of tables,
images and curves that the CLI renders (terminal tables, ``index.html``).

Each registered recipe is a module of its package's ``recipes`` folder
(``ar_core.recipes.anyorder``, ``ar_text.recipes.code``, ``ar_vision.recipes.digits``,
...) whose recipe class subclasses :class:`~ar_core.recipes.base.RecipeBase`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pydantic

from ar_core.errors import ConfigError

RECIPE_FILE = "recipe.json"

Progress = Callable[[str], None]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class RecipeResult:
    """What a recipe run produced: shown in the terminal and in the demo's HTML page."""

    title: str
    summary: str = ""
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG path)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name -> (x, y)
    samples: list[str] = field(default_factory=list)  # text samples, shown verbatim
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Recipe(Protocol):
    name: str
    description: str
    config_class: type[pydantic.BaseModel]

    def demo_config(self) -> pydantic.BaseModel:
        """Small settings that finish in about a minute on 2 CPU cores (used by ``ar demo``)."""
        ...

    def run(self, config: pydantic.BaseModel, out_dir: Path, progress: Progress) -> RecipeResult:
        """Train, sample and evaluate; write checkpoints and pictures under ``out_dir``."""
        ...

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        """Sample ``n`` items from a checkpoint this recipe wrote."""
        ...


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (0 = torch's current setting), then restore
    the previous count. Small models train fastest on one thread of a shared machine."""
    import torch  # recipes import torch anyway; this module stays light without it

    check_threads(n)
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``; values are JSON when they parse."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


MAX_THREADS_PER_CPU = 4  # threads beyond os.cpu_count() * this are a mistake, not a setting
NON_EMPTY_LISTS = ("orderings",)  # list fields a recipe cannot run without


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def check_fields(config: pydantic.BaseModel) -> None:
    """Checks every recipe config gets on top of its own validators, each a one-line
    ConfigError naming the field and the fix: finite numbers everywhere (``lr=Infinity``),
    ``dim`` divisible by ``n_heads`` (and ``n_heads`` by ``n_kv_heads``) with an even head
    dimension (RoPE), ``threads`` within ``os.cpu_count() * 4``, no empty ``orderings``."""
    name = type(config).__name__
    fields = config.model_dump()
    for path, value in _walk(fields, ""):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"invalid {name}: {path}={value} is not a finite number; pass one")
    dim, heads = fields.get("dim"), fields.get("n_heads")
    if isinstance(dim, int) and isinstance(heads, int) and heads > 0:
        if dim % heads:
            raise ConfigError(
                f"invalid {name}: dim={dim} is not divisible by n_heads={heads}; pick n_heads "
                f"that divides dim (e.g. {max(h for h in (1, 2, 4, 8) if dim % h == 0)})"
            )
        if (dim // heads) % 2:
            raise ConfigError(
                f"invalid {name}: head dimension dim / n_heads = {dim // heads} is odd; RoPE "
                f"needs an even one: change dim or n_heads"
            )
        kv = fields.get("n_kv_heads")
        if isinstance(kv, int) and kv > 0 and heads % kv:
            raise ConfigError(
                f"invalid {name}: n_heads={heads} is not divisible by n_kv_heads={kv}; pick "
                f"n_kv_heads that divides n_heads"
            )
    threads = fields.get("threads")
    if isinstance(threads, int):
        check_threads(threads, f"invalid {name}: threads")
    for key in NON_EMPTY_LISTS:
        if key in fields and isinstance(fields[key], list | tuple) and not fields[key]:
            raise ConfigError(
                f"invalid {name}: {key} is empty; name at least one (or leave it out for the "
                f"default)"
            )


def check_threads(n: int, what: str = "threads") -> None:
    """ConfigError unless 0 <= n <= os.cpu_count() * 4 (0 = torch's setting)."""
    limit = (os.cpu_count() or 1) * MAX_THREADS_PER_CPU
    if not 0 <= n <= limit:
        raise ConfigError(
            f"{what}={n} is out of range on this machine ({os.cpu_count()} CPUs): pass 0 "
            f"(torch's default) up to {limit}"
        )


def build_config(
    config_class: type[pydantic.BaseModel],
    base: pydantic.BaseModel | None,
    overrides: dict[str, Any],
) -> pydantic.BaseModel:
    """Validate ``base`` updated with ``overrides``; a bad field is a one-line ConfigError."""
    data = _merge(base.model_dump() if base is not None else {}, overrides)
    try:
        config = config_class.model_validate(data)
    except pydantic.ValidationError as exc:
        # a field error shows the value it got; a whole-config check (empty loc) names
        # its fields in its own message, and its input would be the whole config
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            if err["loc"]
            else f"config: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid {config_class.__name__}: {problems}") from None
    check_fields(config)
    return config


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and a rename
    (:func:`ar_core.atomic.atomic_write_text`)."""
    from ar_core.atomic import atomic_write_text as write

    write(path, text)


def write_recipe_file(out_dir: Path, recipe_name: str, config: pydantic.BaseModel) -> None:
    """Record which recipe and config wrote ``out_dir`` (``ar sample`` reads it back)."""
    payload = {"recipe": recipe_name, "config": config.model_dump(mode="json")}
    atomic_write_text(out_dir / RECIPE_FILE, json.dumps(payload, indent=2))


def read_recipe_file(checkpoint_dir: Path) -> tuple[str, dict[str, Any]]:
    path = checkpoint_dir / RECIPE_FILE
    if not path.is_file():
        raise ConfigError(
            f"{checkpoint_dir} holds no {RECIPE_FILE}; pass a folder written by `ar train`"
        )
    try:
        payload = json.loads(path.read_text())
        return str(payload["recipe"]), dict(payload["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is corrupted ({exc}); re-run `ar train`") from None


from ar_core.recipes.base import RecipeBase  # noqa: E402  (base.py imports the names above)

__all__ = [
    "RECIPE_FILE",
    "Progress",
    "Recipe",
    "RecipeBase",
    "RecipeResult",
    "Table",
    "atomic_write_text",
    "build_config",
    "check_fields",
    "parse_overrides",
    "read_recipe_file",
    "torch_threads",
    "write_recipe_file",
]
