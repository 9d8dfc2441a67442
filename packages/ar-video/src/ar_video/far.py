"""FAR: next-frame prediction with frame-causal attention and per-frame flow matching.

Gu, Mao and Shou, "Long-Context Autoregressive Video Modeling with Next-Frame Prediction"
(2025, arXiv:2503.19325). What is implemented here, on :class:`~ar_video.model.
FrameTransformer`:

* **frame-causal attention** over latent patches (``masks.block_causal`` by frame);
* **flow matching per frame with independent timesteps**: every frame of a training clip
  is noised to its own t ~ U(0, 1) (x_t = t x + (1 - t) eps) and the model predicts the
  velocity x - eps of every frame, seeing only (noisy) earlier frames;
* **stochastic clean context**: each frame is instead given clean (with the "clean"
  embedding, as context frames are at inference) with probability ``clean_prob`` (the
  paper's 10%) and left out of the loss;
* **long/short-term context**: the ``window`` most recent frames (the one being denoised
  included) are full-resolution tokens; older frames are coarse tokens (``long_patch``
  patches, their own embedder), always clean. Training clips start with ``n_long`` coarse
  frames (drawn per batch, up to ``max_long``);
* **KV cache written on each frame's first denoising step**: generation of frame f runs
  its first Euler step over [new coarse frames ; the short window ; noisy frame f], keeps
  the keys/values of everything but the noisy frame, and runs its other steps on frame
  f's tokens alone over that cache. Coarse frames attend only to older coarse frames, so
  their entries stay valid for the whole rollout; the short window's are rewritten at
  the next frame (the window slides).

Notation: B clips, F frames, C, h, w a latent, n tokens a frame, K Euler steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_video.model import FrameTransformer, frame_causal

__all__ = ["FarLoss", "far_generate", "far_velocity", "flow_targets"]


def flow_targets(z: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Rectified-flow interpolation (Lipman et al. 2023, arXiv:2210.02747; Liu et al. 2023,
    arXiv:2209.03003): x_t = t z + (1 - t) eps and the velocity target z - eps.
    ``z``, ``eps``: (B, F, C, h, w); ``t``: (B, F)."""
    tt = t[..., None, None, None]
    return tt * z + (1 - tt) * eps, z - eps


def layout(long_frames: int, first_fine: int, fine_frames: int, model: FrameTransformer) -> Tensor:
    """Frame index of every token of [coarse frames 0..long_frames-1 ; fine frames
    first_fine..first_fine+fine_frames-1]: (N,) long, non-decreasing."""
    coarse = torch.arange(long_frames).repeat_interleave(model.n_long)
    fine = torch.arange(first_fine, first_fine + fine_frames).repeat_interleave(model.n)
    return torch.cat([coarse, fine])


def far_velocity(
    model: FrameTransformer,
    x: Tensor,
    t: Tensor,
    clean: Tensor,
    long: Tensor | None = None,
    *,
    first_frame: int = 0,
) -> Tensor:
    """The head's output (clean latent or velocity, :meth:`FrameTransformer.predict`) for
    every fine frame, one forward without a cache.

    ``x`` (B, F, C, h, w): fine frames (noisy at ``t`` (B, F), or clean where ``clean``
    (B, F)); ``long`` (B, L, C, h, w): clean coarse frames before them. Frames are
    numbered from ``first_frame`` (their RoPE positions). Returns (B, F, C, h, w)."""
    model.check_latents(x, "frames")
    parts, n_long = [], 0
    if long is not None and long.shape[1] > 0:
        model.check_latents(long, "long-term frames")
        parts.append(model.embed_long(long))
        n_long = long.shape[1]
    parts.append(model.embed_fine(x, t, clean))
    index = layout(n_long, first_frame + n_long, x.shape[1], model) + first_frame
    index[: n_long * model.n_long] = torch.arange(
        first_frame, first_frame + n_long
    ).repeat_interleave(model.n_long)
    hidden = model.run(torch.cat(parts, dim=1), index, frame_causal(index))
    return model.predict(hidden[:, n_long * model.n_long :], t)


