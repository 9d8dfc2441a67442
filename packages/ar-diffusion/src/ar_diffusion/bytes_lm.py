"""Byte-level language models on the Python standard library: the data, the losses and
the held-out bits per byte shared by the ``diffusion-text`` recipe and ``ar bench
diffusion``.

The corpus is the one of ar-text's ``text-code`` recipe (read here directly, so
ar-diffusion does not depend on ar-text): the standard library's ``*.py`` files without
tests, sorted, every 10th file held out. Every model is an ``ar_core.Transformer`` over
the 256 byte values plus [MASK] (id 256, 257 ids in all):

* ``ar``: next-byte cross-entropy; its input starts with the [MASK] id as a BOS, so all
  ``seq_len`` bytes of a window are scored, like the diffusion models';
* ``mdlm``: :func:`ar_diffusion.mdlm.mdlm_loss`;
* ``bd3-L``: :func:`ar_diffusion.bd3.bd3_loss` with block size L (unclipped times, so the
  held-out estimate is the bound itself).

Held-out bits per byte: AR's exact NLL; the diffusion models' NELBO (an upper bound),
averaged over seeded antithetic time draws.
"""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ar_core import masks
from ar_core.errors import ConfigError
from ar_diffusion.bd3 import bd3_loss
from ar_diffusion.mdlm import mdlm_loss

__all__ = [
    "MASK",
    "ar_nll",
    "held_out_bpb",
    "loss_fn",
    "run_block_size",
    "stdlib_bytes",
    "windows",
]

MASK = 256  # the [MASK] id, also the AR model's BOS


def stdlib_bytes(max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) byte tensors: sorted stdlib ``*.py`` files without tests, every
    10th file held out, each side capped at ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.relative_to(root).as_posix())
    train, held = bytearray(), bytearray()
    for i, path in enumerate(files):
        side = held if i % 10 == 9 else train
        if len(side) < max_bytes:
            side += path.read_bytes()[: max_bytes - len(side)]
    return torch.tensor(list(train), dtype=torch.long), torch.tensor(list(held), dtype=torch.long)


def windows(data: torch.Tensor, seq_len: int) -> Callable[[torch.Generator, int], torch.Tensor]:
    """The Trainer's ``data(generator, batch_size)``: random windows of ``seq_len`` bytes."""

    def sample(gen: torch.Generator, batch_size: int) -> torch.Tensor:
        start = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=gen)
        return torch.stack([data[s : s + seq_len] for s in start.tolist()])  # (B, T)

    return sample


def ar_nll(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Summed next-byte NLL of each row of ``x`` (B, T) after a [MASK] BOS: (B,)."""
    bos = torch.full((x.shape[0], 1), MASK, dtype=torch.long, device=x.device)
    logits = model(torch.cat([bos, x[:, :-1]], 1), mask=masks.causal()).logits[..., :MASK]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none")
    return nll.view(x.shape).sum(-1)


def run_block_size(run: str) -> int | None:
    """The BD3 block size of a run name ``bd3-L``; None for ``ar`` and ``mdlm``."""
    if run in ("ar", "mdlm"):
        return None
    prefix, _, size = run.partition("-")
    if prefix != "bd3" or not size.isdigit() or int(size) < 1:
        raise ConfigError(f"unknown run {run!r}: use 'ar', 'mdlm' or 'bd3-L' (L >= 1)")
    return int(size)


def loss_fn(run: str) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """The training loss of ``run`` in nats per byte."""
    block = run_block_size(run)

    def loss(model: Any, x: torch.Tensor) -> torch.Tensor:
        if run == "ar":
            return ar_nll(model, x).mean() / x.shape[1]
        if block is None:
            return mdlm_loss(model, x, mask_id=MASK).mean() / x.shape[1]
        return bd3_loss(model, x, block_size=block, mask_id=MASK).mean() / x.shape[1]

    return loss


@torch.no_grad()
def held_out_bpb(
    model: Any, run: str, held: torch.Tensor, n_windows: int, seq_len: int, samples: int
) -> float:
    """Bits per byte over ``n_windows`` fixed held-out windows (diffusion: the NELBO mean
    over ``samples`` seeded draws)."""
    was_training = model.training
    model.eval()
    starts = torch.linspace(0, held.numel() - seq_len - 1, n_windows).long().tolist()
    x = torch.stack([held[s : s + seq_len] for s in starts])  # (W, T)
    g = torch.Generator().manual_seed(1234)
    if run == "ar":
        nats = float(ar_nll(model, x).sum())
    else:
        fn = loss_fn(run)
        nats = 0.0
        for _ in range(samples):
            torch.manual_seed(int(torch.randint(0, 2**31, (), generator=g)))
            nats += float(fn(model, x)) * x.numel() / samples
    model.train(was_training)
    return nats / (x.numel() * math.log(2))
