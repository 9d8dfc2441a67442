"""``RecipeBase``: what every registered recipe shares.

A recipe module (``ar_<package>/recipes/<name>.py``) subclasses :class:`RecipeBase`,
sets ``name``, ``description``, ``config_class`` (and ``in_demo``), and writes two
methods: ``_run(config, out_dir, progress)`` (the body of ``run``, given a config that
is already of ``config_class``, under ``torch_threads(config.threads)`` when the config
has a ``threads`` field) and ``sample(checkpoint_dir, n, progress)``. The base checks
the class attributes once, when the subclass is defined, and the config's type once,
in ``run``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ClassVar

import pydantic

from ar_core.errors import ConfigError
from ar_core.recipes import (
    Progress,
    RecipeResult,
    check_fields,
    read_recipe_file,
    torch_threads,
)


class RecipeBase:
    """Base of a recipe: config checks and torch threads; subclasses write ``_run``."""

    name: ClassVar[str]
    description: ClassVar[str]
    config_class: ClassVar[type[pydantic.BaseModel]]
    in_demo: ClassVar[bool] = False  # run by `ar demo` (with demo_config())

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [a for a in ("name", "description", "config_class") if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"recipe class {cls.__name__} must set {', '.join(missing)}")
        if not (isinstance(cls.name, str) and cls.name):
            raise TypeError(f"recipe class {cls.__name__}: name must be a non-empty string")
        if not (
            isinstance(cls.config_class, type) and issubclass(cls.config_class, pydantic.BaseModel)
        ):
            raise TypeError(
                f"recipe {cls.name!r}: config_class must be a pydantic model class, "
                f"got {cls.config_class!r}"
            )

    def demo_config(self) -> pydantic.BaseModel:
        """Small settings that finish in about a minute on 2 CPU cores (``ar demo``)."""
        return self.config_class()

    def check_config(self, config: object) -> Any:
        """``config`` itself when it is a valid ``config_class`` (its cross-field checks:
        :func:`~ar_core.recipes.check_fields`); else a one-line ConfigError."""
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"recipe {self.name!r} expects a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        check_fields(config)  # the checks of build_config, for configs built in Python
        return config

    def threads(self, config: pydantic.BaseModel) -> contextlib.AbstractContextManager[None]:
        """``torch_threads(config.threads)`` when the config has that field, else nothing."""
        n = getattr(config, "threads", None)
        return torch_threads(n) if isinstance(n, int) else contextlib.nullcontext()

    def read_config(self, checkpoint_dir: Path, **updates: Any) -> Any:
        """The ``config_class`` that wrote ``checkpoint_dir`` (its recipe.json), with
        ``updates`` applied; a file that does not validate is a one-line ConfigError."""
        _, fields = read_recipe_file(Path(checkpoint_dir))
        try:
            return self.config_class.model_validate({**fields, **updates})
        except pydantic.ValidationError as exc:
            raise ConfigError(
                f"{checkpoint_dir}: recipe.json holds no valid {self.config_class.__name__} "
                f"({exc.error_count()} errors); re-run ar train {self.name}"
            ) from None

    def run(self, config: pydantic.BaseModel, out_dir: Path, progress: Progress) -> RecipeResult:
        """Train, sample and evaluate; write checkpoints and pictures under ``out_dir``."""
        checked = self.check_config(config)
        with self.threads(checked):
            return self._run(checked, Path(out_dir), progress)

    def _run(self, config: Any, out_dir: Path, progress: Progress) -> RecipeResult:
        raise NotImplementedError(f"recipe {self.name!r} defines no _run")

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        """Sample ``n`` items from a checkpoint this recipe wrote."""
        raise NotImplementedError(f"recipe {self.name!r} cannot sample")

    def __repr__(self) -> str:
        return f"<recipe {self.name}>"
