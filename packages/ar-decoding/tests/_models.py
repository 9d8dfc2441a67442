"""Tiny models and references shared by the tests of the multi-token strategies.

* ``random_model``: an untrained ``ar_core.Transformer`` (optionally with large weights so
  its next-token distributions are peaked and depend on the context).
* ``copy_model``: weights set by hand so that greedy decoding copies the token ``lag``
  positions back (a one-layer attention whose RoPE scores peak at the offset lag - 1).
  Its prediction for position t reads only position t - lag, so Jacobi guesses within
  ``lag - 1`` slots of the committed context are right after one iteration: the
  repetitive text on which the accelerated paths must beat one token per forward.
* ``greedy_reference`` / ``exact_joint``: recomputation without any cache.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from ar_core.model import Transformer, TransformerConfig


def random_model(vocab: int = 32, *, std: float = 0.02, seed: int = 0, **kw: object) -> Transformer:
    torch.manual_seed(seed)
    cfg: dict[str, Any] = dict(
        vocab_size=vocab,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=128,
        ffn_hidden=64,
    )
    cfg.update(kw)
    model = Transformer(TransformerConfig(**cfg)).eval()
    if std != 0.02:
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.normal_(0.0, std)
    return model


def copy_model(vocab: int = 8, lag: int = 5, scale: float = 60.0) -> Transformer:
    """Greedy next token = the token ``lag`` positions before the next position."""
    D = 32  # one head of dimension D = the model width: [1 | token one-hot | copied one-hot | 0]
    assert 1 + 2 * vocab <= D, "copy_model supports vocab <= 15"
    cfg = TransformerConfig(
        vocab_size=vocab,
        dim=D,
        n_layers=1,
        n_heads=1,
        n_kv_heads=1,
        max_seq_len=256,
        rope_theta=100.0,  # more fast-turning RoPE frequencies: a sharper offset peak
        ffn_hidden=8,  # zeroed below
    )
    model = Transformer(cfg).eval()
    block: Any = model.layers[0]
    attn = block.attn
    half = D // 2
    theta = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))  # (D/2,)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (block.attn_norm, block.ffn_norm, model.norm):
            norm.weight.fill_(1.0)
        emb = model.tok_embeddings.weight  # (V, dim)
        emb[:, 0] = 1.0  # a constant direction: queries and keys ignore the token
        emb[torch.arange(vocab), 1 + torch.arange(vocab)] = 1.0
        # after RMSNorm the constant coordinate is the same for every token
        k_pair = torch.zeros(D)
        k_pair[:half] = 1.0  # (1, 0) in every RoPE pair
        q_pair = torch.cat([torch.cos((lag - 1) * theta), -torch.sin((lag - 1) * theta)])
        attn.wk.weight[:, 0] = k_pair
        attn.wq.weight[:, 0] = scale * q_pair  # score(d) ~ scale * sum cos((d - lag + 1) theta)
        # values carry the token one-hot into the "copied" coordinates
        attn.wv.weight[torch.arange(vocab), 1 + torch.arange(vocab)] = 1.0
        attn.wo.weight[1 + vocab + torch.arange(vocab), torch.arange(vocab)] = 1.0
        model.output.weight[torch.arange(vocab), 1 + vocab + torch.arange(vocab)] = 10.0
    return model


def greedy_reference(
    model: Transformer, prompt: list[int], n: int, eos: int | None = None
) -> list[int]:
    """Recompute the whole sequence without a cache at every step; after EOS, pad 0."""
    seq, new = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            if eos is not None and eos in new:
                new.append(0)
                continue
            token = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(token)
            new.append(token)
    return new


def exact_joint(model: Transformer, prompt: list[int], n: int, temperature: float = 1.0) -> Tensor:
    """P(x_1..x_n | prompt) of every continuation, (V**n,) in lexicographic order."""
    V = model.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=n)))  # (V^n, n)
    x = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits.double() / temperature, -1)  # (V^n, L+n, V)
    L = len(prompt)
    steps = logp[:, L - 1 : L - 1 + n].gather(-1, seqs[..., None]).squeeze(-1)  # (V^n, n)
    joint = steps.sum(-1).exp()
    assert math.isclose(float(joint.sum()), 1.0, rel_tol=1e-6)
    return joint


def index_of(seqs: Tensor, V: int) -> Tensor:
    """Lexicographic index of each row of ``seqs`` (M, n) among V**n sequences."""
    n = seqs.shape[1]
    weights = V ** torch.arange(n - 1, -1, -1)
    return (seqs * weights).sum(-1)
