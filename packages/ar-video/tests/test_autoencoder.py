"""The per-frame autoencoder: trains, standardises, saves and loads with validation."""

from pathlib import Path

import pytest
import torch

from ar_core.errors import CheckpointError, InputError
from ar_video.autoencoder import FrameAutoencoder, train_autoencoder
from ar_video.data import moving_digits


@pytest.fixture(scope="module")
def fitted() -> tuple[FrameAutoencoder, torch.Tensor, dict[str, float]]:
    torch.manual_seed(0)
    clips = moving_digits(8, frames=8, seed=0)
    ae = FrameAutoencoder(width=32)
    with torch.no_grad():
        before = float(((ae(clips.flatten(0, 1)) - clips.flatten(0, 1)) ** 2).mean())
    m = train_autoencoder(ae, clips, steps=40, batch_size=32, seed=0)
    m["before"] = before
    return ae, clips, m


def test_training_lowers_error_and_standardises(
    fitted: tuple[FrameAutoencoder, torch.Tensor, dict[str, float]],
) -> None:
    ae, clips, m = fitted
    assert m["mse"] < 0.5 * m["before"]
    z = ae.encode(clips)
    assert z.shape == (8, 8, 8, 8, 8)
    per_channel = z.transpose(0, 2).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(8), atol=0.15)
    assert torch.allclose(per_channel.std(1), torch.ones(8), atol=0.15)
    assert ae.decode(z).shape == clips.shape


def test_save_load_roundtrip_and_corruption(
    fitted: tuple[FrameAutoencoder, torch.Tensor, dict[str, float]], tmp_path: Path
) -> None:
    ae, clips, _ = fitted
    ae.save(tmp_path / "ae")
    back = FrameAutoencoder.load(tmp_path / "ae")
    assert torch.equal(back.encode(clips[:2]), ae.encode(clips[:2]))
    tensors = tmp_path / "ae" / "autoencoder.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-4] + b"xxxx")
    with pytest.raises(CheckpointError, match="checksum"):
        FrameAutoencoder.load(tmp_path / "ae")
    with pytest.raises(CheckpointError, match="does not exist"):
        FrameAutoencoder.load(tmp_path / "nothing")


def test_wrong_frame_size_is_refused(
    fitted: tuple[FrameAutoencoder, torch.Tensor, dict[str, float]],
) -> None:
    ae, _, _ = fitted
    with pytest.raises(InputError, match="16x16 but the autoencoder was trained on 32x32"):
        ae.encode(torch.zeros(1, 3, 1, 16, 16))
