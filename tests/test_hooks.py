"""One test per hook, through a real plugin object; and the docs/test coverage check."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import ar_core
from ar_core import hookspecs, plugins, registry

ROOT = Path(__file__).parents[1]


def _plugin(**hooks: Any) -> SimpleNamespace:
    """A plugin object whose attributes are hook implementations."""
    return SimpleNamespace(**{name: ar_core.hookimpl(fn) for name, fn in hooks.items()})


def _load_with(name: str, hook: str, fn: Any) -> None:
    plugins.load(allow=set(), extra=[(name, _plugin(**{hook: fn}))])


class _Diagonal:
    name = "diagonal"

    def plan(self, shape, *, generator=None):
        return ar_core.Plan([[i] for i in reversed(range(shape[0]))], shape)


def test_hook_register_orderings():
    def register_orderings(register):
        register("diagonal", _Diagonal)

    _load_with("t", "register_orderings", register_orderings)
    plan = registry.orderings.get("diagonal")().plan((3,))
    assert plan.order().tolist() == [2, 1, 0]
    assert registry.orderings.provider("diagonal") == "t"


def test_hook_register_strategies():
    def strategy(model, input_ids, config, **kwargs):
        return ("ran", input_ids)

    def register_strategies(register):
        register("echo", strategy)

    _load_with("t", "register_strategies", register_strategies)
    assert registry.strategies.get("echo")(None, [1], None) == ("ran", [1])


def test_hook_register_attention_backends():
    backend = SimpleNamespace(name="null", unsupported_reason=lambda **kw: "never")

    def register_attention_backends(register):
        register("null", backend)

    _load_with("t", "register_attention_backends", register_attention_backends)
    assert registry.attention_backends.get("null") is backend


def test_hook_register_step_samplers():
    def register_step_samplers(register):
        register("constant", lambda **kw: lambda out: 0)

    _load_with("t", "register_step_samplers", register_step_samplers)
    assert registry.step_samplers.get("constant")()(None) == 0


def test_hook_register_models():
    def register_models(register):
        register("pair", lambda **kw: ("model", kw))

    _load_with("t", "register_models", register_models)
    assert registry.models.get("pair")(dim=4) == ("model", {"dim": 4})


def test_hook_register_tokenizers():
    def register_tokenizers(register):
        register("upper", str.upper)

    _load_with("t", "register_tokenizers", register_tokenizers)
    assert registry.tokenizers.get("upper")("ab") == "AB"


def test_hook_register_recipes():
    recipe = SimpleNamespace(name="noop", description="does nothing")

    def register_recipes(register):
        register("noop", recipe)

    _load_with("t", "register_recipes", register_recipes)
    assert registry.recipes.get("noop") is recipe
    assert "noop" in registry.recipes.names()


def test_hook_register_benchmarks():
    def register_benchmarks(register):
        register("tiny", lambda argv: {"argv": argv})

    _load_with("t", "register_benchmarks", register_benchmarks)
    assert registry.benchmarks.get("tiny")(["--quick"]) == {"argv": ["--quick"]}


def test_hook_register_commands():
    def register_commands(cli):
        @cli.command("hello")
        def hello(name: str = "world") -> None:
            print(f"hello {name}")

    _load_with("t", "register_commands", register_commands)
    app = typer.Typer()

    @app.command("other")
    def other() -> None:  # a second command, so typer keeps subcommand names
        pass

    assert plugins.add_commands(app) == []
    result = CliRunner().invoke(app, ["hello", "--name", "ar"])
    assert result.exit_code == 0 and "hello ar" in result.output


def _hook_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "ar_spec"))


def test_every_hook_has_a_docs_heading_with_its_exact_signature_and_a_test():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_hooks
    finally:
        sys.path.pop(0)
    page = (ROOT / "docs" / "plugins" / "hooks.md").read_text()
    headings = set(re.findall(r"^## `(.+)`$", page, flags=re.M))
    this_file = Path(__file__).read_text()
    names = _hook_names()
    assert len(names) >= 8
    for name in names:
        assert gen_hooks.signature(name) in headings, f"docs/plugins/hooks.md lacks {name}"
        assert f"def test_hook_{name}(" in this_file, f"hook {name} has no test of its own"
        doc = getattr(hookspecs, name).__doc__ or ""
        assert doc.strip() and "\n" not in doc.strip(), f"{name} needs a one-line docstring"


def test_hook_reference_page_is_up_to_date():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_hooks.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", _hook_names())
def test_hooks_are_called_with_keywords_only(name):
    # pluggy passes hook arguments by keyword: a spec's parameter names are its API.
    import inspect

    params = inspect.signature(getattr(hookspecs, name)).parameters
    assert list(params) == (["cli"] if name == "register_commands" else ["register"])
