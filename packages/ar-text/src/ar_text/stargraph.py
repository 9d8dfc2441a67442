"""Star-graph path finding: the planning task, an AR baseline and an ILM on it.

The task of Bachmann & Nagarajan, "The Pitfalls of Next-Token Prediction" (2024,
arXiv:2403.06963), used by Patel et al., "Insertion Language Models: Sequence
Generation with Arbitrary-Position Insertions" (2025, arXiv:2505.05755 -- id
unverified) to compare insertion models with left-to-right AR models.

A graph has a centre node and ``degree`` arms of ``arm_len`` nodes each; node ids are a
random permutation. Sequence layout (P = 2 E + 4 prompt tokens, E = degree * arm_len
edges, A = arm_len + 1 path tokens)::

    u_1 v_1 ... u_E v_E SEP start goal SEP | start a_1 ... goal
    <------------------ prompt ----------------> <---- path ----->

Edges point away from the centre and are listed in random order; start is the centre,
goal a random leaf. A teacher-forced AR model learns the "Clever Hans" shortcut (next
node = the child of the previous one) and must guess the arm at the first step, so its
path accuracy sits near ``1 / degree``; an ILM can build the path from the goal end.

Notation: B batch, P prompt length, A path length, T = P + A, V vocabulary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import ConfigError
from ar_core.model import Transformer, TransformerConfig
from ar_core.trainer import TrainConfig, Trainer
from ar_text.insertion import (
    InsertionBatch,
    InsertionModel,
    drop_tokens,
    ilm_loss,
    insert_until_stop,
)

__all__ = [
    "StarGraph",
    "ar_path_accuracy",
    "ilm_path_accuracy",
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


def train_ar(
    task: StarGraph, *, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
) -> Transformer:
    """A causal Transformer trained next-token on prompt + path (loss on the path only)."""
    model = _tiny_transformer(task.vocab_size, task.prompt_len + task.path_len)
    P = task.prompt_len

    def loss_fn(m: nn.Module, seq: Tensor) -> Tensor:
        logits = m(seq[:, :-1]).logits  # (B, T-1, V), causal mask by default
        pred = logits[:, P - 1 :]  # (B, A, V): predictions of the path tokens
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), seq[:, P:].reshape(-1))

    Trainer(model, loss_fn, task.sample, _train_config(steps, batch_size, lr, seed)).train()
    return model


@torch.no_grad()
def ar_path_accuracy(model: Transformer, task: StarGraph, test: Tensor) -> float:
    """Exact-match rate of greedily decoded paths on ``test`` (B, T)."""
    model.eval()
    P = task.prompt_len
    seq = test[:, :P]  # (B, P)
    for _ in range(task.path_len):  # uncached: T is tiny
        nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        seq = torch.cat([seq, nxt], 1)
    return float((seq[:, P:] == test[:, P:]).all(1).float().mean())


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


def train_ilm(
    task: StarGraph, *, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
) -> InsertionModel:
    """A bidirectional ILM trained to insert path tokens given the (fixed) prompt."""
    model = InsertionModel(_tiny_transformer(task.vocab_size, 1 + task.prompt_len + task.path_len))

    def data(generator: torch.Generator, batch_size: int) -> tuple[Tensor, ...]:
        b = _ilm_batch(task, task.sample(generator, batch_size), generator)
        return b.tokens, b.lengths, b.targets, b.stop

    def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        b = InsertionBatch(*batch)
        logits, stop = m(b.tokens, b.lengths)  # (B, L, V), (B,)
        return ilm_loss(logits, stop, b)

    Trainer(model, loss_fn, data, _train_config(steps, batch_size, lr, seed)).train()
    return model


@torch.no_grad()
def ilm_path_accuracy(
    model: InsertionModel, task: StarGraph, test: Tensor, generator: torch.Generator
) -> float:
    """Exact-match rate of paths built by greedy insertion after the prompt of ``test``.

    The sampler may insert only node ids, only after the prompt, and stops by its own
    stop head or at the true length (``max_len``); a path of the wrong length fails.
    """
    model.eval()
    B, P = test.shape[0], task.prompt_len
    start = torch.cat([torch.full((B, 1), task.cls), test[:, :P]], 1)  # (B, 1 + P)
    allowed = torch.zeros(task.vocab_size, dtype=torch.bool)
    allowed[: task.n_nodes] = True
    seq, lens = insert_until_stop(
        model,
        start,
        torch.full((B,), 1 + P),
        max_len=1 + P + task.path_len,
        pad_id=task.pad,
        generator=generator,
        allowed_tokens=allowed,
        min_slot=torch.full((B,), P),  # slot P = the last prompt token
        greedy=True,
    )
    right = (lens == 1 + P + task.path_len) & (seq[:, 1 + P :] == test[:, P:]).all(1)
    return float(right.float().mean())
