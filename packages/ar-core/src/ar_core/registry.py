"""Typed registries filled by plugins.

``ar_core.registry.orderings.get("raster")`` returns what a plugin registered under that
name; ``.names()`` lists what is available. Registries load the installed plugins on first
use (see :mod:`ar_core.plugins`), so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from ar_core.errors import DuplicateRegistrationError, UnknownNameError

T = TypeVar("T")

# Names our own packages (other than ar-core) register, so that an unknown-name error can
# say what to install. Only names that exist: a test of the full install checks each entry
# against what its package registers.
KNOWN_PROVIDERS: dict[str, dict[str, str]] = {
    "orderings": {
        "next-scale": "ar-vision",
        "next-frequency": "ar-vision",
        "coarse-to-fine": "ar-vision",
    },
    "strategies": {
        name: "ar-decoding"
        for name in (
            "speculative",
            "tree-speculative",
            "prompt-lookup",
            "jacobi",
            "lookahead",
            "sjd",
            "lantern",
            "beam",
            "constrained",
            "medusa",
            "assd",
            "mtp",
            "first",
        )
    }
    | {
        name: "ar-diffusion"
        for name in ("mdlm", "block-diffusion", "freecache", "ar-guided-diffusion", "ctrldiff")
    },
    "attention_backends": {"flex": "ar-kernels", "xformers": "ar-kernels", "triton": "ar-kernels"},
    "step_samplers": {
        name: "ar-diffusion" for name in ("diffusion-head", "flow-head", "gmm-head", "mse-head")
    },
    "tokenizers": {
        "byte": "ar-text",
        "bpe": "ar-text",
        "pixel": "ar-vision",
        "vqvae": "ar-vision",
        "msrvq": "ar-vision",
        "nfig": "ar-vision",
        "ctf": "ar-vision",
        "dar": "ar-vision",
    },
    "recipes": {
        "text-code": "ar-text",
        "text-chars": "ar-text",
        "text-hyperfit": "ar-text",
        "text-stargraph": "ar-text",
        "text-sequencematch": "ar-text",
        "text-seal": "ar-text",
        "text-causal": "ar-text",
        "text-sets": "ar-text",
        "text-peptides": "ar-text",
        "vision-digits": "ar-vision",
        "vision-images": "ar-vision",
        "diffusion-text": "ar-diffusion",
        "diffusion-2d": "ar-diffusion",
        "diffusion-digits": "ar-diffusion",
        "video-moving-digits": "ar-video",
        "timeseries-ett": "ar-timeseries",
        "decoding-mtp": "ar-decoding",
    },
    "benchmarks": {
        "decoding": "ar-decoding",
        "diffusion": "ar-diffusion",
        "diffusion-continuous": "ar-diffusion",
        "flex_vs_sdpa": "ar-kernels",
        "hf_strategies": "ar-text",
        "stargraph_compare": "ar-text",
        "vision": "ar-vision",
        "video": "ar-video",
        "timeseries": "ar-timeseries",
    },
}


class Registry(Generic[T]):
    """Name -> object, with the plugin that provided each name."""

    def __init__(self, kind: str, description: str) -> None:
        self.kind = kind
        self.description = description
        self._items: dict[str, T] = {}
        self._providers: dict[str, str] = {}

    # -- filled by the plugin manager -------------------------------------------------
    def check_new(self, name: str, *, provider: str) -> None:
        """DuplicateRegistrationError unless ``name`` is a valid name not registered yet."""
        if not isinstance(name, str) or not name:
            raise DuplicateRegistrationError(
                f"plugin {provider!r} registered a {self.kind} with an invalid name {name!r}"
            )
        if name in self._items:
            raise DuplicateRegistrationError(
                f"{self.description} {name!r} is registered twice: by plugin "
                f"{self._providers[name]!r} and by plugin {provider!r}; uninstall one of them "
                f"or choose with AR_PLUGINS"
            )

    def register(self, name: str, obj: T, *, provider: str) -> None:
        self.check_new(name, provider=provider)
        self._items[name] = obj
        self._providers[name] = provider

    def remove_provider(self, provider: str) -> None:
        """Forget every name ``provider`` registered (a plugin skipped after loading)."""
        for name in [n for n, p in self._providers.items() if p == provider]:
            del self._items[name], self._providers[name]

    def clear(self) -> None:
        self._items.clear()
        self._providers.clear()

    # -- used by everyone -------------------------------------------------------------
    def _ensure(self) -> None:
        from ar_core import plugins

        plugins.ensure_loaded()

    def get(self, name: str) -> T:
        self._ensure()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        available = ", ".join(sorted(self._items)) or "none (no plugin registered one)"
        msg = f"unknown {self.description} {name!r}; available: {available}"
        package = KNOWN_PROVIDERS.get(self.kind, {}).get(name)
        if package is not None:
            msg += f". {name!r} is provided by {package}: pip install {package}"
        from ar_core import plugins

        if plugins.allow_list() is not None:
            msg += " (AR_PLUGINS restricts which plugins load)"
        return msg

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._items)

    def provider(self, name: str) -> str:
        self.get(name)
        return self._providers[name]

    def items(self) -> Iterator[tuple[str, T]]:
        self._ensure()
        yield from sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"


orderings: Registry[Any] = Registry("orderings", "ordering")
strategies: Registry[Any] = Registry("strategies", "strategy")
attention_backends: Registry[Any] = Registry("attention_backends", "attention backend")
step_samplers: Registry[Any] = Registry("step_samplers", "step sampler")
models: Registry[Any] = Registry("models", "model")
tokenizers: Registry[Any] = Registry("tokenizers", "tokenizer")
recipes: Registry[Any] = Registry("recipes", "recipe")
benchmarks: Registry[Any] = Registry("benchmarks", "benchmark")

# hook name -> registry it fills
HOOK_REGISTRIES: dict[str, Registry[Any]] = {
    "register_orderings": orderings,
    "register_strategies": strategies,
    "register_attention_backends": attention_backends,
    "register_step_samplers": step_samplers,
    "register_models": models,
    "register_tokenizers": tokenizers,
    "register_recipes": recipes,
    "register_benchmarks": benchmarks,
}
