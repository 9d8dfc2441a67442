"""Causal reasoning with language models: pairwise direction by option log-likelihood.

After Kiciman, Ness, Sharma & Tan, "Causal Reasoning and Large Language Models: Opening a
New Frontier for Causality" (2023, arXiv:2305.00050) and pywhy-llm: the LM is asked
whether "A causes B", "B causes A" or neither; here each option is a sentence and the
answer is the option with the highest log-likelihood under the model (no sampling, no
parsing). Works with any ar-text model (``ar_core.model.Transformer``) or ``from_hf``
adapter – anything whose call returns logits (or an object with ``.logits``) – and any
tokenizer with ``encode(str) -> list[int]``.

* :func:`option_logprobs` – sum of token log-probabilities of each option after a prompt;
* :func:`pairwise_direction` – ``"->"``, ``"<-"`` or ``"none"`` for a pair, with margins;
* :func:`assemble_dag` – a ``networkx.DiGraph`` from pairwise answers, edges added by
  decreasing confidence, skipping any that would close a cycle;
* :func:`shd`, :func:`edge_precision_recall`, :func:`direction_accuracy` – the metrics;
* :func:`synthetic_world` / :func:`statements` – a random DAG over made-up variable
  names and its causal statements in several phrasings (for the tiny-LM experiment).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F

from ar_core.errors import ConfigError, InputError

__all__ = [
    "CAUSE_TEMPLATES",
    "NONE_TEMPLATES",
    "PairAnswer",
    "assemble_dag",
    "direction_accuracy",
    "edge_precision_recall",
    "option_logprobs",
    "pairwise_direction",
    "shd",
    "statements",
    "synthetic_world",
]

# "{c}" causes "{e}": the phrasings of a causal statement (active and passive forms)
CAUSE_TEMPLATES = (
    "{c} causes {e}.",
    "{c} leads to {e}.",
    "{e} is caused by {c}.",
    "{c} results in {e}.",
    "{e} is an effect of {c}.",
    "{c} brings about {e}.",
)
NONE_TEMPLATES = ("{a} and {b} are unrelated.",)


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    logits = out.logits if hasattr(out, "logits") else out
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise InputError("the model must return (B, T, V) logits or an object with .logits")
    return logits


@torch.no_grad()
def option_logprobs(
    model: Any,
    encode: Callable[[str], list[int]],
    prompt: str | Sequence[int],
    options: Sequence[str],
) -> list[float]:
    """``log P(option | prompt)`` summed over the option's tokens, for each option.

    ``prompt`` is text (encoded with ``encode``) or token ids, e.g. ``[BOS]``; it must
    not be empty (the first option token needs a context).
    """
    if not callable(encode):
        raise ConfigError("encode must be a function str -> list[int] (e.g. tokenizer.encode)")
    if isinstance(options, str) or len(options) < 2:
        raise InputError(f"pass at least two options (a list of strings), got {options!r}")
    head = encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not head:
        raise InputError("prompt encodes to no tokens; pass a non-empty prompt (e.g. [BOS])")
    rows = [head + list(encode(o)) for o in options]
    if any(len(r) == len(head) for r in rows):
        raise InputError("an option encodes to no tokens; every option must be non-empty")
    width = max(len(r) for r in rows)
    limit = getattr(model, "max_seq_len", None)
    if isinstance(limit, int) and width > limit:
        raise InputError(f"prompt + option is {width} tokens, over the model's {limit}")
    vocab = getattr(model, "vocab_size", None)
    if isinstance(vocab, int) and max(max(r) for r in rows) >= vocab:
        raise InputError(f"a token id is outside the model's vocabulary ({vocab})")
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        ids = ids.to(device)
    logp = F.log_softmax(_logits(model, ids)[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, ids[:, 1:, None])[..., 0]  # (B, width - 1)
    out = []
    for b, r in enumerate(rows):
        out.append(float(tok[b, len(head) - 1 : len(r) - 1].sum()))
    return out


@dataclass
class PairAnswer:
    """The answer for a pair ``(a, b)``: ``"->"`` (a causes b), ``"<-"`` or ``"none"``;
    ``logprobs`` of the three options and ``margin`` (best minus second best)."""

    a: str
    b: str
    answer: str
    logprobs: tuple[float, float, float]
    margin: float


def pairwise_direction(
    model: Any,
    encode: Callable[[str], list[int]],
    a: str,
    b: str,
    *,
    prompt: str | Sequence[int],
    template: str = CAUSE_TEMPLATES[0],
    none_template: str | None = NONE_TEMPLATES[0],
) -> PairAnswer:
    """Score "a causes b", "b causes a" (and, unless ``none_template`` is None, "neither")
    in the phrasing ``template`` (``{c}`` cause, ``{e}`` effect); the best option wins."""
    if not a or not b or a == b:
        raise InputError(f"need two different non-empty variable names, got {a!r}, {b!r}")
    if "{c}" not in template or "{e}" not in template:
        raise ConfigError(f"template must contain {{c}} and {{e}}, got {template!r}")
    options = [template.format(c=a, e=b), template.format(c=b, e=a)]
    if none_template is not None:
        if "{a}" not in none_template or "{b}" not in none_template:
            raise ConfigError(f"none_template needs {{a}} and {{b}}, got {none_template!r}")
        options.append(none_template.format(a=a, b=b))
    lp = option_logprobs(model, encode, prompt, options)
    full = (lp[0], lp[1], lp[2] if len(lp) == 3 else float("-inf"))
    order = np.argsort(full)[::-1]
    answer = ("->", "<-", "none")[int(order[0])]
    return PairAnswer(a, b, answer, full, float(full[order[0]] - full[order[1]]))


def assemble_dag(variables: Sequence[str], answers: Sequence[PairAnswer]) -> nx.DiGraph:
    """A DAG over ``variables`` from pairwise answers: edges by decreasing margin, each
    skipped if it would close a cycle (the answers may be inconsistent)."""
    names = list(variables)
    if len(set(names)) != len(names):
        raise InputError("variables must be distinct")
    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    known = set(names)
    for ans in sorted(answers, key=lambda x: -x.margin):
        if ans.a not in known or ans.b not in known:
            raise InputError(f"answer for ({ans.a!r}, {ans.b!r}) names an unknown variable")
        if ans.answer == "none":
            continue
        u, v = (ans.a, ans.b) if ans.answer == "->" else (ans.b, ans.a)
        if graph.has_edge(v, u) or nx.has_path(graph, v, u):
            continue
        graph.add_edge(u, v)
    return graph


def _check_graphs(true: nx.DiGraph, pred: nx.DiGraph) -> None:
    if not isinstance(true, nx.DiGraph) or not isinstance(pred, nx.DiGraph):
        raise InputError("pass two networkx.DiGraph objects")
    if set(true.nodes) != set(pred.nodes):
        raise InputError("the two graphs must have the same nodes")


def shd(true: nx.DiGraph, pred: nx.DiGraph) -> int:
    """Structural Hamming distance: edges to add, delete or reverse (a reversal is one)."""
    _check_graphs(true, pred)
    dist = 0
    for u, v in itertools.combinations(sorted(true.nodes, key=str), 2):
        t = (true.has_edge(u, v), true.has_edge(v, u))
        p = (pred.has_edge(u, v), pred.has_edge(v, u))
        dist += t != p
    return dist


def edge_precision_recall(true: nx.DiGraph, pred: nx.DiGraph) -> tuple[float, float]:
    """Directed-edge precision and recall (1.0 for an empty denominator)."""
    _check_graphs(true, pred)
    t, p = set(true.edges), set(pred.edges)
    hit = len(t & p)
    return (hit / len(p) if p else 1.0), (hit / len(t) if t else 1.0)


def direction_accuracy(true: nx.DiGraph, answers: Sequence[PairAnswer]) -> float:
    """Fraction of answers equal to the truth ("->", "<-" or "none")."""
    if not answers:
        raise InputError("no answers to score")
    right = 0
    for ans in answers:
        truth = (
            "->" if true.has_edge(ans.a, ans.b) else "<-" if true.has_edge(ans.b, ans.a) else "none"
        )
        right += ans.answer == truth
    return right / len(answers)


# -- synthetic causal worlds ----------------------------------------------------------------


def synthetic_world(n_vars: int, edge_prob: float, seed: int) -> nx.DiGraph:
    """A random DAG (edges respect a random order) over made-up pronounceable names."""
    if n_vars < 2:
        raise ConfigError(f"n_vars must be >= 2, got {n_vars}")
    if not 0 < edge_prob <= 1:
        raise ConfigError(f"edge_prob must be in (0, 1], got {edge_prob}")
    rng = np.random.default_rng(seed)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    names: list[str] = []
    while len(names) < n_vars:
        name = "".join(rng.choice(list(cons)) + rng.choice(list(vows)) for _ in range(2))
        if name not in names:
            names.append(name)
    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    for i, j in itertools.combinations(range(n_vars), 2):
        if rng.random() < edge_prob:
            graph.add_edge(names[i], names[j])
    return graph


def statements(graph: nx.DiGraph, templates: Sequence[str] = CAUSE_TEMPLATES) -> list[str]:
    """Every edge of ``graph`` in every template of ``templates``."""
    if not templates:
        raise ConfigError("pass at least one template")
    return [t.format(c=u, e=v) for u, v in graph.edges for t in templates]
