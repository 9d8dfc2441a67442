"""VAR's phi refinement in the multi-scale residual VQ (``phi=True``; off by default)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ar_vision.data import load_digits
from ar_vision.tokenizers import FrequencyRVQ, MultiScaleRVQ

SCALES = [1, 2, 4, 8]


def _fitted(phi: bool, steps: int = 5, **kw: object) -> MultiScaleRVQ:
    x, _ = load_digits(8, "train")
    tok = MultiScaleRVQ(hidden=8, phi=phi, seed=0, **kw)
    tok.fit(x[:256], steps=steps, batch_size=32, generator=torch.Generator().manual_seed(0))
    return tok


def test_off_by_default_and_no_weights() -> None:
    tok = MultiScaleRVQ()
    assert tok.phi is None and not any(k.startswith("phi") for k in tok.state_dict())


def test_decode_equals_a_loop_reference() -> None:
    """decode_partial(tokens, k) = decoder(sum_{j<=k} (1-a) up(e_j) + a conv(up(e_j)))."""
    tok = _fitted(phi=True, phi_ratio=0.3)
    x, _ = load_digits(8, "test")
    tokens = tok.encode(x[:5])
    _check_against_loop(tok, tokens)


@torch.no_grad()
def _check_against_loop(tok: MultiScaleRVQ, tokens: torch.Tensor) -> None:
    offsets = [0, 1, 5, 21, 85]
    for k in range(len(SCALES)):
        f_hat = torch.zeros(5, tok.cfg.dim, 8, 8)
        for j in range(k + 1):
            s = SCALES[j]
            codes = tok.codebook()[tokens[:, offsets[j] : offsets[j + 1]]]  # (5, s*s, D)
            z = codes.view(5, s, s, -1).permute(0, 3, 1, 2)
            if s != 8:
                z = F.interpolate(z, size=(8, 8), mode="bilinear", align_corners=False)
            assert tok.phi is not None
            f_hat = f_hat + 0.7 * z + 0.3 * tok.phi(z)
        torch.testing.assert_close(tok.decode_partial(tokens, k), tok.decoder(f_hat))


def test_ratio_zero_is_the_plain_pyramid() -> None:
    """With a = 0 phi is the identity: same weights give the same tokens and images as phi off."""
    on, off = MultiScaleRVQ(hidden=8, phi=True, phi_ratio=0.0), MultiScaleRVQ(hidden=8)
    x, _ = load_digits(8, "train")
    gen = torch.Generator().manual_seed(0)
    off.fit(x[:64], steps=2, batch_size=32, generator=gen)  # initialises the codebook
    on.load_state_dict({**on.state_dict(), **off.state_dict()})
    assert torch.equal(on.encode(x[:16]), off.encode(x[:16]))
    assert torch.equal(on.decode(off.encode(x[:16])), off.decode(off.encode(x[:16])))


def test_phi_is_trained_saved_and_loaded(tmp_path: Path) -> None:
    before = MultiScaleRVQ(hidden=8, phi=True, seed=0).phi
    tok = _fitted(phi=True)
    assert before is not None and tok.phi is not None
    assert not torch.equal(before.weight, tok.phi.weight)  # Adam updated it
    tok.save(tmp_path / "t")
    loaded = MultiScaleRVQ.load(tmp_path / "t")
    x, _ = load_digits(8, "test")
    tokens = tok.encode(x[:8])
    assert torch.equal(loaded.encode(x[:8]), tokens)
    assert torch.equal(loaded.decode(tokens), tok.decode(tokens))
    assert FrequencyRVQ(phi=True).phi is not None  # NFIG inherits the option
