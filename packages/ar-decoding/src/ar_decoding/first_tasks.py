"""FiRST on a two-task mix: do the routers choose different skip sets per task, and are
their sets better than random sets of the same size?

The setting (everything seeded; ``python -m ar_decoding.first_tasks`` prints the study):

* two synthetic tasks over 16 content tokens, told apart by their first token:
  **count** (``A, x, x+1, x+2, ...`` mod 16: the next token depends on the last one only)
  and **copy** (``B, s_1..s_8, SEP, s_1..s_8``: eight random tokens, then the same eight
  again - the continuation must be read back from eight positions earlier);
* a 4-layer ar-core ``Transformer`` trained on the 50/50 mix (next-token loss);
* :class:`~ar_decoding.first.FiRSTRouters` trained on the frozen model with
  :func:`~ar_decoding.first.train_routers` (``gate="bernoulli"``, skip regulariser
  ``skip_weight``) on prompts of :data:`PROMPT` tokens, scored on the 6 tokens after them.

:func:`skip_study` decides each held-out prompt's skip set with the routers
(:func:`~ar_decoding.first.choose_skip`) and compares, per task, the continuation's mean
negative log-likelihood (teacher forced, nats per token) under those sets with ``draws``
random assignments that give every row a uniformly random set of the *same size* as its
router set (so the same skip ratio, row by row).

Notation: B rows, L layers, P prompt tokens, T sequence tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core.model import Transformer, TransformerConfig
from ar_decoding.first import FiRSTRouters, LayerSkipModel, choose_skip, train_routers

__all__ = [
    "PROMPT",
    "TASKS",
    "continuation_nll",
    "mix",
    "skip_study",
    "task_batch",
    "train_base",
    "two_task_study",
]

CONTENT, MARK_COUNT, MARK_COPY, SEP = 16, 16, 17, 18
VOCAB, SEQ, PROMPT = 20, 18, 12  # tokens; the 6 after the prompt are scored
TASKS = ("count", "copy")


def task_batch(gen: torch.Generator, n: int, task: int) -> Tensor:
    """(n, SEQ) sequences of task ``task`` (0 count, 1 copy)."""
    if task == 0:
        start = torch.randint(0, CONTENT, (n, 1), generator=gen)
        body = (start + torch.arange(SEQ - 1)) % CONTENT
        return torch.cat([torch.full((n, 1), MARK_COUNT), body], 1)
    s = torch.randint(0, CONTENT, (n, 8), generator=gen)
    return torch.cat([torch.full((n, 1), MARK_COPY), s, torch.full((n, 1), SEP), s], 1)


def mix(gen: torch.Generator, n: int) -> Tensor:
    """(n, SEQ): each row count or copy with probability 1/2."""
    pick = torch.rand(n, generator=gen) < 0.5
    return torch.where(pick[:, None], task_batch(gen, n, 0), task_batch(gen, n, 1))


def train_base(
    *, layers: int = 4, dim: int = 64, steps: int = 400, batch_size: int = 32, seed: int = 0
) -> Transformer:
    """A small ``Transformer`` trained on :func:`mix` (AdamW 3e-3)."""
    torch.manual_seed(seed)
    model = Transformer(
        TransformerConfig(vocab_size=VOCAB, dim=dim, n_layers=layers, n_heads=4, max_seq_len=32)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = mix(gen, batch_size)
        loss = F.cross_entropy(model(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def continuation_nll(model: Transformer, x: Tensor, skip: Tensor) -> Tensor:
    """(B,) mean NLL (nats / token) of the tokens after :data:`PROMPT` of ``x`` (B, T)
    with row b skipping the layers of ``skip`` (B, L) bool (teacher forced, no cache)."""
    net = model if not bool(skip.any()) else LayerSkipModel(model, skip)
    logits = net(x[:, :-1]).logits[:, PROMPT - 1 :]  # (B, T - P, V)
    nll = F.cross_entropy(logits.transpose(1, 2).float(), x[:, PROMPT:], reduction="none")
    return nll.mean(1)


def _random_same_size(skip: Tensor, gen: torch.Generator) -> Tensor:
    """(B, L): each row a uniformly random set with as many layers as its row of ``skip``."""
    B, L = skip.shape
    order = torch.rand(B, L, generator=gen).argsort(1)
    ranks = order.argsort(1)  # each layer's rank in a random permutation
    return ranks < skip.sum(1, keepdim=True)


def skip_study(
    model: Transformer, routers: FiRSTRouters, *, rows: int = 128, draws: int = 20, seed: int = 1
) -> dict[str, Any]:
    """Per task: the router's skip sets (counts), the per-layer skip rate, the skip ratio,
    the continuation NLL under the router's sets and under ``draws`` same-size random
    assignments (their mean, min and max), on ``rows`` held-out sequences (seed ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for task, name in enumerate(TASKS):
        x = task_batch(gen, rows, task)
        skip = choose_skip(model, routers, x[:, :PROMPT], torch.full((rows,), PROMPT))
        router = float(continuation_nll(model, x, skip).mean())
        rand = [
            float(continuation_nll(model, x, _random_same_size(skip, gen)).mean())
            for _ in range(draws)
        ]
        sets = Counter(tuple(r.nonzero().flatten().tolist()) for r in skip)
        out[name] = {
            "skip_sets": {str(list(s)): c for s, c in sets.most_common()},
            "layer_skip_rate": [round(float(v), 3) for v in skip.float().mean(0)],
            "skip_ratio": round(float(skip.float().mean()), 3),
            "full_nll": float(continuation_nll(model, x, torch.zeros_like(skip)).mean()),
            "router_nll": router,
            "random_nll_mean": sum(rand) / draws,
            "random_nll_min": min(rand),
            "random_nll_max": max(rand),
        }
    return out


def two_task_study(
    *,
    seed: int = 0,
    base_steps: int = 400,
    router_steps: int = 300,
    skip_weight: float = 0.5,
    gate: str = "bernoulli",
    rows: int = 128,
    draws: int = 20,
) -> dict[str, Any]:
    """Train the base and the routers on the mix (seed ``seed``) and run :func:`skip_study`
    (rows seeded ``seed + 1``)."""
    t0 = time.process_time()
    model = train_base(steps=base_steps, seed=seed)
    routers = FiRSTRouters.for_model(model, keep_bias=3.0)
    history = train_routers(
        model,
        routers,
        mix,
        prompt_len=PROMPT,
        steps=router_steps,
        batch_size=32,
        lr=1e-2,
        skip_weight=skip_weight,
        seed=seed,
        gate=gate,  # type: ignore[arg-type]
    )
    study = skip_study(model, routers, rows=rows, draws=draws, seed=seed + 1)
    study["settings"] = dict(
        seed=seed,
        base_steps=base_steps,
        router_steps=router_steps,
        skip_weight=skip_weight,
        gate=gate,
        rows=rows,
        draws=draws,
        layers=len(model.layers),
        final_router_loss=history[-1],
        cpu_seconds=round(time.process_time() - t0, 1),
    )
    return study


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-weight", type=float, default=0.5)
    parser.add_argument("--gate", default="bernoulli", choices=("soft", "hard", "bernoulli"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    study = two_task_study(seed=args.seed, skip_weight=args.skip_weight, gate=args.gate)
    print(json.dumps(study, indent=1))
    return study


if __name__ == "__main__":  # pragma: no cover
    main()
