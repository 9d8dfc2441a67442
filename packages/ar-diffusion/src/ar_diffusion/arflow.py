"""ARFlow: autoregressive flow over sequences of same-class images with hybrid attention
(softmax attention within an image, gated linear attention across images), trained in a
chunk-parallel form and sampled in a recurrent form.

Hui et al., "ARFlow: Autoregressive Flow with Hybrid Linear Attention" (2025,
arXiv:2501.16085). A training item is a sequence of n images of one class, each at its
own noise level, sorted noisier first; the model predicts every image's flow-matching
velocity given the noisier images before it. Sampling walks one Euler trajectory from
noise to an image in n steps, and each step's input is the previous steps' images: the
sequence of a sampling run is the denoising trajectory itself.

Attention. Images are grouped into chunks of ``images_per_chunk`` (k) images; each
image is P tokens. Within a chunk attention is softmax, block-causal over its images (an
image sees the chunk's earlier images and itself; k = 1: bidirectional within the
image); across chunks a layer carries a linear attention state with a per-head decay
``gamma`` (retention, Sun et al. 2023, arXiv:2307.08621):

    S_c = gamma · S_{c-1} + K_c^T V_c            (D x D per head)
    out_c = softmax(Q_c K_c^T / sqrt(D) + mask) V_c + (Q_c / sqrt(D)) S_{c-1}

so image j never sees a later image. The chunk-parallel form (:meth:`HybridAttention.
forward`) computes every ``S_{c-1}`` at once with the decay matrix ``M[c, i] =
gamma^(c-1-i)`` for i < c; the recurrent form (:meth:`HybridAttention.step`) takes one
image at a time with constant memory (the state and at most k - 1 images' keys). k = 2
is a pair layout: a sequence must hold an even number of images.

Notation: B batch, n images, k images per chunk, m = n / k chunks, P tokens per image,
C width, H heads, D = C / H, S image side, p patch side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError

from .heads.base import timestep_embedding

__all__ = ["ARFlow", "ARFlowBackbone", "HybridAttention", "HybridState", "class_sequences"]


@dataclass
class HybridState:
    """One layer's recurrent state: ``s`` (B, H, D, D) the decayed sum over finished
    chunks; ``keys``/``values`` (B, H, a P, D) the a images of the current chunk so far."""

    s: Tensor
    keys: Tensor
    values: Tensor


class HybridAttention(nn.Module):
    """One layer of the hybrid attention (module docstring) over chunks of
    ``images_per_chunk`` images; decays ``1 - 2^(-5 - h)`` per head h (RetNet's choice)."""

    def __init__(self, width: int, heads: int, images_per_chunk: int = 1) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ConfigError(f"HybridAttention: heads={heads} must divide width={width}")
        if images_per_chunk < 1:
            raise ConfigError(
                f"HybridAttention: images_per_chunk must be >= 1, got {images_per_chunk}"
            )
        self.heads, self.head_dim = heads, width // heads
        self.chunk = images_per_chunk
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        gamma = 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float32))
        self.gamma: Tensor
        self.register_buffer("gamma", gamma, persistent=False)  # (H,)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, n, P, C) -> q, k, v (B, H, n, P, D), q scaled by 1/sqrt(D)."""
        B, n, P, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, P, 3, self.heads, self.head_dim).permute(3, 0, 4, 1, 2, 5)
        return q * self.head_dim**-0.5, k, v

    def _out(self, y: Tensor) -> Tensor:
        """(B, H, n, P, D) -> (B, n, P, C)."""
        B, H, n, P, D = y.shape
        out: Tensor = self.proj(y.permute(0, 2, 3, 1, 4).reshape(B, n, P, H * D))
        return out

    def check_images(self, n: int) -> None:
        if n < 1 or n % self.chunk:
            layout = "a pair layout" if self.chunk == 2 else f"chunks of {self.chunk} images"
            raise InputError(
                f"HybridAttention: {n} images do not fill {layout} (images_per_chunk="
                f"{self.chunk}); give a positive multiple of {self.chunk} images"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Chunk-parallel form over all n images: (B, n, P, C) -> (B, n, P, C)."""
        B, n, P, _ = x.shape
        self.check_images(n)
        k_img, m = self.chunk, n // self.chunk
        q, k, v = (
            t.reshape(B, self.heads, m, k_img * P, self.head_dim) for t in self._qkv(x)
        )  # (B, H, m, kP, D)
        scores = q @ k.transpose(-1, -2)  # (B, H, m, kP, kP)
        if k_img > 1:  # block-causal over the chunk's images
            image = torch.arange(k_img * P, device=x.device) // P
            scores = scores.masked_fill(image[None, :] > image[:, None], float("-inf"))
        intra = scores.softmax(-1) @ v
        kv = k.transpose(-1, -2) @ v  # (B, H, m, D, D): each chunk's K^T V
        c = torch.arange(m, device=x.device)
        lag = (c[:, None] - 1 - c[None, :]).clamp(min=0).float()  # (m, m)
        decay = self.gamma[:, None, None] ** lag * (c[None, :] < c[:, None])  # (H, m, m)
        state = torch.einsum("hji,bhide->bhjde", decay, kv)  # S_{c-1} for every chunk c
        y = (intra + q @ state).reshape(B, self.heads, n, P, self.head_dim)
        return self._out(y)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> HybridState:
        H, D = self.heads, self.head_dim
        empty = torch.zeros(batch, H, 0, D, device=device)
        return HybridState(torch.zeros(batch, H, D, D, device=device), empty, empty)

    def step(self, x: Tensor, state: HybridState) -> tuple[Tensor, HybridState]:
        """Recurrent form, one image: x (B, P, C) and the state before it -> (out (B, P, C),
        the state after it)."""
        q, k, v = self._qkv(x[:, None])  # (B, H, 1, P, D)
        q = q[:, :, 0]
        keys = torch.cat([state.keys, k[:, :, 0]], dim=2)  # (B, H, (a + 1) P, D)
        values = torch.cat([state.values, v[:, :, 0]], dim=2)
        intra = (q @ keys.transpose(-1, -2)).softmax(-1) @ values
        out = self._out((intra + q @ state.s)[:, :, None])[:, 0]
        if keys.shape[2] == self.chunk * x.shape[1]:  # the chunk is complete
            s = self.gamma[None, :, None, None] * state.s + keys.transpose(-1, -2) @ values
            empty = keys[:, :, :0]
            return out, HybridState(s, empty, empty)
        return out, HybridState(state.s, keys, values)


class ARFlowBackbone(nn.Module):
    """Pre-norm residual layers of :class:`HybridAttention` and an MLP over sequences of
    images given as token chunks (B, n, P, C); ``forward`` is chunk-parallel, ``step``
    the recurrent form (one image, one state per layer)."""

    def __init__(
        self, width: int = 64, layers: int = 2, heads: int = 4, images_per_chunk: int = 1
    ) -> None:
        super().__init__()
        self.attn = nn.ModuleList(
            HybridAttention(width, heads, images_per_chunk) for _ in range(layers)
        )
        self.norm1 = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.norm2 = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(layers)
        )
        self.width = width
        self.images_per_chunk = images_per_chunk

    def _check(self, x: Tensor, dims: int) -> None:
        if x.dim() != dims or x.shape[-1] != self.width:
            shape = "(B, n, P, C)" if dims == 4 else "(B, P, C)"
            raise InputError(
                f"ARFlowBackbone: input must be {shape} with C={self.width}, got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x, 4)
        for attn, n1, n2, mlp in zip(self.attn, self.norm1, self.norm2, self.mlp, strict=True):
            x = x + attn(n1(x))
            x = x + mlp(n2(x))
        return x

    def init_states(
        self, batch: int, device: torch.device | str | None = None
    ) -> list[HybridState]:
        return [self._layer(i).init_state(batch, device) for i in range(len(self.attn))]

    def _layer(self, i: int) -> HybridAttention:
        layer = self.attn[i]
        assert isinstance(layer, HybridAttention)
        return layer

    def step(self, x: Tensor, states: list[HybridState]) -> tuple[Tensor, list[HybridState]]:
        """One image (B, P, C) given each layer's state -> (out, new states)."""
        self._check(x, 3)
        new = []
        for i, (n1, n2, mlp, s) in enumerate(
            zip(self.norm1, self.norm2, self.mlp, states, strict=True)
        ):
            y, s2 = self._layer(i).step(n1(x), s)
            x = x + y
            x = x + mlp(n2(x))
            new.append(s2)
        return x, new


# -- the generative model ------------------------------------------------------------------


@dataclass
class ARFlowSample:
    """``images`` (B, c, S, S) the samples; ``calls`` backbone calls per image (= n);
    with ``return_sequence``: ``sequence`` (B, n, c, S, S) each step's input image,
    ``times`` (n,) their times and ``velocities`` (B, n, c, S, S) the predicted ones."""

    images: Tensor
    calls: int
    sequence: Tensor | None = None
    times: Tensor | None = None
    velocities: Tensor | None = None


class ARFlow(nn.Module):
    """Class-conditional ARFlow on ``channels`` x ``image_size``^2 images cut into
    ``patch``^2 patches (one token each): sequences of ``n_images`` images, sampled in
    ``n_images`` Euler steps (one recurrent backbone call each)."""

    def __init__(
        self,
        image_size: int = 8,
        channels: int = 1,
        patch: int = 2,
        n_images: int = 8,
        num_classes: int = 10,
        *,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        images_per_chunk: int = 1,
    ) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ConfigError(f"ARFlow: patch={patch} must divide image_size={image_size}")
        if num_classes < 1 or channels < 1:
            raise ConfigError(
                f"ARFlow: num_classes and channels must be >= 1, got {num_classes}, {channels}"
            )
        if images_per_chunk < 1 or n_images < 1 or n_images % images_per_chunk:
            raise ConfigError(
                f"ARFlow: n_images={n_images} must be a positive multiple of "
                f"images_per_chunk={images_per_chunk} (a pair layout needs an even count)"
            )
        self.image_size, self.channels, self.patch = image_size, channels, patch
        self.n_images, self.num_classes, self.width = n_images, num_classes, width
        self.tokens = (image_size // patch) ** 2
        token_dim = channels * patch * patch
        self.backbone = ARFlowBackbone(width, layers, heads, images_per_chunk)
        self.patch_in = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(0.02 * torch.randn(self.tokens, width))
        self.label = nn.Embedding(num_classes, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.norm = nn.LayerNorm(width)
        self.patch_out = nn.Linear(width, token_dim)

    # -- layout ------------------------------------------------------------------------

    def to_tokens(self, images: Tensor) -> Tensor:
        """(..., c, S, S) -> (..., P, c p p)."""
        *lead, c, S, _ = images.shape
        g, p = S // self.patch, self.patch
        x = images.reshape(*lead, c, g, p, g, p)
        k = len(lead)
        x = x.permute(*range(k), k + 1, k + 3, k, k + 2, k + 4)  # (..., g, g, c, p, p)
        return x.reshape(*lead, g * g, c * p * p)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        """(..., P, c p p) -> (..., c, S, S)."""
        *lead, _, _ = tokens.shape
        g, p, c = self.image_size // self.patch, self.patch, self.channels
        x = tokens.reshape(*lead, g, g, c, p, p)
        k = len(lead)
        x = x.permute(*range(k), k + 2, k, k + 3, k + 1, k + 4)  # (..., c, g, p, g, p)
        return x.reshape(*lead, c, g * p, g * p)

    def _check_images(self, images: Tensor, what: str, dims: int) -> None:
        c, S = self.channels, self.image_size
        want = (c, S, S)
        if images.dim() != dims or tuple(images.shape[-3:]) != want:
            shape = "(B, n, c, S, S)" if dims == 5 else "(B, c, S, S)"
            raise InputError(
                f"ARFlow.{what}: images must be {shape} with c={c}, S={S}, got {tuple(images.shape)}"
            )
        if not torch.isfinite(images).all():
            raise InputError(f"ARFlow.{what}: images hold NaN/inf values")

    def _check_labels(self, labels: Tensor, batch: int, what: str) -> None:
        if labels.shape != (batch,) or labels.dtype != torch.long:
            raise InputError(
                f"ARFlow.{what}: labels must be a long tensor ({batch},), got "
                f"{labels.dtype} {tuple(labels.shape)}"
            )
        if batch and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise InputError(
                f"ARFlow.{what}: labels must lie in [0, {self.num_classes}), got "
                f"{int(labels.min())}..{int(labels.max())}"
            )

    # -- the network -------------------------------------------------------------------

    def _embed(self, tokens: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """tokens (B, n, P, t), t (B, n), labels (B,) -> (B, n, P, W)."""
        cond = self.time(timestep_embedding(t, self.width)) + self.label(labels)[:, None]
        emb: Tensor = self.patch_in(tokens) + self.pos + cond[:, :, None]
        return emb

    def velocity(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """Chunk-parallel velocities of a sequence: x_t (B, n, c, S, S), t (B, n) each
        image's time (0 = noise, 1 = data), labels (B,) -> (B, n, c, S, S)."""
        self._check_images(x_t, "velocity", 5)
        B, n = x_t.shape[:2]
        self._check_labels(labels, B, "velocity")
        if t.shape != (B, n):
            raise InputError(f"ARFlow.velocity: t must be ({B}, {n}), got {tuple(t.shape)}")
        h = self.backbone(self._embed(self.to_tokens(x_t), t, labels))
        return self.from_tokens(self.patch_out(self.norm(h)))

    def train_times(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Sorted noise levels, noisier first: t_j = (j + u_j) / n, u_j ~ U[0, 1), (B, n)
        (image j's stratum holds the sampler's time j / n)."""
        n = self.n_images
        dev = self.pos.device
        u = torch.rand(batch, n, generator=generator, device=dev)
        return (torch.arange(n, device=dev) + u) / n

    def loss(
        self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Flow-matching loss of a batch of same-class sequences: images (B, n, c, S, S)
        (data, one class per row), labels (B,) -> scalar."""
        self._check_images(images, "loss", 5)
        B, n = images.shape[:2]
        if n != self.n_images:
            raise InputError(
                f"ARFlow.loss: sequences must hold n_images={self.n_images} images, got {n}"
            )
        t = self.train_times(B, generator)
        eps = torch.randn(images.shape, generator=generator, device=images.device)
        tt = t[..., None, None, None]
        x_t = (1 - tt) * eps + tt * images
        return ((self.velocity(x_t, t, labels) - (images - eps)) ** 2).mean()

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        return_sequence: bool = False,
    ) -> ARFlowSample:
        """One image per label in ``n_images`` Euler steps at t = j / n, each a recurrent
        backbone call over the images of the steps before it."""
        B = labels.shape[0] if labels.dim() == 1 else -1
        self._check_labels(labels, B, "sample")
        n, dev = self.n_images, self.pos.device
        shape = (B, self.channels, self.image_size, self.image_size)
        z = torch.randn(shape, generator=generator, device=dev)
        states = self.backbone.init_states(B, dev)
        seq, vel = [], []
        for j in range(n):
            t = torch.full((B, 1), j / n, device=dev)
            emb = self._embed(self.to_tokens(z)[:, None], t, labels.to(dev))[:, 0]
            h, states = self.backbone.step(emb, states)
            v = self.from_tokens(self.patch_out(self.norm(h)))
            seq.append(z)
            vel.append(v)
            z = z + v / n
        out = ARFlowSample(z, n)
        if return_sequence:
            out.sequence, out.velocities = torch.stack(seq, 1), torch.stack(vel, 1)
            out.times = torch.arange(n, device=dev) / n
        return out


def class_sequences(
    images: Tensor, labels: Tensor, n: int, batch: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A training batch of ARFlow: ``batch`` rows of ``n`` distinct images of one class
    (a class drawn uniformly per row): images (N, ...), labels (N,) -> ((batch, n, ...),
    (batch,))."""
    if images.shape[0] != labels.shape[0] or labels.dim() != 1:
        raise InputError(
            f"class_sequences: {images.shape[0]} images but labels of shape {tuple(labels.shape)}"
        )
    classes, counts = labels.unique(return_counts=True)
    if n < 1 or int(counts.min()) < n:
        small = int(classes[counts.argmin()])
        raise InputError(
            f"class_sequences: n={n} images per sequence, but class {small} has only "
            f"{int(counts.min())} images; lower n"
        )
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    pick = torch.randint(len(classes), (batch,), generator=generator)
    rows = torch.stack(
        [
            members[int(c)][torch.randperm(len(members[int(c)]), generator=generator)[:n]]
            for c in pick
        ]
    )  # (batch, n)
    return images[rows], classes[pick]
