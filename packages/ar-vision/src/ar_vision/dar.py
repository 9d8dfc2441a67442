"""D-AR: a tokenizer whose causal token groups drive the steps of a flow-matching decoder.

"D-AR: Diffusion via Autoregressive Models" (Gao & Shou 2025, arXiv:2505.23660). An
image becomes a 1-D sequence of ``N = G * m`` discrete tokens in G groups of m. The
decoder is a flow-matching model (rectified flow: ``x_t = (1 - t) noise + t data``,
velocity target ``data - noise``) sampled with Euler steps, and group k drives the
decoder's k-th stage of ``steps_per_group`` steps: at stage k the decoder sees the groups
``<= k`` only (the later groups are replaced by a learned "absent" vector, not by their
codes), so a plain next-token model over the sequence (:mod:`ar_vision.model`, raster
ordering) is a diffusion sampler whose k-th stage can start as soon as group k is out.

Streaming previews: after the last Euler step of stage k the decoder's own estimate of the
clean image, ``x_t + (1 - t) v(x_t, t, groups <= k)`` (the posterior mean under the flow),
is shown; it depends on groups ``<= k`` and the noise only, and the preview after the last
group is the decoded image itself. :class:`DARStream` consumes one group at a time.

The paper's encoder and decoder are Transformers at ImageNet scale; here both are MLPs
sized for 8x8 digits, and the time grid, group sizes and widths are parameters chosen here.
Training is end to end: VQ (EMA codebook with dead-code restart, straight-through
gradients, commitment loss) plus the flow-matching loss at the decoder's own step times
(the grid ``t_j = (j / (G s)) ** time_power`` the sampler visits), with the stage's
group mask.

Notation: B batch, C channels, S image side, P = C S S pixels, G groups, m tokens a group,
N = G m tokens, D code dimension, V codebook size, s Euler steps per group.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError
from ar_vision.tokenizers.base import (
    Progress,
    check_images,
    check_tokens,
    fit_autoencoder,
    psnr,
    seeded,
    validated,
)
from ar_vision.tokenizers.codebook import EMACodebook, code_usage
from ar_vision.tokenizers.io import construct, load_state, read_tokenizer, write_tokenizer

if TYPE_CHECKING:
    from ar_vision.model import ClassConditionalStepModel


class DARConfig(pydantic.BaseModel):
    """Flat config of :class:`DARTokenizer`; defaults are sized for 8x8 digits on a CPU."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    image_size: int = pydantic.Field(8, ge=1)  # scikit-learn's digits
    channels: int = pydantic.Field(1, ge=1)
    groups: int = pydantic.Field(4, ge=1)  # G decoder stages, one token group each
    tokens_per_group: int = pydantic.Field(4, ge=1)  # m: 16 tokens, as vqvae's 4x4 grid
    codebook_size: int = pydantic.Field(64, ge=2)  # V
    dim: int = pydantic.Field(8, ge=1)  # D: small codes keep nearest-code search well-posed
    hidden: int = pydantic.Field(256, ge=1)  # MLP width of the encoder and the decoder
    steps_per_group: int = pydantic.Field(1, ge=1)  # s Euler steps a group drives
    # step times t_j = (j / (G s)) ** time_power: > 1 keeps the flow noisier for longer,
    # so the later groups still carry information (1: an even grid)
    time_power: float = pydantic.Field(2.0, ge=1)
    time_features: int = pydantic.Field(8, ge=1)  # sin/cos features of t
    beta: float = pydantic.Field(0.25, ge=0)  # commitment weight of the VQ-VAE paper
    decay: float = pydantic.Field(0.99, ge=0, lt=1)  # EMA decay of the codebook
    dead_after: int = pydantic.Field(20, ge=1)  # restart a code unused for 20 updates
    seed: int = 0  # initial weights (drawn in a forked RNG; global RNG untouched)
    noise_seed: int = 0  # the decoder's starting noise when decode() is given none


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, n_out),
    )


