"""Non-finite logits are an error naming the decode step and the row, never silent tokens.

Before the check, one NaN weight made greedy, sample, Jacobi and prompt lookup return all
zeros (beam: all V - 1) with no error. Here: (1) one NaN weight in the first layer poisons
every row from the prefill on; (2) a NaN in the embedding of a token that only row 1's
prompt holds poisons row 1 alone, at step 0; every strategy must name exactly that.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import tiny

from ar_core.errors import InputError
from ar_core.generation import GenerationConfig, generate

V = 32


def _neighbours() -> torch.Tensor:
    return torch.stack([torch.roll(torch.arange(V), -s) for s in (1, 2, 3)], 1)  # (V, 3)


def _draft() -> Any:
    return tiny(V, dim=32, layers=1, seed=7)


# strategy, its keyword arguments, sample?
STRATEGIES: list[tuple[str, dict[str, Any], bool]] = [
    ("greedy", {}, False),
    ("sample", {}, True),
    ("speculative", {"num_draft_tokens": 3}, False),
    ("speculative", {"num_draft_tokens": 3}, True),
    ("tree-speculative", {"expansion": (2, 1)}, False),
    ("prompt-lookup", {"num_draft_tokens": 3}, False),
    ("prompt-lookup", {"num_draft_tokens": 3}, True),
    ("jacobi", {"window": 3}, False),
    ("lookahead", {}, False),
    ("sjd", {}, True),
    ("lantern", {"window": 3, "delta": 0.1}, True),
    ("beam", {"num_beams": 3}, False),
    ("constrained", {}, False),
]
IDS = [f"{s}-{'sample' if d else 'greedy'}" for s, _, d in STRATEGIES]


def _kwargs(strategy: str, kw: dict[str, Any]) -> dict[str, Any]:
    if strategy in ("speculative", "tree-speculative"):
        return {**kw, "draft_model": _draft()}
    if strategy == "lantern":
        return {**kw, "neighbours": _neighbours()}
    if strategy == "constrained":
        return {**kw, "allowed_next": lambda tokens: list(range(V))}
    return kw


def _prompts() -> torch.Tensor:
    # token 31 only in row 1; rows 0 and 2 use 0..15
    x = torch.randint(0, 16, (3, 6), generator=torch.Generator().manual_seed(3))
    x[1, 2] = 31
    return x


def _config(do_sample: bool) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=8, temperature=1.0 if do_sample else 0.0, seed=1)


@pytest.mark.parametrize(("strategy", "kw", "do_sample"), STRATEGIES, ids=IDS)
def test_one_nan_weight_is_an_error_not_zeros(strategy: str, kw: dict, do_sample: bool) -> None:
    model = tiny(V, dim=32)
    with torch.no_grad():
        model.layers[0].attn.wqkv.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"non-finite logits .* at decode step 0, row 0:"):
        generate(model, _prompts(), _config(do_sample), strategy=strategy, **_kwargs(strategy, kw))


@pytest.mark.parametrize(("strategy", "kw", "do_sample"), STRATEGIES, ids=IDS)
def test_the_error_names_the_poisoned_row(strategy: str, kw: dict, do_sample: bool) -> None:
    model = tiny(V, dim=32)
    kwargs = _kwargs(strategy, kw)
    healthy = generate(model, _prompts(), _config(do_sample), strategy=strategy, **kwargs)
    assert healthy.sequences.shape == (3, 14)
    with torch.no_grad():
        model.tok_embeddings.weight[31, 5] = float("inf") * 0  # NaN
    with pytest.raises(InputError, match=r"at decode step 0, row 1:"):
        generate(model, _prompts(), _config(do_sample), strategy=strategy, **kwargs)


@pytest.mark.parametrize("do_sample", [False, True])
def test_greedy_and_sample_name_the_first_poisoned_step(do_sample: bool) -> None:
    """NaN in the embedding of a token row 0 first emits as new token j: its logits turn
    NaN at step j + 1 (step i picks new token i); the error names the earliest poisoned
    step (either row's), then the first row poisoned at it."""
    model = tiny(V, dim=32)
    x = _prompts()[[0, 2]]  # no 31
    cfg = _config(do_sample)
    new = generate(model, x, cfg, strategy="sample" if do_sample else "greedy").sequences[:, 6:]
    prompt_tokens = set(x.flatten().tolist())
    j, token = next(
        (j, t) for j, t in enumerate(new[0].tolist()) if t not in prompt_tokens and j < 7
    )
    first_in = [
        next((i for i, t in enumerate(row.tolist()) if t == token), None) for row in new
    ]  # the step after it is the first poisoned one, in each row
    step, row = min((i + 1, r) for r, i in enumerate(first_in) if i is not None and i + 1 < 8)
    assert step <= j + 1
    with torch.no_grad():
        model.tok_embeddings.weight[token, 0] = float("nan")
    with pytest.raises(InputError, match=rf"at decode step {step}, row {row}:"):
        generate(model, x, cfg, strategy="sample" if do_sample else "greedy")