@dataclass
class FarLoss:
    """The Trainer's ``loss_fn`` for FAR on latent clips (B, F, C, h, w).

    The last ``window`` frames of each clip are fine frames with independent times
    (``times="uniform"``) or AR-Diffusion's FoPP times (``times="fopp"``, see
    :mod:`ar_video.schedulers`); up to ``max_long`` frames before them are coarse
    long-term context (the count drawn uniformly per batch; 0 when ``max_long`` = 0)."""

    window: int
    max_long: int = 0
    clean_prob: float = 0.1
    times: str = "uniform"
    fopp_steps: int = 20

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"FAR needs window >= 2 frames (context + target), got {self.window}")
        if not 0 <= self.clean_prob < 1:
            raise ConfigError(f"clean_prob must lie in [0, 1), got {self.clean_prob}")
        if self.times not in ("uniform", "fopp"):
            raise ConfigError(f"times must be 'uniform' or 'fopp', got {self.times!r}")

    def __call__(self, model: torch.nn.Module, z: Tensor) -> Tensor:
        assert isinstance(model, FrameTransformer)
        B, total = z.shape[:2]
        if total < self.window + self.max_long:
            raise InputError(
                f"training clips have {total} frames but window {self.window} + max_long "
                f"{self.max_long} = {self.window + self.max_long} are needed"
            )
        n_long = int(torch.randint(0, self.max_long + 1, ())) if self.max_long else 0
        start = int(torch.randint(0, total - self.window - n_long + 1, ()))
        long = z[:, start : start + n_long]
        x1 = z[:, start + n_long : start + n_long + self.window]
        if self.times == "fopp":
            from ar_video.schedulers import fopp_sample

            steps = fopp_sample(B, self.window, self.fopp_steps)  # (B, F) noise steps, non-decr.
            t = 1.0 - steps.float() / self.fopp_steps  # cleanliness: non-increasing in f
        else:
            t = torch.rand(B, self.window)
        clean = torch.rand(B, self.window) < self.clean_prob
        eps = torch.randn_like(x1)
        xt, _ = flow_targets(x1, t, eps)
        xt = torch.where(clean[..., None, None, None], x1, xt)
        out = far_velocity(model, xt, t, clean, long, first_frame=start)
        err = F.mse_loss(out, model.target(x1, eps), reduction="none").mean(dim=(2, 3, 4))  # (B, F)
        weight = (~clean).float()
        return (err * weight).sum() / weight.sum().clamp_min(1.0)


@torch.no_grad()
def far_generate(
    model: FrameTransformer,
    context: Tensor,
    n_new: int,
    *,
    steps: int = 10,
    window: int = 4,
    long_context: bool = True,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue latent clips ``context`` (B, Fc, C, h, w) by ``n_new`` frames, each
    denoised with ``steps`` Euler steps of the flow from noise (t = 0) to data (t = 1).

    Frame f sees the ``window - 1`` frames before it at full resolution and, with
    ``long_context``, every older frame as coarse tokens. ``use_cache`` runs the first step
    of a frame over the context and the others over the KV cache (same result as without
    the cache, within float rounding). Returns the new frames (B, n_new, C, h, w)."""
    model.check_latents(context, "context")
    if context.shape[1] < 1:
        raise InputError("FAR needs at least one context frame")
    if n_new < 1 or steps < 1 or window < 2:
        raise ConfigError(
            f"need n_new >= 1, steps >= 1, window >= 2; got {n_new}, {steps}, {window}"
        )
    B, fc = context.shape[:2]
    shape = context.shape[2:]
    frames = [context[:, i] for i in range(fc)]
    n, nl = model.n, model.n_long
    total = fc + n_new
    cache = None
    if use_cache:
        cache = model.new_cache(B, (total * nl if long_context else 0) + window * n)
    coarse_cached = 0  # frames whose coarse entries are committed in the cache
    ones = torch.ones(B, 1, device=context.device)
    noisy_flag = torch.zeros(B, 1, dtype=torch.bool, device=context.device)
    for f in range(fc, total):
        lo = max(0, f - (window - 1))  # first full-resolution frame
        n_coarse = lo if long_context else 0
        index = torch.cat(
            [
                torch.arange(n_coarse).repeat_interleave(nl),
                torch.arange(lo, f + 1).repeat_interleave(n),
            ]
        )
        mask = frame_causal(index)
        win = torch.stack(frames[lo:f], dim=1) if f > lo else None  # (B, W, C, h, w)
        x = torch.randn((B, 1, *shape), generator=generator).to(context.device)
        if cache is not None:
            cache.crop(coarse_cached * nl)
        for k in range(steps):
            t = ones * (k / steps)
            temb = model.time_features(t)  # once per step: the embedding and the head
            noisy = model.embed_fine(x, t, noisy_flag, temb)
            if cache is None or k == 0:
                first = coarse_cached if cache is not None else 0
                parts = []
                if n_coarse > first:
                    parts.append(model.embed_long(torch.stack(frames[first:n_coarse], dim=1)))
                if win is not None:
                    parts.append(
                        model.embed_fine(
                            win, ones.expand(B, win.shape[1]), ones.expand(B, win.shape[1]).bool()
                        )
                    )
                parts.append(noisy)
                new_index = index[first * nl :]
                hidden = model.run(torch.cat(parts, dim=1), new_index, mask, cache)
                if cache is not None:
                    cache.commit(new_index.numel() - n)  # all but the noisy frame
                    coarse_cached = n_coarse
            else:
                hidden = model.run(noisy, index[-n:], mask, cache)
            x = x + model.to_velocity(model.predict(hidden[:, -n:], t, temb), x, t) / steps
        frames.append(x[:, 0])
    return torch.stack(frames[fc:], dim=1)
