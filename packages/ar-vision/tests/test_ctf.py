"""Coarse/fine codebook (CTF): a deterministic fine-to-coarse map and consistent coarse tokens."""

import pytest
import torch

from ar_core.errors import ConfigError, InputError
from ar_vision.data import load_digits
from ar_vision.tokenizers import VQVAE, CoarseFineCodebook, PixelTokenizer, coarse_labels


@pytest.fixture(scope="module")
def base() -> VQVAE:
    x, _ = load_digits(8, "train")
    tok = VQVAE(hidden=8, codebook_size=32, seed=0)
    tok.fit(x, steps=30, batch_size=32, generator=torch.Generator().manual_seed(0))
    return tok


def test_map_deterministic(base) -> None:
    a = CoarseFineCodebook(base, n_coarse=6)
    b = CoarseFineCodebook(base, n_coarse=6)
    assert torch.equal(a.build_map(), b.build_map())
    assert a.fine_to_coarse is not None
    assert a.fine_to_coarse.shape == (32,) and set(a.fine_to_coarse.tolist()) == set(range(6))
    # first-appearance numbering: code 0 has label 0, labels appear in increasing order
    first = [a.fine_to_coarse.tolist().index(c) for c in range(6)]
    assert first == sorted(first) and first[0] == 0


def test_map_is_invariant_to_kmeans_numbering() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    cb = centres.repeat(4, 1) + 0.1 * torch.randn(12, 2, generator=g)  # code i in cluster i % 3
    for seed in (0, 1, 2):
        labels, centroids = coarse_labels(cb, 3, seed=seed)
        assert labels.tolist() == [0, 1, 2] * 4
        assert torch.allclose(centroids, centres, atol=0.2)


def test_to_coarse_consistent(base) -> None:
    ctf = CoarseFineCodebook(base, n_coarse=6)
    ctf.build_map()
    assert ctf.fine_to_coarse is not None and ctf.coarse_centroids is not None
    x, _ = load_digits(8, "test")
    tokens = ctf.encode(x[:20])
    coarse = ctf.to_coarse(tokens)
    assert coarse.shape == tokens.shape
    for fine, c in zip(tokens.flatten().tolist(), coarse.flatten().tolist()):
        assert int(ctf.fine_to_coarse[fine]) == c
        assert fine in ctf.fine_in(c).tolist()
    # every code's coarse label is its nearest coarse centroid
    nearest = torch.cdist(base.codebook(), ctf.coarse_centroids).argmin(1)
    assert torch.equal(nearest, ctf.fine_to_coarse)


def test_save_load(base, tmp_path) -> None:
    ctf = CoarseFineCodebook(base, n_coarse=5, seed=2)
    ctf.build_map()
    ctf.save(tmp_path / "ctf")
    loaded = CoarseFineCodebook.load(tmp_path / "ctf")
    assert loaded.fine_to_coarse is not None and ctf.fine_to_coarse is not None
    assert torch.equal(loaded.fine_to_coarse, ctf.fine_to_coarse)
    assert torch.equal(loaded.codebook(), ctf.codebook())


def test_errors(base) -> None:
    with pytest.raises(ConfigError, match="VQ tokenizer"):
        CoarseFineCodebook(PixelTokenizer(), n_coarse=4)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="n_coarse"):
        CoarseFineCodebook(base, n_coarse=64)
    with pytest.raises(InputError, match="build_map"):
        CoarseFineCodebook(base, n_coarse=4).to_coarse(torch.zeros(1, 16, dtype=torch.long))
