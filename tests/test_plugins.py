"""Plugin discovery: built-ins, the allow-list, broken and duplicate plugins, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import ar_core
from ar_core import plugins, registry
from ar_core.errors import UnknownNameError


def _ar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ar_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_builtins_are_plugins_like_any_other():
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert infos["core"].distribution == "ar-core"
    assert infos["core"].version == ar_core.__version__
    assert {"raster", "random", "block"} <= set(infos["core"].registered["orderings"])
    assert registry.orderings.provider("raster") == "core"


def test_empty_allow_list_loads_nothing(monkeypatch):
    monkeypatch.setenv("AR_PLUGINS", "")
    plugins.load()
    assert registry.orderings.names() == []
    assert all(i.status == "skipped" for i in plugins.plugin_infos())
    with pytest.raises(UnknownNameError, match="AR_PLUGINS"):
        registry.orderings.get("raster")


def test_allow_list_by_entry_point_or_distribution(monkeypatch):
    monkeypatch.setenv("AR_PLUGINS", "ar-core")
    plugins.load()
    assert "raster" in registry.orderings.names()
    assert "zigzag" not in registry.orderings.names()
    monkeypatch.setenv("AR_PLUGINS", "zigzag, core")
    plugins.load()
    assert {"raster", "zigzag"} <= set(registry.orderings.names())


def test_plugin_that_raises_at_import_is_skipped_with_a_warning(fake_distribution):
    fake_distribution("ar-broken", "broken", "raise RuntimeError('boom at import')\n")
    with pytest.warns(plugins.PluginLoadWarning, match=r"'broken'.*ar-broken.*boom at import"):
        infos = plugins.load()
    broken = next(i for i in infos if i.name == "broken")
    assert broken.status == "failed" and "boom at import" in (broken.error or "")
    assert "raster" in registry.orderings.names()  # the others still load


def test_plugin_whose_hook_raises_is_skipped(fake_distribution):
    fake_distribution(
        "ar-hookfail",
        "hookfail",
        """
        import ar_core
        @ar_core.hookimpl
        def register_orderings(register):
            register("half", object)
            raise ValueError("hook exploded")
        """,
    )
    with pytest.warns(plugins.PluginLoadWarning, match="hookfail.*hook exploded"):
        plugins.load()
    assert "half" not in registry.orderings.names()  # nothing half-registered
    assert "raster" in registry.orderings.names()


def _skipped(name: str, match: str) -> plugins.PluginInfo:
    """Load every plugin; ``name`` is skipped with a warning matching ``match``, the others
    (and ar-core's built-ins) load."""
    with pytest.warns(plugins.PluginLoadWarning, match=match):
        infos = plugins.load()
    info = next(i for i in infos if i.name == name)
    assert info.status == "failed" and info.error and info.registered == {}
    assert registry.orderings.provider("raster") == "core"
    assert registry.orderings.provider("zigzag") == "zigzag"
    assert {i.name: i.status for i in infos}["core"] == "loaded"
    return info


def test_duplicate_name_is_skipped_with_a_warning_naming_both(fake_distribution):
    fake_distribution(
        "ar-dupe",
        "dupe",
        """
        import ar_core
        @ar_core.hookimpl
        def register_orderings(register):
            register("dupe-own", object)
            register("raster", object)
        """,
    )
    info = _skipped("dupe", r"'dupe'.*'raster'.*'core'.*'dupe'")
    assert "DuplicateRegistrationError" in (info.error or "")
    assert "dupe-own" not in registry.orderings.names()  # all or nothing


def test_a_plugin_named_before_core_cannot_displace_a_builtin(fake_distribution):
    fake_distribution(
        "ar-aaa",
        "aaa",
        """
        import ar_core
        @ar_core.hookimpl
        def register_orderings(register):
            register("raster", object)
        """,
    )
    _skipped("aaa", r"'aaa'.*registered twice")


def test_misspelt_hook_is_skipped_with_a_warning(fake_distribution):
    fake_distribution(
        "ar-typo",
        "typo",
        """
        import ar_core
        @ar_core.hookimpl
        def register_ordering(register):
            register("x", object)
        """,
    )
    info = _skipped("typo", r"'typo'.*does not exist.*register_ordering")
    assert "register_ordering" in (info.error or "")


def test_hook_with_a_wrong_argument_name_is_skipped(fake_distribution):
    fake_distribution(
        "ar-badarg",
        "badarg",
        """
        import ar_core
        @ar_core.hookimpl
        def register_orderings(registr):
            registr("x", object)
        """,
    )
    info = _skipped("badarg", r"'badarg'.*does not match")
    assert "registr" in (info.error or "")


@pytest.mark.parametrize(
    "source",
    ["import sys\nsys.exit(3)\n", "raise BaseException('odd')\n", "raise SystemExit\n"],
)
def test_system_exit_or_base_exception_at_import_is_skipped(fake_distribution, source):
    fake_distribution("ar-exits", "exits", source)
    _skipped("exits", r"'exits'.*failed to import")


def test_keyboard_interrupt_at_import_goes_through(fake_distribution):
    fake_distribution("ar-ctrlc", "ctrlc", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        plugins.load()


_BROKEN = {
    "dupe": "import ar_core\n@ar_core.hookimpl\ndef register_orderings(register):\n"
    "    register('raster', object)\n",
    "typo": "import ar_core\n@ar_core.hookimpl\ndef register_ordering(register):\n    pass\n",
    "badarg": "import ar_core\n@ar_core.hookimpl\ndef register_orderings(reg):\n    pass\n",
    "exits": "import sys\nsys.exit(3)\n",
    "cmdfail": "import ar_core\n@ar_core.hookimpl\ndef register_orderings(register):\n"
    "    register('cmdfail-order', object)\n@ar_core.hookimpl\ndef register_commands(cli):\n"
    "    @cli.command('half')\n    def half() -> None:\n        pass\n"
    "    raise RuntimeError('no commands today')\n",
}


def test_cli_keeps_working_with_every_kind_of_broken_plugin(fake_distribution):
    roots = [str(fake_distribution(f"ar-{n}", n, src)) for n, src in _BROKEN.items()]
    env = {"PYTHONPATH": os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")])}
    proc = _ar("plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = {p["name"]: p for p in json.loads(proc.stdout)}
    for name in _BROKEN:
        assert data[name]["status"] == "failed", name
        assert data[name]["error"] and data[name]["registered"] == {}, name
        assert f"ar plugin '{name}'" in proc.stderr  # the warning names it
    assert "no commands today" in data["cmdfail"]["error"]
    assert data["core"]["status"] == "loaded" and data["zigzag"]["status"] == "loaded"
    table = _ar("plugins", env={**env, "COLUMNS": "400"})
    (row,) = [line for line in table.stdout.splitlines() if "cmdfail" in line]
    assert table.returncode == 0 and "failed" in row and "no commands today" in row
    help_ = _ar("--help", env=env)
    assert help_.returncode == 0 and " half " not in help_.stdout  # taken back
    # the other commands keep working: a real one runs, a user mistake is still one line
    proc = _ar("bench", "no-such-benchmark", env=env)
    assert proc.returncode == 2 and "unknown benchmark" in proc.stderr


def test_unknown_name_lists_available_and_the_package_to_install(monkeypatch):
    monkeypatch.setenv("AR_PLUGINS", "core")  # as if ar-vision were not installed
    plugins.load()
    with pytest.raises(UnknownNameError) as err:
        registry.orderings.get("next-scale")
    msg = str(err.value)
    assert "raster" in msg and "random" in msg
    assert "pip install ar-vision" in msg
    with pytest.raises(UnknownNameError, match="available:.*raster") as err2:
        registry.orderings.get("no-such-ordering")
    assert "pip install" not in str(err2.value)


def test_installed_package_provides_the_name():
    # with every plugin loaded, ar-vision's next-scale ordering is there
    assert registry.orderings.provider("next-scale") == "vision"


def test_example_plugin_ordering_is_listed_and_usable():
    assert registry.orderings.provider("zigzag") == "zigzag"
    plan = registry.orderings.get("zigzag")().plan((4, 4))
    assert plan.order().tolist()[:6] == [0, 1, 4, 8, 5, 2]
    assert sorted(plan.order().tolist()) == list(range(16))
    assert torch.equal(plan.step_ids()[plan.order()], torch.arange(16))


def test_cli_plugins_json_lists_builtins_and_example():
    proc = _ar("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    data = {p["name"]: p for p in json.loads(proc.stdout)}
    assert data["core"]["distribution"] == "ar-core"
    assert "raster" in data["core"]["registered"]["orderings"]
    assert data["kernels"]["distribution"] == "ar-kernels"
    assert data["zigzag"]["registered"]["orderings"] == ["zigzag"]


def test_cli_with_no_plugins(monkeypatch):
    proc = _ar("plugins", "--json", env={"AR_PLUGINS": ""})
    assert proc.returncode == 0, proc.stderr
    assert all(p["status"] == "skipped" for p in json.loads(proc.stdout))


def test_known_providers_name_only_what_the_packages_register():
    """Every name in KNOWN_PROVIDERS is registered, by the package it names; every name our
    other packages register is in it (so a missing package is always named)."""
    from ar_core.registry import HOOK_REGISTRIES, KNOWN_PROVIDERS

    plugin_package = {i.name: i.distribution for i in plugins.plugin_infos()}
    ours = {
        "ar-kernels",
        "ar-decoding",
        "ar-vision",
        "ar-text",
        "ar-diffusion",
        "ar-video",
        "ar-timeseries",
    }
    by_kind = {reg.kind: reg for reg in HOOK_REGISTRIES.values()}
    assert set(KNOWN_PROVIDERS) <= set(by_kind)
    for kind, reg in by_kind.items():
        known = KNOWN_PROVIDERS.get(kind, {})
        registered = {
            name: plugin_package[reg.provider(name)]
            for name in reg.names()
            if plugin_package[reg.provider(name)] in ours
        }
        assert registered == known, kind
