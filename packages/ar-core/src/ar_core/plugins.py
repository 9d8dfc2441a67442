"""Loading of ``ar`` plugins (pluggy) from the entry-point group ``ar``.

Our own packages are plugins like any other: ar-core registers its built-ins through its
own entry point ``core = "ar_core._plugin"``.

* ``AR_PLUGINS`` is an allow-list of entry-point or distribution names, comma separated.
  Unset: every installed plugin loads. Empty string: none loads.
* A plugin that fails to import (or whose hook raises) is reported by name with a
  warning and skipped; the others load.
* A name registered twice is a :class:`~ar_core.errors.DuplicateRegistrationError`
  naming both plugins.
* ``pm.check_pending()`` runs after loading, so a hook with a misspelt name fails loudly.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from ar_core import hookspecs
from ar_core.errors import DuplicateRegistrationError, PluginError
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
    for ep in sorted(eps, key=lambda e: e.name):
        key = (ep.name, ep.value)
        if key not in seen:  # the same distribution found twice on sys.path
            seen.add(key)
            out.append(ep)
    return out


def _call_registrations(pm: pluggy.PluginManager, plugin: object, info: PluginInfo) -> None:
    """Call each ``register_*`` hook of one plugin and commit what it registered."""
    staged: list[tuple[str, str, Any]] = []
    for hook_name in HOOK_REGISTRIES:
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue

            def register(name: str, obj: Any, /, _hook: str = hook_name) -> None:
                staged.append((_hook, name, obj))

            impl.function(register=register)
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
        except Exception as exc:  # a broken plugin must not take the others down
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"ar plugin {ep.name!r} (from {dist or 'unknown distribution'}) failed to "
                f"import and was skipped: {info.error}",
                PluginLoadWarning,
                stacklevel=2,
            )
            infos.append(info)
            continue
        candidates.append((info, plugin))
        infos.append(info)

    for name, plugin in extra or []:
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__
        info = PluginInfo(name=name, distribution=None, version=None, module=module)
        candidates.append((info, plugin))
        infos.append(info)

    for info, plugin in candidates:
        try:
            pm.register(plugin, name=info.name)
        except Exception as exc:
            raise PluginError(f"plugin {info.name!r} could not be registered: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook that does not exist: {exc}") from exc

    for info, plugin in candidates:
        try:
            _call_registrations(pm, plugin, info)
        except (PluginError, DuplicateRegistrationError):
            reset()
            raise
        except Exception as exc:
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"ar plugin {info.name!r} raised while registering and was skipped: {info.error}",
                PluginLoadWarning,
                stacklevel=2,
            )
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
    """Let every loaded plugin add subcommands to the typer app ``cli``; return failures."""
    pm = get_plugin_manager()
    failures = []
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:
            failures.append(impl.plugin_name)
            warnings.warn(
                f"ar plugin {impl.plugin_name!r} failed to add its commands and was skipped: "
                f"{type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
    return failures
