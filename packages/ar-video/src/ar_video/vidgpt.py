"""ViD-GPT: GPT-style video diffusion with causal temporal attention and frame-as-prompt.

Gao et al., "ViD-GPT: Introducing GPT-style Autoregressive Generation in Video Diffusion
Models" (2024, arXiv:2406.10981). On the same :class:`~ar_video.model.FrameTransformer`
as FAR (frame-causal attention: a frame sees itself and earlier frames only):

* **frame-as-prompt**: a training clip of ``window`` frames is split at a random prompt
  length p in [1, window - 1]; the p prompt frames are clean (the "clean" embedding),
  concatenated with the rest on the time axis and left out of the loss; the other frames
  share one diffusion time t (a chunk is denoised jointly, as a video diffusion model does);
* generation goes chunk by chunk: ``chunk`` new frames are denoised together given the
  last ``window - chunk`` frames as the prompt;
* **KV cache over prompt frames**: the prompt is clean and, under causal attention, never
  sees the noisy chunk, so its keys/values are computed once per chunk (the first Euler
  step) and every later step runs only the chunk's tokens over the cache.

(The paper's backbone factorises spatial and causal temporal attention; here one joint
frame-causal attention plays both roles.)

Notation: B clips, F frames, C, h, w a latent, n tokens a frame, K Euler steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_video.far import flow_targets
from ar_video.model import FrameTransformer, frame_causal

__all__ = ["VidGptLoss", "vidgpt_generate"]


def _index(first: int, frames: int, n: int) -> Tensor:
    return torch.arange(first, first + frames).repeat_interleave(n)


def vidgpt_velocity(
    model: FrameTransformer, x: Tensor, t: Tensor, clean: Tensor, first_frame: int = 0
) -> Tensor:
    """The head's output for every frame of ``x`` (B, F, C, h, w) (uncached, one forward)."""
    model.check_latents(x, "frames")
    index = _index(first_frame, x.shape[1], model.n)
    hidden = model.run(model.embed_fine(x, t, clean), index, frame_causal(index))
    return model.predict(hidden, t)


@dataclass
class VidGptLoss:
    """The Trainer's ``loss_fn`` for ViD-GPT on latent clips (B, F, C, h, w)."""

    window: int

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"ViD-GPT needs window >= 2 frames, got {self.window}")

    def __call__(self, model: torch.nn.Module, z: Tensor) -> Tensor:
        assert isinstance(model, FrameTransformer)
        B, total = z.shape[:2]
        if total < self.window:
            raise InputError(f"training clips have {total} frames, fewer than window={self.window}")
        start = int(torch.randint(0, total - self.window + 1, ()))
        x1 = z[:, start : start + self.window]
        p = torch.randint(1, self.window, (B, 1))  # prompt length per clip
        prompt = torch.arange(self.window)[None, :] < p  # (B, F)
        t = torch.rand(B, 1).expand(B, self.window)  # one time for the whole chunk
        eps = torch.randn_like(x1)
        xt, _ = flow_targets(x1, t, eps)
        xt = torch.where(prompt[..., None, None, None], x1, xt)
        out = vidgpt_velocity(model, xt, t, prompt, first_frame=start)
        err = F.mse_loss(out, model.target(x1, eps), reduction="none").mean(dim=(2, 3, 4))  # (B, F)
        weight = (~prompt).float()
        return (err * weight).sum() / weight.sum()


@torch.no_grad()
def vidgpt_generate(
    model: FrameTransformer,
    context: Tensor,
    n_new: int,
    *,
    steps: int = 10,
    window: int = 4,
    chunk: int = 1,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue latent clips ``context`` (B, Fc, C, h, w) by ``n_new`` frames, ``chunk`` at
    a time, each chunk prompted by the ``window - chunk`` frames before it. Returns
    (B, n_new, C, h, w)."""
    model.check_latents(context, "context")
    if not 1 <= chunk < window:
        raise ConfigError(f"need 1 <= chunk < window, got chunk={chunk}, window={window}")
    if n_new < 1 or steps < 1:
        raise ConfigError(f"need n_new >= 1 and steps >= 1, got {n_new}, {steps}")
    B, fc = context.shape[:2]
    n = model.n
    frames = [context[:, i] for i in range(fc)]
    cache = model.new_cache(B, window * n) if use_cache else None
    f = fc
    while f < fc + n_new:
        g = min(chunk, fc + n_new - f)
        lo = max(0, f - (window - chunk))
        prompt = torch.stack(frames[lo:f], dim=1)  # (B, P, C, h, w)
        P = prompt.shape[1]
        index = _index(lo, P + g, n)
        mask = frame_causal(index)
        x = torch.randn((B, g, *context.shape[2:]), generator=generator).to(context.device)
        clean_p = torch.ones(B, P, dtype=torch.bool, device=context.device)
        if cache is not None:
            cache.reset()
        for k in range(steps):
            t = torch.full((B, g), k / steps, device=context.device)
            temb = model.time_features(t)  # once per step: the embedding and the head
            noisy = model.embed_fine(x, t, torch.zeros_like(clean_p[:, :1]).expand(B, g), temb)
            if cache is None or k == 0:
                embeds = torch.cat(
                    [model.embed_fine(prompt, clean_p.float(), clean_p), noisy], dim=1
                )
                hidden = model.run(embeds, index, mask, cache)
                if cache is not None:
                    cache.commit(P * n)  # the prompt's keys/values; the chunk stays pending
            else:
                hidden = model.run(noisy, index[P * n :], mask, cache)
            x = x + model.to_velocity(model.predict(hidden[:, -g * n :], t, temb), x, t) / steps
        frames.extend(x.unbind(1))
        f += g
    return torch.stack(frames[fc:], dim=1)
