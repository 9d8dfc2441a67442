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
    """Embedding -> dropout -> ``blocks`` residual linears -> norm -> linear: enough
    parameters to see any optimizer difference (the blocks, a ModuleList, are what FSDP
    shards one by one)."""

    def __init__(
        self, vocab: int = VOCAB, dim: int = 16, dropout: float = 0.0, blocks: int = 0
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(blocks))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embed(tokens))
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return self.head(self.norm(x))  # (B, T, V)


def make_model(dropout: float = 0.0, seed: int = 1234, blocks: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(dropout=dropout, blocks=blocks)


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
    blocks = int(fields.pop("blocks", 0))
    trainer = Trainer(
        make_model(dropout, blocks=blocks),
        loss_fn,
        train_data,
        TrainConfig(**fields),
        eval_data=train_data,
    )
    if trainer.sharded and trainer.config.out_dir is not None:  # each rank's local shapes
        from torch.distributed.tensor import DTensor

        local = {
            n: list(p.to_local().shape if isinstance(p, DTensor) else p.shape)
            for n, p in trainer.model.named_parameters()
        }
        out = trainer.config.out_dir / f"shards_rank{trainer.dist.rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(local))
    trainer.train(until=until)
    trainer.close()


if __name__ == "__main__":
    main()
