"""Coarse and fine codebooks: k-means over a VQ codebook gives every code a coarse label.

"Improving Autoregressive Visual Generation with Cluster-Oriented Token Prediction" /
coarse-to-fine token prediction (CTF, Guo et al. 2025, arXiv:2503.00234 — *id unverified*):
codes whose vectors are close get the same coarse label; stage 1 of generation predicts
the coarse labels autoregressively, stage 2 predicts the fine codes from them.

The map is deterministic: scikit-learn's KMeans with a fixed ``random_state`` on the
codebook in float64, then the clusters are renumbered in order of their first code
(the cluster of code 0 is coarse label 0, the next new cluster met is 1, ...), so the same
codebook always gives the same ``fine_to_coarse`` whatever numbering k-means chose.

Notation: V fine codes, C coarse labels, D code dim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ar_core.errors import CheckpointError, ConfigError, InputError
from ar_vision.tokenizers.base import Progress, VQTokenizer
from ar_vision.tokenizers.io import read_tokenizer, write_tokenizer


def coarse_labels(codebook: Tensor, n_coarse: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """k-means labels of the V codes, renumbered by first appearance: (V, D) ->
    (fine_to_coarse (V,) long, centroids (C, D) float32)."""
    from sklearn.cluster import KMeans

    cb = codebook.detach().cpu().double()
    distinct = torch.unique(cb, dim=0).shape[0]
    if not 2 <= n_coarse <= distinct:
        raise InputError(
            f"n_coarse must lie in [2, {distinct}] (the number of distinct codes); got "
            f"{n_coarse} (fit the base tokenizer first, or lower n_coarse)"
        )
    km = KMeans(n_clusters=n_coarse, n_init=10, random_state=seed).fit(cb.numpy())
    raw = torch.as_tensor(km.labels_, dtype=torch.long)  # (V,)
    order: list[int] = []
    for label in raw.tolist():
        if label not in order:
            order.append(label)
    renumber = torch.empty(n_coarse, dtype=torch.long)
    renumber[torch.tensor(order)] = torch.arange(n_coarse)
    fine_to_coarse = renumber[raw]  # (V,)
    centroids = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)[torch.tensor(order)]
    return fine_to_coarse, centroids  # (V,), (C, D)


class CoarseFineCodebook:
    """A VQ tokenizer (``base``) plus a coarse label for each of its codes."""

    name = "ctf"

    def __init__(self, base: VQTokenizer, n_coarse: int = 8, *, seed: int = 0) -> None:
        if not callable(getattr(base, "codebook", None)):
            raise ConfigError(
                f"CoarseFineCodebook needs a VQ tokenizer (one with codebook()), e.g. VQVAE; "
                f"got {type(base).__name__}"
            )
        if n_coarse < 2 or n_coarse > base.vocab_size:
            raise ConfigError(
                f"n_coarse must lie in [2, {base.vocab_size}] (the base vocabulary); got {n_coarse}"
            )
        self.base = base
        self.n_coarse = n_coarse
        self.seed = seed
        self.fine_to_coarse: Tensor | None = None  # (V,) long, set by build_map()
        self.coarse_centroids: Tensor | None = None  # (C, D)

    # the base tokenizer's interface
    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    @property
    def coarse_vocab_size(self) -> int:
        return self.n_coarse

    @property
    def token_count(self) -> int:
        return self.base.token_count

    @property
    def image_size(self) -> int:
        return self.base.image_size

    def codebook(self) -> Tensor:
        return self.base.codebook()

    def encode(self, images: Tensor) -> Tensor:
        return self.base.encode(images)

    def decode(self, tokens: Tensor) -> Tensor:
        return self.base.decode(tokens)

    # coarse labels
    def build_map(self) -> Tensor:
        """(Re)compute ``fine_to_coarse`` from the base codebook; returns it (V,)."""
        self.fine_to_coarse, self.coarse_centroids = coarse_labels(
            self.base.codebook(), self.n_coarse, seed=self.seed
        )
        return self.fine_to_coarse

    def to_coarse(self, tokens: Tensor) -> Tensor:
        """Fine token ids (...) -> coarse labels (...) in [0, n_coarse)."""
        if self.fine_to_coarse is None:
            raise InputError("to_coarse: no coarse map yet; call fit() or build_map() first")
        if tokens.dtype != torch.long or (
            tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size)
        ):
            raise InputError(f"to_coarse: tokens must be long ids in [0, {self.vocab_size})")
        return self.fine_to_coarse.to(tokens.device)[tokens]

    def fine_in(self, coarse: int) -> Tensor:
        """The fine codes whose coarse label is ``coarse``: (n,) long, ascending."""
        if self.fine_to_coarse is None:
            raise InputError("fine_in: no coarse map yet; call fit() or build_map() first")
        return torch.nonzero(self.fine_to_coarse == coarse).flatten()

    def fit(
        self,
        images: Tensor,
        *,
        steps: int,
        batch_size: int = 128,
        lr: float = 3e-3,
        generator: torch.Generator,
        progress: Progress | None = None,
    ) -> dict[str, float]:
        """Fit the base tokenizer (skipped when ``steps == 0``), then build the coarse map."""
        metrics = self.base.fit(
            images,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            generator=generator,
            progress=progress,
        )
        self.build_map()
        return metrics

    def save(self, path: str | Path) -> None:
        """The base tokenizer goes to ``path/base``; the map to ``path`` itself."""
        if self.fine_to_coarse is None or self.coarse_centroids is None:
            raise InputError("save: no coarse map yet; call fit() or build_map() first")
        config = {"n_coarse": self.n_coarse, "seed": self.seed, "base": self.base.name}
        tensors = {"fine_to_coarse": self.fine_to_coarse, "coarse_centroids": self.coarse_centroids}
        write_tokenizer(  # the base inside the same atomic folder: one rename for both
            path,
            name=self.name,
            config=config,
            tensors=tensors,
            extra=lambda tmp: self.base.save(tmp / "base"),
        )

    @classmethod
    def load(cls, path: str | Path) -> CoarseFineCodebook:
        from ar_vision.tokenizers import VQ_TOKENIZERS

        config, tensors = read_tokenizer(path, name=cls.name)
        base_cls: Any = VQ_TOKENIZERS.get(str(config.get("base")))
        if base_cls is None:
            raise CheckpointError(f"{path}: unknown base tokenizer {config.get('base')!r}")
        base = base_cls.load(Path(path) / "base")
        try:
            out = cls(base, int(config["n_coarse"]), seed=int(config["seed"]))
            f2c, centroids = tensors["fine_to_coarse"], tensors["coarse_centroids"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad coarse/fine config or tensors ({exc})") from None
        if (
            f2c.shape != (base.vocab_size,)
            or f2c.dtype != torch.long
            or (f2c.min() < 0 or f2c.max() >= out.n_coarse)
        ):
            raise CheckpointError(f"{path}: fine_to_coarse does not match the base codebook")
        out.fine_to_coarse, out.coarse_centroids = f2c, centroids
        return out
