"""Representations: layouts per tokenizer, CTF's constrained sampling, the factorised
baseline against a hand count."""

from __future__ import annotations

import math

import torch

from ar_vision.model import build_step_model
from ar_vision.representation import Representation, factorised_nll
from ar_vision.sampling import generate_images
from ar_vision.tokenizers import MultiScaleRVQ, PixelTokenizer


class FakeCTF:
    """A CTF codebook stand-in: 6 codes in 3 clusters, 4 tokens per image."""

    name = "ctf"
    vocab_size = 6
    coarse_vocab_size = 3
    token_count = 4
    fine_to_coarse = torch.tensor([0, 0, 1, 1, 2, 2])

    def to_coarse(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fine_to_coarse[tokens]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).long()


def test_layouts() -> None:
    assert Representation.of(PixelTokenizer(levels=17)).shape == (8, 8)
    assert Representation.of(MultiScaleRVQ()).shape == (85,)
    rep = Representation.of(FakeCTF())
    assert (rep.shape, rep.vocab_size, rep.coarse_fine) == ((8,), 9, True)
    tokens = rep.encode(torch.tensor([[[[0.0, 3.0], [5.0, 2.0]]]]))
    assert tokens.tolist() == [[6, 7, 8, 7, 0, 3, 5, 2]]  # coarse ids V + c, then the codes


def test_ctf_samples_respect_the_clusters() -> None:
    rep = Representation.of(FakeCTF())
    plan = rep.plan("coarse-to-fine")
    model = build_step_model(vocab_size=9, num_classes=10, num_positions=8, seed=0).eval()
    out = generate_images(
        model,
        plan,
        torch.arange(10).repeat(5),
        cfg_scale=1.5,
        allowed=rep.allowed,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.calls == 5  # 4 coarse steps, then all 4 fine tokens at once
    coarse, fine = out.tokens[:, :4], out.tokens[:, 4:]
    assert bool((coarse >= 6).all()) and bool((fine < 6).all())
    assert torch.equal(FakeCTF.fine_to_coarse[fine], coarse - 6)


def test_factorised_nll_against_a_hand_count() -> None:
    train = torch.tensor([[0, 1], [0, 1], [1, 1]])
    test = torch.tensor([[0, 0]])
    # position 0: counts (2, 1) + 1 -> p(0) = 3/5; position 1: (0, 3) + 1 -> p(0) = 1/5
    expected = -(math.log(3 / 5) + math.log(1 / 5)) / 2
    assert math.isclose(factorised_nll(train, test, vocab_size=2), expected, rel_tol=1e-6)
