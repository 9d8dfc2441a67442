"""AR-Diffusion's timestep schedulers: FoPP for training, AD for inference.

Sun et al., "AR-Diffusion: Asynchronous Video Generation with Auto-Regressive Diffusion"
(CVPR 2025, arXiv:2503.07418). Frames carry *different* diffusion times, constrained to be
non-decreasing along the clip: an earlier frame is never noisier than a later one.
Times are integer noise steps 0..S (0 = clean, S = pure noise); the flow-matching models
of this package use t = 1 - step / S.

* **FoPP** (frame-oriented probability propagation), training: pick a frame f uniformly
  and its step uniformly in 0..S, then draw the earlier frames backwards and the later
  frames forwards, each step weighted by the number of non-decreasing ways to complete the
  rest of the clip. Those numbers come from a dynamic program: ``path_counts(F, S)[k, v]``
  is the number of non-decreasing sequences of length k with values in 0..v
  (``N[0, v] = 1``, ``N[k, v] = N[k, v - 1] + N[k - 1, v]``). Given (f, step), every
  non-decreasing clip with that step at f is then equally likely.
* **AD** (asynchronous diffusion), inference: frame i starts ``offset`` iterations after
  frame i - 1 and takes one step per iteration, so a clip of F frames takes
  S + (F - 1) offset iterations; offset 0 is synchronous diffusion, offset S fully
  autoregressive. :func:`ad_schedule` returns the steps remaining for every frame before
  every iteration, :func:`ad_generate` runs it with a FAR model (which was trained with
  independent per-frame times, so it accepts any such schedule).

:func:`check_schedule` refuses a schedule that breaks the constraints (a later frame
cleaner than an earlier one, a step that adds noise, values outside 0..S).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError

__all__ = [
    "ad_generate",
    "ad_schedule",
    "check_schedule",
    "fopp_sample",
    "path_counts",
]


def path_counts(frames: int, steps: int) -> list[list[int]]:
    """``N[k][v]`` for k in 0..frames, v in 0..steps: the number of non-decreasing
    sequences of length k with values in 0..v (exact Python integers)."""
    if frames < 1 or steps < 1:
        raise ConfigError(f"path_counts needs frames >= 1 and steps >= 1, got {frames}, {steps}")
    table = [[1] * (steps + 1)]
    for k in range(1, frames + 1):
        row = [0] * (steps + 1)
        for v in range(steps + 1):
            row[v] = (row[v - 1] if v else 0) + table[k - 1][v]
        table.append(row)
    return table


def _draw(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of ``weights`` (B, V) >= 0, proportional to the weights."""
    return torch.multinomial(weights, 1, generator=generator)[:, 0]


def fopp_sample(
    batch: int, frames: int, steps: int, generator: torch.Generator | None = None
) -> Tensor:
    """FoPP noise steps (batch, frames) long in 0..steps, non-decreasing along frames."""
    if batch < 1:
        raise ConfigError(f"fopp_sample needs batch >= 1, got {batch}")
    counts = torch.tensor(path_counts(frames, steps), dtype=torch.float64)  # (F + 1, S + 1)
    values = torch.arange(steps + 1)
    out = torch.empty(batch, frames, dtype=torch.long)
    f = torch.randint(0, frames, (batch,), generator=generator)
    t_f = torch.randint(0, steps + 1, (batch,), generator=generator)
    rows = torch.arange(batch)
    out[rows, f] = t_f
    # backwards: frame i <= frame i + 1, weighted by the i frames before it
    for i in range(frames - 2, -1, -1):
        active = i < f
        upper = out[:, i + 1].clamp(0, steps)
        w = counts[i][None, :].expand(batch, -1) * (values[None, :] <= upper[:, None])
        drawn = _draw(torch.where(active[:, None], w, torch.ones_like(w)), generator)
        out[:, i] = torch.where(active, drawn, out[:, i])
    # forwards: frame i >= frame i - 1, weighted by the frames - 1 - i frames after it
    for i in range(1, frames):
        active = i > f
        lower = out[:, i - 1].clamp(0, steps)
        w = counts[frames - 1 - i].flip(0)[None, :].expand(batch, -1) * (
            values[None, :] >= lower[:, None]
        )
        drawn = _draw(torch.where(active[:, None], w, torch.ones_like(w)), generator)
        out[:, i] = torch.where(active, drawn, out[:, i])
    return out


def check_schedule(levels: Tensor, steps: int) -> Tensor:
    """``levels`` itself when it is a valid asynchronous schedule: an (R, F) integer tensor
    of noise steps in 0..steps, non-decreasing along frames in every row (earlier frames
    never noisier) and non-increasing down the rows (denoising never adds noise); else a
    ConfigError naming the first bad entry."""
    if not isinstance(levels, Tensor) or levels.dim() != 2 or levels.dtype.is_floating_point:
        got = tuple(levels.shape) if isinstance(levels, Tensor) else type(levels).__name__
        raise ConfigError(f"a schedule is an (iterations, frames) integer tensor, got {got}")
    lo, hi = int(levels.min()), int(levels.max())
    if lo < 0 or hi > steps:
        raise ConfigError(f"schedule values must lie in 0..{steps}, got {lo}..{hi}")
    bad = (levels[:, 1:] < levels[:, :-1]).nonzero()
    if bad.numel():
        r, i = (int(v) for v in bad[0])
        raise ConfigError(
            f"schedule is not monotone across frames: row {r} has frame {i + 1} at step "
            f"{int(levels[r, i + 1])} below frame {i} at {int(levels[r, i])}; later frames must "
            f"be at least as noisy as earlier ones"
        )
    up = (levels[1:] > levels[:-1]).nonzero()
    if up.numel():
        r, i = (int(v) for v in up[0])
        raise ConfigError(
            f"schedule adds noise: frame {i} goes from step {int(levels[r, i])} to "
            f"{int(levels[r + 1, i])} between rows {r} and {r + 1}; steps must not increase"
        )
    return levels


