"""DiCoDe: the AR model's GMM NLL against a manual log-sum-exp; causality; the codec."""

import math

import pytest
import torch

from ar_core.errors import InputError
from ar_video.dicode import DeepTokenAR, DeepTokenCodec


def test_gmm_nll_equals_manual_logsumexp() -> None:
    torch.manual_seed(0)
    model = DeepTokenAR(token_dim=3, dim=32, n_layers=1, n_heads=2, components=3)
    tokens = torch.randn(2, 5, 3)
    with torch.no_grad():
        nll = model.nll(tokens)
        log_w, mean, log_std = model.head.params(model.hidden(tokens))
    for b in range(2):
        for i in range(5):
            terms = []
            for k in range(3):
                lp = float(log_w[b, i, k])
                for j in range(3):
                    s = math.exp(float(log_std[b, i, k, j]))
                    x, m = float(tokens[b, i, j]), float(mean[b, i, k, j])
                    lp += -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
                terms.append(lp)
            top = max(terms)
            manual = -(top + math.log(sum(math.exp(v - top) for v in terms)))
            assert abs(float(nll[b, i]) - manual) < 1e-4


def test_token_i_ignores_later_tokens() -> None:
    torch.manual_seed(0)
    model = DeepTokenAR(token_dim=4, dim=32, n_layers=2, n_heads=2)
    tokens = torch.randn(1, 6, 4)
    changed = tokens.clone()
    changed[:, 3:] = torch.randn(1, 3, 4)
    a, b = model.nll(tokens), model.nll(changed)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    assert model.generate(tokens[:, :2], 3).shape == (1, 3, 4)


def test_codec_learns_and_checks_shapes() -> None:
    torch.manual_seed(0)
    codec = DeepTokenCodec(frames=2, n_tokens=2, token_dim=8, dim=32, n_layers=1, n_heads=2)
    z = torch.randn(8, 2, 8, 8, 8) * 0.5
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = codec.loss(z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    tokens = codec.encode(z)
    assert tokens.shape == (8, 2, 8)
    assert torch.allclose(tokens.pow(2).mean(-1), torch.ones(8, 2), atol=1e-4)  # RMS-normalised
    assert codec.decode(tokens, steps=2).shape == z.shape
    with pytest.raises(InputError, match="DiCoDe clips must be"):
        codec.encode(torch.randn(1, 3, 8, 8, 8))
