"""PixelTokenizer: exact round trips, input checks, save/load."""

import pytest
import torch

from ar_core.errors import CheckpointError, ConfigError, InputError
from ar_vision.data import load_digits
from ar_vision.tokenizers import ImageTokenizer, PixelTokenizer


def test_round_trip_exact_on_digits() -> None:
    x, _ = load_digits(8, "test")
    tok = PixelTokenizer()
    assert isinstance(tok, ImageTokenizer)
    tokens = tok.encode(x)
    assert tokens.shape == (x.shape[0], 64) and tokens.dtype == torch.long
    assert torch.equal(tok.decode(tokens), x)
    assert tok.fit(x)["mse"] == 0.0


def test_tokens_round_trip_exact_any_levels() -> None:
    g = torch.Generator().manual_seed(0)
    for levels in (2, 5, 256):
        tok = PixelTokenizer(levels=levels, image_size=4)
        t = torch.randint(levels, (10, 16), generator=g)
        assert torch.equal(tok.encode(tok.decode(t)), t)


def test_raster_order() -> None:
    tok = PixelTokenizer(levels=17, image_size=2)
    x = torch.tensor([[[[0.0, 1 / 16], [2 / 16, 3 / 16]]]])
    assert tok.encode(x).tolist() == [[0, 1, 2, 3]]


def test_input_errors() -> None:
    tok = PixelTokenizer()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        tok.encode(torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(InputError, match="8x8"):
        tok.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(InputError, match="token ids"):
        tok.decode(torch.full((1, 64), 17))
    with pytest.raises(ConfigError):
        PixelTokenizer(levels=1)


def test_save_load(tmp_path) -> None:
    PixelTokenizer(levels=9, image_size=16).save(tmp_path / "p")
    tok = PixelTokenizer.load(tmp_path / "p")
    assert (tok.levels, tok.image_size, tok.token_count) == (9, 16, 256)
    (tmp_path / "p" / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="corrupted"):
        PixelTokenizer.load(tmp_path / "p")
