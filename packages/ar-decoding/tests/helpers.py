"""What the tests of ar-decoding share: tiny models, a streamer that records, and the
exact joint distribution of a short continuation with a chi-square test against it.

The strategies are checked against ar-core's ``greedy`` and ``sample`` strategies, which
ar-core's own tests check against recomputation without a cache.

* ``tiny``: an untrained ``ar_core.Transformer``; ``std`` redraws its weights (large
  weights make next-token distributions peaked and context-dependent), ``scale`` scales
  its output head (far from uniform).
* ``copy_model``: weights set by hand so that greedy decoding copies the token ``lag``
  positions back (a one-layer attention whose RoPE scores peak at the offset lag - 1).
  Its prediction for position t reads only position t - lag, so Jacobi guesses within
  ``lag - 1`` slots of the committed context are right after one iteration: the
  repetitive text on which the accelerated paths must beat one token per forward.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from scipy.stats import chisquare
from torch import Tensor

from ar_core.model import Transformer, TransformerConfig

ALPHA = 1e-3  # a chi-square test of a correct rule must pass at this level
BROKEN = 1e-6  # the same test of a deliberately broken rule must fall below this


def tiny(
    vocab: int = 64,
    *,
    dim: int = 64,
    layers: int = 2,
    seed: int = 0,
    std: float | None = None,
    scale: float | None = None,
    **kw: Any,
) -> Transformer:
    torch.manual_seed(seed)
    cfg: dict[str, Any] = dict(
        vocab_size=vocab, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, max_seq_len=128
    )
    model = Transformer(TransformerConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():
        if std is not None:
            for p in model.parameters():
                if p.ndim == 2:
                    p.normal_(0.0, std)
        if scale is not None:
            model.output.weight.mul_(scale)
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
        wq, wk, wv = attn.wqkv.weight.split([attn.q_size, attn.kv_size, attn.kv_size])
        wk[:, 0] = k_pair
        wq[:, 0] = scale * q_pair  # score(d) ~ scale * sum cos((d - lag + 1) theta)
        # values carry the token one-hot into the "copied" coordinates
        wv[torch.arange(vocab), 1 + torch.arange(vocab)] = 1.0
        attn.wo.weight[1 + vocab + torch.arange(vocab), torch.arange(vocab)] = 1.0
        model.output.weight[torch.arange(vocab), 1 + vocab + torch.arange(vocab)] = 10.0
    return model


class Recorder:
    """A streamer that keeps what it receives: ``tokens()`` (B, n) and ``ended``."""

    def __init__(self) -> None:
        self.chunks: list[Tensor] = []
        self.ended = False

    def put(self, tokens: Tensor) -> None:
        assert not self.ended, "put() after end()"
        self.chunks.append(tokens.clone())

    def end(self) -> None:
        self.ended = True

    def tokens(self) -> Tensor:
        return torch.cat(self.chunks, 1)


def new_tokens(sequences: Tensor, prompt_lengths: list[int], n: int) -> Tensor:
    """Each row's ``n`` new tokens (B, n), after its own prompt."""
    return torch.stack([sequences[b, L : L + n] for b, L in enumerate(prompt_lengths)])


def exact_joint(model: Transformer, prompt: list[int], n: int) -> Tensor:
    """P(x_1..x_n | prompt) of every continuation, (V**n,) in lexicographic order."""
    V = model.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=n)))  # (V^n, n)
    x = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits.double(), -1)  # (V^n, L+n, V)
    L = len(prompt)
    steps = logp[:, L - 1 : L - 1 + n].gather(-1, seqs[..., None]).squeeze(-1)  # (V^n, n)
    joint = steps.sum(-1).exp()
    assert math.isclose(float(joint.sum()), 1.0, rel_tol=1e-6)
    return joint


def chi2_pvalue(samples: Tensor, joint: Tensor, V: int) -> float:
    """Chi-square p-value of sampled continuations (M, n) against the exact joint (V**n,);
    cells with an expected count below 5 are pooled into one."""
    M, n = samples.shape
    index = (samples * V ** torch.arange(n - 1, -1, -1)).sum(-1)  # lexicographic
    counts = torch.bincount(index, minlength=joint.numel()).double()
    expected = joint * M
    small = expected < 5
    f_obs, f_exp = counts[~small], expected[~small]
    if small.any():
        f_obs = torch.cat([f_obs, counts[small].sum()[None]])
        f_exp = torch.cat([f_exp, expected[small].sum()[None]])
    return float(
        chisquare(f_obs.numpy(), f_exp.numpy() * (f_obs.sum() / f_exp.sum()).item()).pvalue
    )
