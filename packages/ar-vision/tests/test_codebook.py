"""EMA codebook, dead-code restart, usage statistics and codebook neighbours."""

import pytest
import torch

from ar_core.errors import InputError
from ar_vision.tokenizers import EMACodebook, code_usage, codebook_neighbours


def test_ema_moves_codes_to_their_means() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    cb = EMACodebook(3, 2, decay=0.5, dead_after=1000)
    cb.update(centres, cb.quantize(centres), g)  # initialises from data
    cb.embed.copy_(centres + 0.3)
    cb.embed_sum.copy_(cb.embed)
    cb.cluster_size.fill_(1.0)
    z = centres.repeat_interleave(50, 0) + 0.01 * torch.randn(150, 2, generator=g)
    for _ in range(30):
        cb.update(z, cb.quantize(z), g)
    assert torch.allclose(cb.embed, z.view(3, 50, 2).mean(1), atol=1e-3)


def test_dead_codes_restart_from_data() -> None:
    g = torch.Generator().manual_seed(0)
    cb = EMACodebook(4, 2, dead_after=3)
    z = torch.tensor([[1.0, 1.0], [1.1, 1.0]])
    cb.update(z, cb.quantize(z), g)
    cb.embed[2:] = 100.0  # two codes far from every input: never chosen
    restarted = sum(cb.update(z, cb.quantize(z), g) for _ in range(3))
    assert restarted >= 2
    assert float((cb.embed - z[:1]).norm(dim=1).max()) < 1.0  # every code near the data


def test_code_usage() -> None:
    assert code_usage(torch.tensor([0, 1, 2, 3]), 8) == {
        "usage": 0.5,
        "perplexity": pytest.approx(4.0),
    }
    assert code_usage(torch.zeros(10, dtype=torch.long), 4)["perplexity"] == pytest.approx(1.0)


def test_neighbours_match_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    cb = torch.randn(20, 3, generator=g)
    nb = codebook_neighbours(cb, 4)
    assert nb.shape == (20, 4) and nb.dtype == torch.long
    for i in range(20):
        dists = sorted((float((cb[i] - cb[j]).norm()), j) for j in range(20) if j != i)
        assert nb[i].tolist() == [j for _, j in dists[:4]]


def test_neighbours_ties_and_errors() -> None:
    cb = torch.tensor([[0.0], [1.0], [-1.0], [3.0]])
    assert codebook_neighbours(cb, 2)[0].tolist() == [1, 2]  # equal distance: smaller index
    with pytest.raises(InputError):
        codebook_neighbours(cb, 4)
    # k = V - 1: every other code, nearest first (ties: the smaller index)
    assert codebook_neighbours(cb, 3).tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [1, 0, 2]]
