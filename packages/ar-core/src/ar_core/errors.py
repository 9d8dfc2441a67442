"""Exceptions of ar: every user mistake raises an ``ArError`` subclass with a one-line message
that names the problem and the fix (the CLI prints it and exits with code 2)."""

from __future__ import annotations

from typing import Any


class ArError(Exception):
    """Base class of user-facing errors."""


class ConfigError(ArError, ValueError):
    """An invalid configuration value."""


class InputError(ArError, ValueError):
    """Bad input to a model or function: wrong shape, dtype, range or length."""


class UnknownNameError(ArError, KeyError):
    """A name that no installed plugin registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateRegistrationError(ArError):
    """Two plugins registered the same name."""


class PluginError(ArError):
    """A plugin that is broken (bad hook, bad registration)."""


class CheckpointError(ArError):
    """A checkpoint that is missing, corrupted or does not match the model."""


class NonFiniteError(ArError, FloatingPointError):
    """A loss or gradient that became NaN or infinite during training."""


def validation_message(exc: Any, name: str) -> str:
    """One line from a pydantic ``ValidationError``: ``invalid NAME: field: problem; ...``."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
    )
    return f"invalid {name}: {' '.join(problems.split())}"
