"""ar-core: autoregressive generation over steps.

``import ar_core as ar`` gives the public API; heavy modules load on first use so that
``import ar_core`` (and plugin discovery) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ar_core import registry
from ar_core.errors import (
    ArError,
    CheckpointError,
    ConfigError,
    DuplicateRegistrationError,
    InputError,
    NonFiniteError,
    PluginError,
    UnknownNameError,
)
from ar_core.hookspecs import hookimpl, hookspec
from ar_core.ordering import Ordering, Plan, PlanError

__version__ = "0.1.0"

# public name -> module that defines it (loaded lazily)
_LAZY: dict[str, str] = {
    "masks": "ar_core.masks",
    "MaskSpec": "ar_core.masks",
    "StaticKVCache": "ar_core.cache",
    "TransformerConfig": "ar_core.model",
    "Transformer": "ar_core.model",
    "ModelOutput": "ar_core.model",
    "GenerationConfig": "ar_core.generation",
    "GenerationResult": "ar_core.generation",
    "GenerationStats": "ar_core.generation",
    "generate": "ar_core.generation",
    "quantize": "ar_core.quant",
    "prepack": "ar_core.quant",
    "TrainConfig": "ar_core.trainer",
    "Trainer": "ar_core.trainer",
    "sampling": "ar_core.sampling",
    "attention": "ar_core.attention",
    "diagnostics": "ar_core.diagnostics",
    "plugins": "ar_core.plugins",
    "protocols": "ar_core.protocols",
    "steps": "ar_core.steps",
    "KVCache": "ar_core.protocols",
    "CausalLM": "ar_core.protocols",
    "Strategy": "ar_core.protocols",
    "StepRunner": "ar_core.protocols",
    "StepSampler": "ar_core.protocols",
    "LogitsTransform": "ar_core.protocols",
}

if TYPE_CHECKING:  # pragma: no cover
    from ar_core import attention, diagnostics, masks, plugins, protocols, sampling, steps
    from ar_core.cache import StaticKVCache
    from ar_core.generation import GenerationConfig, GenerationResult, GenerationStats, generate
    from ar_core.masks import MaskSpec
    from ar_core.model import ModelOutput, Transformer, TransformerConfig
    from ar_core.protocols import (
        CausalLM,
        KVCache,
        LogitsTransform,
        StepRunner,
        StepSampler,
        Strategy,
    )
    from ar_core.quant import prepack, quantize
    from ar_core.trainer import TrainConfig, Trainer


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'ar_core' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "ArError",
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "DuplicateRegistrationError",
    "GenerationConfig",
    "GenerationResult",
    "GenerationStats",
    "InputError",
    "KVCache",
    "LogitsTransform",
    "MaskSpec",
    "ModelOutput",
    "NonFiniteError",
    "Ordering",
    "Plan",
    "PlanError",
    "PluginError",
    "StaticKVCache",
    "StepRunner",
    "StepSampler",
    "Strategy",
    "TrainConfig",
    "Trainer",
    "Transformer",
    "TransformerConfig",
    "UnknownNameError",
    "attention",
    "diagnostics",
    "generate",
    "hookimpl",
    "hookspec",
    "masks",
    "plugins",
    "prepack",
    "protocols",
    "quantize",
    "registry",
    "sampling",
    "steps",
]