def ad_schedule(frames: int, steps: int, offset: int) -> Tensor:
    """AD's schedule: (S + (F - 1) offset + 1, F) long; row k = the noise steps left for
    every frame before iteration k (row 0 all ``steps``, the last row all 0)."""
    if frames < 1 or steps < 1:
        raise ConfigError(f"ad_schedule needs frames >= 1 and steps >= 1, got {frames}, {steps}")
    if not 0 <= offset <= steps:
        raise ConfigError(
            f"ad_schedule: offset must lie in 0..steps={steps} (0 synchronous, {steps} fully "
            f"autoregressive), got {offset}"
        )
    iterations = steps + (frames - 1) * offset
    k = torch.arange(iterations + 1)[:, None]
    i = torch.arange(frames)[None, :]
    return steps - (k - i * offset).clamp(0, steps)


@torch.no_grad()
def ad_generate(
    model: torch.nn.Module,
    context: Tensor,
    n_new: int,
    *,
    steps: int = 10,
    offset: int = 1,
    schedule: Tensor | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Generate ``n_new`` frames after ``context`` (B, Fc, C, h, w) with a FAR model under
    the AD schedule (or a ``schedule`` passed in, checked first): every iteration is one
    network call, and the frames whose step changes take one Euler step. Returns (new
    frames (B, n_new, C, h, w), network calls).

    Without the cache every call is a forward over [context ; all new frames]. With
    ``use_cache`` the context and every finished frame (step 0, clean from then on) are
    encoded once, as clean frames, and committed to a KV cache; a call then runs only the
    unfinished frames up to the last one that moves (under frame-causal attention the
    frames after it cannot change the moving ones). The same frames come out, within
    float rounding."""
    from ar_video.far import far_velocity
    from ar_video.model import FrameTransformer, frame_causal

    assert isinstance(model, FrameTransformer)
    model.check_latents(context, "context")
    levels = ad_schedule(n_new, steps, offset) if schedule is None else schedule
    check_schedule(levels, steps)
    if levels.shape[1] != n_new:
        raise InputError(f"the schedule has {levels.shape[1]} frames but n_new={n_new}")
    if int(levels[0].min()) != steps or int(levels[-1].max()) != 0:
        raise ConfigError("a schedule must start with every frame at pure noise and end clean")
    B, fc = context.shape[:2]
    n = model.n
    x = torch.randn((B, n_new, *context.shape[2:]), generator=generator).to(context.device)
    cache = model.new_cache(B, (fc + n_new) * n) if use_cache else None
    index = torch.arange(fc + n_new).repeat_interleave(n)  # frame of every token
    mask = frame_causal(index)
    committed = 0  # frames (context first) whose keys/values are in the cache
    calls = 0
    for r in range(levels.shape[0] - 1):
        now, nxt = levels[r], levels[r + 1]
        moving = nxt < now  # (F,)
        if not bool(moving.any()):
            continue
        if cache is None:
            t_new = (1.0 - now.float() / steps)[None].expand(B, n_new)
            t = torch.cat([torch.ones(B, fc), t_new], dim=1)
            clean = torch.cat(
                [torch.ones(B, fc, dtype=torch.bool), (now == 0)[None].expand(B, n_new)], 1
            )
            out = far_velocity(model, torch.cat([context, x], dim=1), t, clean)[:, fc:]
            v = model.to_velocity(out, x, t[:, fc:])
        else:
            done = fc + int((now == 0).sum())  # frames before it are clean (non-decreasing)
            last = fc + int(moving.nonzero().max()) + 1  # frames after the last mover: unused
            allx = torch.cat([context, x], dim=1)
            t = torch.cat([torch.ones(B, fc), (1.0 - now.float() / steps)[None].expand(B, -1)], 1)
            parts = []
            if done > committed:  # newly finished frames: clean context from now on
                ones = torch.ones(B, done - committed)
                parts.append(model.embed_fine(allx[:, committed:done], ones, ones.bool()))
            t_run = t[:, done:last]
            parts.append(
                model.embed_fine(allx[:, done:last], t_run, torch.zeros_like(t_run).bool())
            )
            hidden = model.run(
                torch.cat(parts, dim=1), index[committed * n : last * n], mask, cache
            )
            cache.commit((done - committed) * n)
            committed = done
            out = model.predict(hidden[:, -(last - done) * n :], t_run)
            v = torch.zeros_like(x)
            v[:, done - fc : last - fc] = model.to_velocity(out, x[:, done - fc : last - fc], t_run)
        calls += 1
        dt = ((now - nxt).float() / steps)[None, :, None, None, None]
        x = x + v * dt
    return x, calls
