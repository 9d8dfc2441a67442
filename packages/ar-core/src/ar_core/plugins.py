"""Loading of ``ar`` plugins (pluggy) from the entry-point group ``ar``.

Our own packages are plugins like any other: ar-core registers its built-ins through its
own entry point ``core = "ar_core._plugin"``.

* ``AR_PLUGINS`` is an allow-list of entry-point or distribution names, comma separated.
  Unset: every installed plugin loads. Empty string: none loads.
* One broken plugin never takes the others (or the CLI) down: a plugin that fails to
  import (any exception, ``SystemExit`` included), implements a hook that does not exist
  (a misspelt name), takes an argument the hook does not pass, registers a name another
  plugin registered first, or whose hook raises, is reported by name with a
  :class:`PluginLoadWarning` and skipped (status ``"failed"`` with its error); the others
  load. Only ``KeyboardInterrupt`` goes through.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from ar_core import hookspecs
from ar_core.errors import DuplicateRegistrationError
from ar_core.registry import HOOK_REGISTRIES

ENTRY_POINT_GROUP = "ar"
ENV_VAR = "AR_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin was skipped because it failed to import or to register."""


@dataclass
class PluginInfo:
    """What ``ar plugins`` shows for one plugin."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    status: str = "loaded"  # "loaded" | "failed" | "skipped"
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "status": self.status,
            "error": self.error,
            "registered": self.registered,
        }


@dataclass
class _State:
    pm: pluggy.PluginManager | None = None
    infos: list[PluginInfo] = field(default_factory=list)
    loaded: bool = False


_state = _State()


def lazy(module: str, attr: str) -> Callable[..., Any]:
    """A stand-in for ``module.attr`` that imports ``module`` on its first call, so that a
    plugin registers strategies (or any callables) without importing torch-heavy modules
    at discovery: ``register("mdlm", lazy("ar_diffusion.mdlm", "mdlm"))``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attr
    call.__module__ = module
    call.__doc__ = f"{module}.{attr} (imported on first use)"
    return call


def allow_list() -> set[str] | None:
    """The names in ``AR_PLUGINS``, or None when it is unset (everything loads)."""
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def _entry_points() -> list[md.EntryPoint]:
    eps = md.entry_points(group=ENTRY_POINT_GROUP)
    seen: set[tuple[str, str]] = set()
    out = []
    # ar-core's built-ins first: a plugin re-registering one of them is the one skipped
    for ep in sorted(eps, key=lambda e: (e.name != "core", e.name)):
        key = (ep.name, ep.value)
        if key not in seen:  # the same distribution found twice on sys.path
            seen.add(key)
            out.append(ep)
    return out


def _fail(info: PluginInfo, what: str, exc: BaseException) -> None:
    """Mark ``info`` failed and warn, naming the plugin and its error."""
    message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    info.status, info.error = "failed", f"{type(exc).__name__}: {message}".rstrip(": ")
    info.registered = {}
    warnings.warn(
        f"ar plugin {info.name!r} {what} and was skipped: {info.error}; fix or uninstall "
        f"it, or leave it out with AR_PLUGINS",
        PluginLoadWarning,
        stacklevel=3,
    )


def _call_registrations(pm: pluggy.PluginManager, plugin: object, info: PluginInfo) -> None:
    """Call each ``register_*`` hook of one plugin and commit what it registered: all of it,
    or nothing when a name is invalid or already taken."""
    staged: list[tuple[str, str, Any]] = []
    for hook_name in HOOK_REGISTRIES:
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue

            def register(name: str, obj: Any, /, _hook: str = hook_name) -> None:
                staged.append((_hook, name, obj))

            impl.function(register=register)
    for hook_name, name, _obj in staged:  # check everything before committing anything
        HOOK_REGISTRIES[hook_name].check_new(name, provider=info.name)
    seen = [(hook_name, name) for hook_name, name, _ in staged]
    for key in set(seen):
        if seen.count(key) > 1:
            raise DuplicateRegistrationError(
                f"{HOOK_REGISTRIES[key[0]].description} {key[1]!r} is registered twice by "
                f"plugin {info.name!r}"
            )
    for hook_name, name, obj in staged:
        HOOK_REGISTRIES[hook_name].register(name, obj, provider=info.name)
        info.registered.setdefault(HOOK_REGISTRIES[hook_name].kind, []).append(name)