class DARTokenizer(nn.Module):
    """Images (B, C, S, S) in [0, 1] <-> tokens (B, G m); decoding is a G-stage flow."""

    name = "dar"

    def __init__(self, **config: Any) -> None:
        super().__init__()
        cfg: DARConfig = validated(DARConfig, **config)
        self.cfg = cfg
        self.image_size, self.channels = cfg.image_size, cfg.channels
        self.groups, self.group_size = cfg.groups, cfg.tokens_per_group
        self.token_count = cfg.groups * cfg.tokens_per_group  # N
        self.vocab_size = cfg.codebook_size
        self.pixels = cfg.channels * cfg.image_size**2  # P
        self.num_steps = cfg.groups * cfg.steps_per_group  # G s Euler steps
        n, d = self.token_count, cfg.dim
        with seeded(cfg.seed):
            self.encoder = _mlp(self.pixels, cfg.hidden, n * d)
            # decoder input: x_t (P), the N codes with absent ones replaced (N D), t features
            self.decoder = _mlp(
                self.pixels + n * d + 2 * cfg.time_features, cfg.hidden, self.pixels
            )
            self.absent = nn.Parameter(0.02 * torch.randn(n, d))  # (N, D) a group not yet out
        self.quantizer = EMACodebook(
            cfg.codebook_size, d, decay=cfg.decay, dead_after=cfg.dead_after
        )
        freqs = math.pi * 2.0 ** torch.arange(cfg.time_features, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)  # (F,)
        group_of = torch.arange(n) // cfg.tokens_per_group  # (N,) group of each token
        self.register_buffer("group_of", group_of, persistent=False)

    freqs: Tensor
    group_of: Tensor

    def codebook(self) -> Tensor:
        """The code vectors (V, D)."""
        return self.quantizer.embed.detach().clone()

    # -- the two halves ------------------------------------------------------------------
    def _latent(self, images: Tensor) -> Tensor:
        z = self.encoder(2 * images.flatten(1) - 1)  # (B, N D)
        return z.view(-1, self.cfg.dim)  # (B N, D)

    def velocity(self, x: Tensor, t: Tensor, codes: Tensor, stage: Tensor) -> Tensor:
        """The decoder's velocity at ``x`` (B, P), times ``t`` (B,), for stage ``stage``
        (B,) long: the codes (B, N, D) of groups ``<= stage`` are seen, later ones are the
        learned absent vector (replaced, so nothing of them reaches the network)."""
        seen = self.group_of[None, :] <= stage[:, None]  # (B, N)
        cond = torch.where(seen[..., None], codes, self.absent[None])  # (B, N, D)
        angles = t[:, None] * self.freqs[None, :]  # (B, F)
        inputs = [x, cond.flatten(1), torch.sin(angles), torch.cos(angles)]
        out: Tensor = self.decoder(torch.cat(inputs, dim=1))  # (B, P)
        return out

    def step_times(self) -> Tensor:
        """The Euler grid ``t_j = (j / (G s)) ** time_power``, j = 0 .. G s (``t_{G s} = 1``);
        step j (from ``t_j`` to ``t_{j+1}``) is driven by group ``j // s``."""
        grid = torch.arange(self.num_steps + 1, dtype=torch.float64) / self.num_steps
        return grid.pow(self.cfg.time_power).float()  # (G s + 1,): the last is 1

    # -- tokens ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        check_images(images, self.image_size, "DARTokenizer.encode", self.channels)
        idx = self.quantizer.quantize(self._latent(images))  # (B N,)
        return idx.view(images.shape[0], self.token_count)  # (B, N)

    def noise(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Starting noise (B, P): from ``generator``, else from ``noise_seed`` (row i is the
        same whatever the batch size)."""
        gen = generator or torch.Generator().manual_seed(self.cfg.noise_seed)
        return torch.randn((batch, self.pixels), generator=gen)

    def stream(self, batch: int, noise: Tensor | None = None) -> DARStream:
        """A decoder that takes one token group at a time (:class:`DARStream`)."""
        return DARStream(self, batch, noise)

    @torch.no_grad()
    def previews(self, tokens: Tensor, noise: Tensor | None = None) -> Tensor:
        """The preview after each group, (G, B, C, S, S): the stream fed group by group."""
        check_tokens(tokens, self.token_count, self.vocab_size, "DARTokenizer.previews")
        stream = self.stream(tokens.shape[0], noise)
        m = self.group_size
        return torch.stack(
            [stream.feed(tokens[:, k * m : (k + 1) * m]) for k in range(self.groups)]
        )

    @torch.no_grad()
    def decode_partial(self, tokens: Tensor, k: int, noise: Tensor | None = None) -> Tensor:
        """The preview after group ``k`` from ``tokens`` (B, (k + 1) m), the groups so far,
        or (B, N), of which only groups ``<= k`` are read."""
        if not 0 <= k < self.groups:
            raise InputError(f"group k must lie in [0, {self.groups}); got {k}")
        m = self.group_size
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise InputError("DARTokenizer.decode_partial: tokens must be a long tensor (B, n)")
        if tokens.shape[1] not in ((k + 1) * m, self.token_count):
            raise InputError(
                f"DARTokenizer.decode_partial: the preview after group {k} needs its {k + 1} "
                f"groups of {m} tokens ({(k + 1) * m}) or all {self.token_count}; got "
                f"{tokens.shape[1]} (a whole number of groups of tokens_per_group={m})"
            )
        stream = self.stream(tokens.shape[0], noise)
        preview = torch.empty(0)
        for g in range(k + 1):
            preview = stream.feed(tokens[:, g * m : (g + 1) * m])
        return preview

    @torch.no_grad()
    def decode(self, tokens: Tensor, noise: Tensor | None = None) -> Tensor:
        """Tokens (B, N) -> images (B, C, S, S): every stage of the flow (the last preview)."""
        check_tokens(tokens, self.token_count, self.vocab_size, "DARTokenizer.decode")
        return self.decode_partial(tokens, self.groups - 1, noise)

    # -- training --------------------------------------------------------------------------
    def loss(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Flow matching at the sampler's step times with each stage's group mask, plus the
        commitment loss; updates the codebook (EMA)."""
        b = images.shape[0]
        z = self._latent(images)  # (B N, D)
        idx = self.quantizer.quantize(z.detach())
        zq = self.quantizer.lookup(idx)  # (B N, D)
        commit = F.mse_loss(z, zq.detach())
        codes = (z + (zq - z).detach()).view(b, self.token_count, self.cfg.dim)  # straight-through
        data = 2 * images.flatten(1) - 1  # (B, P) in [-1, 1]
        noise = torch.randn(data.shape, generator=generator)
        j = torch.randint(self.num_steps, (b,), generator=generator)  # (B,) step index
        t = self.step_times()[j]  # (B,)
        x = (1 - t[:, None]) * noise + t[:, None] * data  # (B, P)
        v = self.velocity(x, t, codes, j // self.cfg.steps_per_group)
        flow = F.mse_loss(v, data - noise)
        restarted = self.quantizer.update(z, idx, generator)
        loss = flow + self.cfg.beta * commit
        info = {"flow": flow.item(), "commit": commit.item(), "restarted": float(restarted)}
        return loss, info

    def fit(
        self,
        images: Tensor,
        *,
        steps: int,
        batch_size: int = 128,
        lr: float = 2e-3,
        generator: torch.Generator,
        progress: Progress | None = None,
    ) -> dict[str, float]:
        """Adam on the encoder, decoder and absent vectors for ``steps`` batches drawn by
        ``generator``; returns :meth:`evaluate` on (up to 2048 of) ``images``."""
        return fit_autoencoder(
            self,
            images,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            generator=generator,
            progress=progress,
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What :meth:`fit` trains: the encoder, the decoder and the absent-group vectors
        (the codebook learns by EMA inside :meth:`loss`)."""
        return [*self.encoder.parameters(), *self.decoder.parameters(), self.absent]

    @torch.no_grad()
    def evaluate(self, images: Tensor) -> dict[str, float]:
        """Full-decode MSE and PSNR, preview MSE after each group, codebook usage."""
        tokens = self.encode(images)
        previews = self.previews(tokens).clamp(0, 1)  # (G, B, C, S, S)
        errors = ((previews - images[None]) ** 2).flatten(1).mean(1)  # (G,)
        mse = float(errors[-1])
        return {
            "mse": mse,
            "psnr": psnr(mse),
            **{f"preview_mse_{k}": float(e) for k, e in enumerate(errors)},
            **code_usage(tokens, self.vocab_size),
        }

    # -- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        write_tokenizer(
            path, name=self.name, config=self.cfg.model_dump(), tensors=self.state_dict()
        )

    @classmethod
    def load(cls, path: str | Path) -> DARTokenizer:
        config, tensors = read_tokenizer(path, name=cls.name)
        tokenizer: DARTokenizer = construct(cls, config, path)
        load_state(tokenizer, tensors, path)
        return tokenizer.eval()


class DARStream:
    """The decoder fed one token group at a time: ``feed(group)`` (B, m) runs that group's
    ``s`` Euler steps and returns the preview (B, C, S, S). It holds the state ``x_t`` and
    the codes of the groups fed so far; nothing of a later group exists when it runs."""

    def __init__(self, tokenizer: DARTokenizer, batch: int, noise: Tensor | None = None) -> None:
        tok = tokenizer
        if not bool(tok.quantizer.initialized):
            raise InputError("DARTokenizer: not fitted; call fit() first")
        if noise is None:
            noise = tok.noise(batch)
        if noise.shape != (batch, tok.pixels):
            raise InputError(f"noise must be ({batch}, {tok.pixels}); got {tuple(noise.shape)}")
        self.tok, self.batch = tok, batch
        self.x = noise.to(tok.freqs.device, torch.float32)  # (B, P) the flow's state
        self.codes = tok.absent.detach()[None].expand(batch, -1, -1).clone()  # (B, N, D)
        self.fed = 0  # groups consumed

    @torch.no_grad()
    def feed(self, group: Tensor) -> Tensor:
        """Consume group ``self.fed`` (B, m) of token ids; the preview after it."""
        tok, k, m = self.tok, self.fed, self.tok.group_size
        if k >= tok.groups:
            raise InputError(f"all {tok.groups} groups were fed; this stream is finished")
        if not isinstance(group, Tensor) or group.dtype != torch.long:
            raise InputError(f"group {k}: token ids must be a long tensor ({self.batch}, {m})")
        if tuple(group.shape) != (self.batch, m):
            raise InputError(
                f"group {k} must have shape ({self.batch}, {m}) (m = tokens_per_group); "
                f"got {tuple(group.shape)}"
            )
        check_tokens(group, m, tok.vocab_size, f"group {k}")
        self.codes[:, k * m : (k + 1) * m] = tok.quantizer.lookup(group.to(self.x.device))
        s, times = tok.cfg.steps_per_group, tok.step_times().tolist()
        stage = torch.full((self.batch,), k, dtype=torch.long, device=self.x.device)
        preview = self.x
        for j in range(k * s, (k + 1) * s):
            t = torch.full((self.batch,), times[j], device=self.x.device)
            v = tok.velocity(self.x, t, self.codes, stage)  # (B, P)
            preview = self.x + (1 - times[j]) * v  # the flow's estimate of the data
            self.x = self.x + (times[j + 1] - times[j]) * v  # one Euler step
        self.fed += 1
        image = (preview + 1) / 2  # [-1, 1] -> [0, 1]
        return image.view(self.batch, tok.channels, tok.image_size, tok.image_size)

    @property
    def done(self) -> bool:
        return self.fed == self.tok.groups


@torch.no_grad()
def stream_samples(
    model: ClassConditionalStepModel,
    tokenizer: DARTokenizer,
    labels: Tensor,
    *,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Sample images of classes ``labels`` (B,) with ``model`` (next-token prediction over
    the N tokens, raster order) one group at a time, yielding after group k the tokens so
    far (B, (k + 1) m) and the preview (B, C, S, S) decoded from them.

    Group k is drawn by ar-core's step loop under the raster plan of its first (k + 1) m
    positions, the earlier groups given as the prompt (one prefill call): the model is
    causal, so these are the logits, and with one ``generator`` the draws, of sampling the
    whole sequence at once (constant CFG; tested equal to :func:`generate_images`)."""
    from ar_core import registry
    from ar_core.protocols import LogitsTransform
    from ar_core.steps import ClassifierFreeGuidance, generate_steps

    if model.vocab_size != tokenizer.vocab_size or model.max_tokens < tokenizer.token_count:
        raise ConfigError(
            f"the step model ({model.vocab_size} ids, {model.max_tokens} tokens) does not fit "
            f"the D-AR tokenizer ({tokenizer.vocab_size} ids, {tokenizer.token_count} tokens)"
        )
    labels = labels.to(device=model.device, dtype=torch.long)
    b, m = labels.shape[0], tokenizer.group_size
    rows = labels
    if cfg_scale != 1.0:  # [cond; uncond]: the null class runs alongside
        rows = torch.cat([labels, torch.full_like(labels, model.null_class)])
    condition = model.class_tokens(rows)[:, None]  # (R, 1)
    stream = tokenizer.stream(b, noise)
    tokens = torch.empty((b, 0), dtype=torch.long, device=model.device)
    raster = registry.orderings.get("raster")()
    for k in range(tokenizer.groups):
        plan = raster.plan(((k + 1) * m,))
        transforms: list[LogitsTransform] = []
        if cfg_scale != 1.0:
            transforms.append(ClassifierFreeGuidance(cfg_scale, plan.num_steps))
        prompt = torch.cat([tokens, tokens.new_zeros(b, m)], dim=1)  # (B, (k + 1) m)
        out = generate_steps(
            model.step_model,
            plan,
            batch_size=b,
            condition=condition,
            prompt=prompt if k else None,
            given_steps=k * m,
            transforms=transforms,
            temperature=temperature,
            generator=generator,
            vocab_size=model.vocab_size,
        )
        tokens = out.tokens  # (B, (k + 1) m)
        yield tokens, stream.feed(tokens[:, k * m :])
