"""FiRST's access to the decoder layers of a ``from_hf`` model (``ar_text.hf.HFCausalLM``).

:mod:`ar_decoding.first` skips and routes layers of an ar-core ``Transformer`` by swapping
its ``layers`` list; a transformers decoder is run by transformers' own code, which may
read attributes of its layers (``attention_type``) and index them, so the layers stay in
place and only their ``forward`` is replaced for the call (:func:`patched`): a skipped
layer returns its input hidden states without running, so it writes no keys and values
into its slots of the KV cache and no later forward reads them. Under one skip set for the
prefill and every decode step, the cache is therefore consistent (cached decode equals
recomputation without a cache).

:func:`hf_layers` finds the layer list (``model.layers`` for Llama-likes,
``transformer.h`` for GPT-2, ``model.decoder.layers`` for OPT, ``gpt_neox.layers``, ...,
else the one ``nn.ModuleList`` of ``num_hidden_layers`` modules in the model) and probes it
with one forward: every layer must run exactly once per forward, and the probe records
whether a layer returns its hidden states as a tensor (transformers 5) or as the first
entry of a tuple (older GPT-2-style blocks) and the width of the hidden states.

Notation: B rows, T tokens, C width.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError

__all__ = ["HF_LAYER_PATHS", "HFLayers", "LayerFn", "hf_layers", "is_hf", "patched"]

# where common transformers causal LMs keep their decoder layers (attribute paths from the
# *ForCausalLM module): Llama/Mistral/Qwen/Gemma/Phi, GPT-2/GPT-J/Bloom/Falcon, OPT,
# GPT-NeoX, MPT
HF_LAYER_PATHS = (
    "model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers",
    "transformer.blocks", "model.language_model.layers",
)  # fmt: skip

# a layer's replacement: (its input hidden states x (B, T, C), a thunk that runs the layer
# on its actual arguments and returns its output hidden states) -> the hidden states to pass on
LayerFn = Callable[[Tensor, Callable[[], Tensor]], Tensor]


@dataclass(frozen=True)
class HFLayers:
    """The decoder layers of a ``from_hf`` model: ``layers`` (found at ``path``), the
    hidden width ``dim`` and whether a layer returns a tuple (hidden states first)."""

    layers: nn.ModuleList
    path: str
    dim: int
    tuple_out: bool


_FOUND: weakref.WeakKeyDictionary[nn.Module, HFLayers] = weakref.WeakKeyDictionary()


def is_hf(model: object) -> bool:
    """Whether ``model`` is a ``from_hf`` adapter (the transformers model as ``.hf``)."""
    hf = getattr(model, "hf", None)
    return isinstance(model, nn.Module) and callable(getattr(hf, "get_input_embeddings", None))


def _resolve(root: nn.Module, path: str) -> object:
    obj: object = root
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _find(hf: nn.Module, n: int, family: str) -> tuple[nn.ModuleList, str]:
    for path in HF_LAYER_PATHS:
        found = _resolve(hf, path)
        if isinstance(found, nn.ModuleList) and len(found) == n:
            return found, path
    lists = [
        (name, m) for name, m in hf.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n
    ]
    if len(lists) == 1:
        return lists[0][1], lists[0][0]
    others = (
        f"several other lists of {n} ({[name for name, _ in lists]}) could be it"
        if lists
        else f"no other nn.ModuleList of {n} modules is in the model"
    )
    raise ConfigError(
        f"FiRST: cannot find the {n} decoder layers of {family} ({type(hf).__name__}): none "
        f"of {list(HF_LAYER_PATHS)} is an nn.ModuleList of {n} modules and {others}; add "
        f"the attribute path of its layer list to ar_decoding.first_hf.HF_LAYER_PATHS, or "
        f"use a family that keeps them in one list (llama: model.layers, gpt2: transformer.h)"
    )


def hf_layers(model: nn.Module) -> HFLayers:
    """The decoder layers of the ``from_hf`` adapter ``model`` (probed once per model, see
    the module docstring); a :class:`~ar_core.errors.ConfigError` naming the fix when they
    cannot be found or do not run once each per forward."""
    known = _FOUND.get(model)
    if known is not None:
        return known
    hf: Any = getattr(model, "hf", None)
    family = str(getattr(model, "family", type(hf).__name__))
    n = getattr(model, "n_layers", None)
    if not isinstance(n, int):
        n = int(getattr(hf.config, "num_hidden_layers", 0) or 0)
    if n < 1:
        raise ConfigError(
            f"FiRST: the {family} config names no num_hidden_layers, so its decoder layers "
            f"cannot be found; use a decoder-only family with one stack of layers (e.g. llama)"
        )
    layers, path = _find(hf, n, family)
    calls = [0] * n
    seen: dict[str, Any] = {}

    def hook(i: int) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            calls[i] += 1
            x = args[0] if args else kwargs.get("hidden_states")
            seen.setdefault("dim", x.shape[-1] if isinstance(x, Tensor) else None)
            seen.setdefault("tuple", isinstance(output, tuple))

        return record

    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(layers)]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 1, dtype=torch.long, device=device))
    finally:
        for h in handles:
            h.remove()
    if calls != [1] * n:
        raise ConfigError(
            f"FiRST: one forward of {family} ran its layers at {path} {calls} times (layer by "
            f"layer); skipping a layer for the whole decode needs each to run exactly once; "
            f"use a family whose decoder runs each layer once (e.g. llama)"
        )
    if not isinstance(seen.get("dim"), int):
        raise ConfigError(
            f"FiRST: the layers of {family} at {path} take no hidden-states tensor as their "
            f"first argument (or hidden_states=), which skipping passes on unchanged; use a "
            f"family whose layers do (e.g. llama)"
        )
    found = HFLayers(layers, path, int(seen["dim"]), bool(seen["tuple"]))
    _FOUND[model] = found
    return found


@contextmanager
def patched(stack: HFLayers, fns: Mapping[int, LayerFn]) -> Iterator[None]:
    """For the duration, layer ``i`` of ``stack`` runs ``fns[i]`` (given its input hidden
    states and a thunk that runs the layer itself); the other layers are untouched."""
    originals: list[tuple[nn.Module, Callable[..., Any] | None]] = []

    def replacement(layer: nn.Module, fn: LayerFn) -> Callable[..., Any]:
        run = layer.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            x = args[0] if args else kwargs["hidden_states"]

            def compute() -> Tensor:
                out = run(*args, **kwargs)
                return out[0] if isinstance(out, tuple) else out

            h = fn(x, compute)
            return (h,) if stack.tuple_out else h

        return forward

    try:
        for i, fn in fns.items():
            layer = stack.layers[i]
            originals.append((layer, layer.__dict__.get("forward")))
            layer.forward = replacement(layer, fn)  # type: ignore[method-assign]
        yield
    finally:
        for layer, previous in reversed(originals):
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous  # type: ignore[method-assign]