def load(
    *, allow: set[str] | str | None = "env", extra: list[tuple[str, object]] | None = None
) -> list[PluginInfo]:
    """(Re)load the plugins: clear every registry, then fill it again.

    ``allow``: "env" reads ``AR_PLUGINS``; None loads every plugin; a set loads those names.
    ``extra``: (name, plugin object) pairs to register as well (tests, notebooks).
    """
    if allow == "env":
        allow = allow_list()
    assert not isinstance(allow, str)
    for registry in HOOK_REGISTRIES.values():
        registry.clear()
    pm = _new_manager()
    infos: list[PluginInfo] = []
    candidates: list[tuple[PluginInfo, Any]] = []

    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        info = PluginInfo(name=ep.name, distribution=dist, version=version, module=ep.value)
        if allow is not None and ep.name not in allow and (dist is None or dist not in allow):
            info.status = "skipped"
            infos.append(info)
            continue
        try:
            plugin = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a broken plugin must not end `ar`
            _fail(info, f"failed to import (from {dist or 'unknown distribution'})", exc)
            infos.append(info)
            continue
        candidates.append((info, plugin))
        infos.append(info)

    for name, plugin in extra or []:
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__
        info = PluginInfo(name=name, distribution=None, version=None, module=module)
        candidates.append((info, plugin))
        infos.append(info)

    registered: list[tuple[PluginInfo, Any]] = []
    for info, plugin in candidates:
        try:
            pm.register(plugin, name=info.name)
        except Exception as exc:  # e.g. a hook argument the hook does not pass
            _fail(info, "has a hook that does not match its specification", exc)
            continue
        try:
            pm.check_pending()  # the plugins before this one passed: this one is at fault
        except pluggy.PluginValidationError as exc:
            pm.unregister(plugin)
            _fail(info, "implements a hook that does not exist (a misspelt name?)", exc)
            continue
        registered.append((info, plugin))

    for info, plugin in registered:
        try:
            _call_registrations(pm, plugin, info)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            _fail(info, "could not register", exc)
            pm.unregister(plugin)

    _state.pm, _state.infos, _state.loaded = pm, infos, True
    return infos


def ensure_loaded() -> None:
    """Load the plugins once (the registries call this on first use)."""
    if not _state.loaded:
        load()


def get_plugin_manager() -> pluggy.PluginManager:
    ensure_loaded()
    assert _state.pm is not None
    return _state.pm


def plugin_infos() -> list[PluginInfo]:
    ensure_loaded()
    return list(_state.infos)


def reset() -> None:
    """Forget what was loaded; the next registry use loads again (tests use this)."""
    for registry in HOOK_REGISTRIES.values():
        registry.clear()
    _state.pm, _state.infos, _state.loaded = None, [], False


def add_commands(cli: Any) -> list[str]:
    """Let every loaded plugin add subcommands to the typer app ``cli``; return failures.

    A plugin whose ``register_commands`` raises is skipped whole: the commands it added
    before raising are taken back, what it registered is removed from the registries, and
    ``ar plugins`` shows it as failed with its error."""
    pm = get_plugin_manager()
    failures = []
    by_name = {info.name: info for info in _state.infos}
    for impl in pm.hook.register_commands.get_hookimpls():
        commands = list(getattr(cli, "registered_commands", []))
        groups = list(getattr(cli, "registered_groups", []))
        try:
            impl.function(cli=cli)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            failures.append(impl.plugin_name)
            if hasattr(cli, "registered_commands"):
                cli.registered_commands[:] = commands
            if hasattr(cli, "registered_groups"):
                cli.registered_groups[:] = groups
            for registry in HOOK_REGISTRIES.values():
                registry.remove_provider(impl.plugin_name)
            info = by_name.get(impl.plugin_name) or PluginInfo(
                impl.plugin_name, None, None, type(impl.plugin).__name__
            )
            _fail(info, "failed to add its commands", exc)
            pm.unregister(impl.plugin)
    return failures
