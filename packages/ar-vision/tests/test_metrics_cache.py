"""The metrics classifier cache carries a checksum: weights damaged in place (same size, the
header intact) are detected and the classifier retrained, not used for wrong metrics."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import pytest
import torch

from ar_vision import metrics
from ar_vision.data import load_digits

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path))
    metrics._cached_classifier.cache_clear()
    yield
    metrics._cached_classifier.cache_clear()


def test_weights_zeroed_in_place_are_detected_and_rebuilt() -> None:
    x, y = load_digits(8, "test")
    good = metrics.class_accuracy(x, y)
    file = metrics._cache_file()
    data = bytearray(file.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    assert "sha256" in json.loads(data[8 : 8 + n])["__metadata__"]
    data[8 + n :] = bytes(len(data) - 8 - n)  # every weight 0, the header as it was
    file.write_bytes(bytes(data))
    metrics._cached_classifier.cache_clear()
    with pytest.warns(UserWarning, match="does not match its checksum"):
        rebuilt = metrics.class_accuracy(x, y)
    assert rebuilt == good >= 0.95  # the retrained classifier, not the zeroed one (0.1)
    metrics._cached_classifier.cache_clear()
    assert metrics.class_accuracy(x, y) == good  # the rebuilt file passes its checksum
