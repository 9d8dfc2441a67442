"""A tiny next-token LM and its data for the Trainer tests; also a script.

``python _trainer_toy.py '{"out_dir": ..., "steps": 8, ...}' [until]`` trains it with
those TrainConfig fields (under ``torchrun`` too) and writes the usual out_dir files.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ar_core.trainer import TrainConfig, Trainer

VOCAB = 11
SEQ_LEN = 9


class TinyLM(nn.Module):
    """Embedding -> dropout -> linear: enough parameters to see any optimizer difference."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.drop(self.embed(tokens))))  # (B, T, V)


def make_model(dropout: float = 0.0, seed: int = 1234) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(dropout=dropout)


def train_data(generator: torch.Generator, batch_size: int) -> torch.Tensor:
    """Sequences x_{i+1} = (x_i + 1) mod V with a random start and 20% random noise."""
    start = torch.randint(0, VOCAB, (batch_size, 1), generator=generator)
    seq = (start + torch.arange(SEQ_LEN)) % VOCAB  # (B, T)
    noise = torch.randint(0, VOCAB, seq.shape, generator=generator)
    flip = torch.rand(seq.shape, generator=generator) < 0.2
    return torch.where(flip, noise, seq)


def loss_fn(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])  # (B, T-1, V)
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def main() -> None:
    torch.set_num_threads(1)  # as the tests' own process: the same float32 sums
    fields = json.loads(sys.argv[1])
    until = int(sys.argv[2]) if len(sys.argv) > 2 else None
    dropout = float(fields.pop("dropout", 0.0))
    trainer = Trainer(
        make_model(dropout), loss_fn, train_data, TrainConfig(**fields), eval_data=train_data
    )
    trainer.train(until=until)
    trainer.close()


if __name__ == "__main__":
    main()
