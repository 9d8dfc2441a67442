"""Star-graph path finding: the planning task, an AR baseline and an ILM on it.

The task of Bachmann & Nagarajan, "The Pitfalls of Next-Token Prediction" (2024,
arXiv:2403.06963), used by Patel et al., "Insertion Language Models: Sequence
Generation with Arbitrary-Position Insertions" (2025, arXiv:2505.05755) to compare
insertion models with left-to-right AR models.

A graph has a centre node and ``degree`` arms of ``arm_len`` nodes each; node ids are a
random permutation. Sequence layout (P = 2 E + 4 prompt tokens, E = degree * arm_len
edges, A = arm_len + 1 path tokens)::

    u_1 v_1 ... u_E v_E SEP start goal SEP | start a_1 ... goal
    <------------------ prompt ----------------> <---- path ----->

Edges point away from the centre and are listed in random order; start is the centre,
goal a random leaf. A teacher-forced AR model learns the "Clever Hans" shortcut (next
node = the child of the previous one) and must guess the arm at the first step, so its
path accuracy sits near ``1 / degree``; an ILM can build the path from the goal end.

Against the authors' code (github.com/dhruvdcoder/ILM, ``pcdd/datamodule/star_v2.py``;
configs ``star_small*``, ``ilm_*_star_small``): the same noise (a uniform number of
uniformly chosen path tokens dropped, the prompt never) and greedy decoding inserting
only after the prompt. Theirs differs in scale and format: the "easy" task is degree 3,
5-node paths, node labels drawn from 20 ids; the path is written as its edges
(``s a_1 a_1 a_2 ... a_k g``) for every model; the ILM is a 4-8 layer, 384-576 wide
rotary Transformer trained 50k steps (batch 64, lr 1e-4); greedy decoding takes the
argmax gap of the gap marginal, then the argmax token (``greedy_by="gap"`` here). Here
the models are 4 x 64 and train a few thousand steps on one CPU thread. The AR model
reaches its ``1 / degree`` plateau within a few hundred updates; the ILM learns the
lookups late and then jumps: on degree 3, arm length 2 (one lookup, the goal's parent)
it passes AR after about 2000-3000 updates, on degree 2, arm length 3 (two chained
lookups) after about 4000-6000 of an 8000-update run (cosine schedule over the run).

Notation: B batch, P prompt length, A path length, T = P + A, V vocabulary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer, TransformerConfig
from ar_core.trainer import TrainConfig, Trainer
from ar_text.insertion import (
    InsertionBatch,
    InsertionModel,
    InsertionScorer,
    drop_tokens,
    ilm_loss,
    insert_until_stop,
)

__all__ = [
    "StarGraph",
    "ar_greedy_paths",
    "ar_path_accuracy",
    "ar_trainer",
    "ilm_greedy_paths",
    "ilm_path_accuracy",
    "ilm_trainer",
    "train_ar",
    "train_ilm",
]


@dataclass(frozen=True)
class StarGraph:
    """Token layout of a star-graph task with ``degree`` arms of ``arm_len`` nodes."""

    degree: int
    arm_len: int

    def __post_init__(self) -> None:
        if self.degree < 2 or self.arm_len < 1:
            raise ConfigError(
                f"StarGraph needs degree >= 2 and arm_len >= 1, got {self.degree}, {self.arm_len}"
            )

    @property
    def n_nodes(self) -> int:
        return 1 + self.degree * self.arm_len

    @property
    def sep(self) -> int:
        return self.n_nodes

    @property
    def cls(self) -> int:
        return self.n_nodes + 1

    @property
    def pad(self) -> int:
        return self.n_nodes + 2

    @property
    def vocab_size(self) -> int:
        return self.n_nodes + 3

    @property
    def prompt_len(self) -> int:
        return 2 * self.degree * self.arm_len + 4

    @property
    def path_len(self) -> int:
        return self.arm_len + 1

    def sample(self, generator: torch.Generator, batch_size: int) -> Tensor:
        """``batch_size`` random graphs as prompt + path sequences (B, T)."""
        rows = []
        for _ in range(batch_size):
            ids = torch.randperm(self.n_nodes, generator=generator)  # node labels
            centre = int(ids[0])
            arms = ids[1:].view(self.degree, self.arm_len)  # (degree, arm_len)
            edges = []
            for arm in arms.tolist():
                chain = [centre, *arm]
                edges += list(itertools.pairwise(chain))
            order = torch.randperm(len(edges), generator=generator).tolist()
            goal_arm = int(torch.randint(self.degree, (1,), generator=generator))
            goal = int(arms[goal_arm, -1])
            prompt = [t for i in order for t in edges[i]] + [self.sep, centre, goal, self.sep]
            path = [centre, *arms[goal_arm].tolist()]
            rows.append(prompt + path)
        return torch.tensor(rows, dtype=torch.long)  # (B, T)


def _tiny_transformer(vocab_size: int, max_seq_len: int) -> Transformer:
    # small enough for a few hundred CPU steps in seconds; 4 layers so a lookup can chain
    return Transformer(
        TransformerConfig(
            vocab_size=vocab_size,
            dim=64,
            n_layers=4,
            n_heads=4,
            ffn_hidden=256,
            max_seq_len=max_seq_len,
        )
    )


def _train_config(steps: int, batch_size: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig.build(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=min(20, steps),
        seed=seed,
        device="cpu",
        progress=False,
        weight_decay=0.0,
    )


# -- AR baseline ------------------------------------------------------------------------


def ar_trainer(
    task: StarGraph, *, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
) -> Trainer:
    """A Trainer (not yet run) of the AR baseline; ``trainer.train(until=k)`` trains in
    stages, ``trainer.model`` is the causal Transformer."""
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on seed alone
        torch.manual_seed(seed)
        model = _tiny_transformer(task.vocab_size, task.prompt_len + task.path_len)
    P = task.prompt_len

    def loss_fn(m: nn.Module, seq: Tensor) -> Tensor:
        logits = m(seq[:, :-1]).logits  # (B, T-1, V), causal mask by default
        pred = logits[:, P - 1 :]  # (B, A, V): predictions of the path tokens
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), seq[:, P:].reshape(-1))

    return Trainer(model, loss_fn, task.sample, _train_config(steps, batch_size, lr, seed))


def train_ar(
    task: StarGraph, *, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
) -> Transformer:
    """A causal Transformer trained next-token on prompt + path (loss on the path only)."""
    trainer = ar_trainer(task, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    trainer.train()
    assert isinstance(trainer.model, Transformer)
    return trainer.model


def ar_greedy_paths(model: Transformer, task: StarGraph, test: Tensor) -> Tensor:
    """Greedily decoded paths (B, path_len) after the prompts of ``test`` (B, T): ar-core's
    ``greedy`` strategy (KV-cached, argmax at every step)."""
    model.eval()
    P = task.prompt_len
    config = GenerationConfig(max_new_tokens=task.path_len)
    return generate(model, test[:, :P], config, strategy="greedy").sequences[:, P:]


def ar_path_accuracy(model: Transformer, task: StarGraph, test: Tensor) -> float:
    """Exact-match rate of greedily decoded paths on ``test`` (B, T)."""
    paths = ar_greedy_paths(model, task, test)  # (B, path_len)
    return float((paths == test[:, task.prompt_len :]).all(1).float().mean())


# -- ILM ----------------------------------------------------------------------------------


def _ilm_batch(task: StarGraph, seq: Tensor, generator: torch.Generator) -> InsertionBatch:
    B, T = seq.shape
    droppable = torch.zeros(B, T, dtype=torch.bool)
    droppable[:, task.prompt_len :] = True  # only path tokens are inserted
    return drop_tokens(
        seq,
        torch.full((B,), T),
        vocab_size=task.vocab_size,
        cls_id=task.cls,
        pad_id=task.pad,
        generator=generator,
        droppable=droppable,
    )


def ilm_trainer(
    task: StarGraph, *, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
) -> Trainer:
    """A Trainer (not yet run) of the ILM; ``trainer.model`` is the InsertionModel."""
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on seed alone
        torch.manual_seed(seed)
        model = InsertionModel(
            _tiny_transformer(task.vocab_size, 1 + task.prompt_len + task.path_len)
        )

    def data(generator: torch.Generator, batch_size: int) -> tuple[Tensor, ...]:
        b = _ilm_batch(task, task.sample(generator, batch_size), generator)
        return b.tokens, b.lengths, b.targets, b.stop

    def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        b = InsertionBatch(*batch)
        logits, stop = m(b.tokens, b.lengths)  # (B, L, V), (B,)
        return ilm_loss(logits, stop, b)

    return Trainer(model, loss_fn, data, _train_config(steps, batch_size, lr, seed))


def train_ilm(
    task: StarGraph, *, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
) -> InsertionModel:
    """A bidirectional ILM trained to insert path tokens given the (fixed) prompt."""
    trainer = ilm_trainer(task, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    trainer.train()
    assert isinstance(trainer.model, InsertionModel)
    return trainer.model


@torch.no_grad()
def ilm_greedy_paths(
    scorer: InsertionScorer,
    task: StarGraph,
    test: Tensor,
    generator: torch.Generator,
    *,
    greedy_by: Literal["pair", "gap"] = "gap",
) -> tuple[Tensor, Tensor]:
    """Paths built by greedy insertion after the prompts of ``test`` (B, T): the final
    ``[CLS ; prompt ; path ; PAD...]`` rows and their lengths (B,).

    ``scorer`` is the InsertionModel (put in eval mode here) or any callable with its
    signature (e.g. one that records the states it scores). The sampler may insert only
    node ids, only after the prompt, and stops by its own stop head or at the true length
    (``max_len``). ``greedy_by``: ``"gap"`` (default, the authors' top-1 gap then top-1
    token) or ``"pair"`` (the joint argmax); see :func:`insert_until_stop`.
    """
    if isinstance(scorer, nn.Module):
        scorer.eval()
    B, P = test.shape[0], task.prompt_len
    start = torch.cat([torch.full((B, 1), task.cls), test[:, :P]], 1)  # (B, 1 + P)
    allowed = torch.zeros(task.vocab_size, dtype=torch.bool)
    allowed[: task.n_nodes] = True
    return insert_until_stop(
        scorer,
        start,
        torch.full((B,), 1 + P),
        max_len=1 + P + task.path_len,
        pad_id=task.pad,
        generator=generator,
        allowed_tokens=allowed,
        min_slot=torch.full((B,), P),  # slot P = the last prompt token
        greedy=True,
        greedy_by=greedy_by,
    )


def ilm_path_accuracy(
    model: InsertionModel,
    task: StarGraph,
    test: Tensor,
    generator: torch.Generator,
    *,
    greedy_by: Literal["pair", "gap"] = "gap",
) -> float:
    """Exact-match rate of the paths of :func:`ilm_greedy_paths`; a path of the wrong
    length fails."""
    seq, lens = ilm_greedy_paths(model, task, test, generator, greedy_by=greedy_by)
    P = task.prompt_len
    right = (lens == 1 + P + task.path_len) & (seq[:, 1 + P :] == test[:, P:]).all(1)
    return float(right.float().mean())
