"""FAR and ViD-GPT against copy-last-frame on moving digits; long-term context; KV cache.

One run of ``video-moving-digits``'s pieces at the chosen size (the recipe's default
config unless ``--quick``): the autoencoder, FAR and ViD-GPT trained with ar-core's
Trainer for ``--steps`` updates each, then on the held-out clips:

* PSNR and SSIM (and MSE) by horizon 1..10 for every model (its 10-step sample and its
  point forecast, one Euler step), copy-last-frame and the autoencoder's reconstruction of
  the true frames (the floor of a latent model); one-sided exact sign tests of each
  against copy-last at horizon 1; copy-last through the autoencoder;
* FAR's error at the last horizon with and without its long-term (coarse) context;
* DiCoDe: the deep-token round trip (4 frames -> 4 deep tokens of 16 values -> the
  diffusion decoder; PSNR/SSIM of the rebuilt frames, the compression against the pixels)
  and the held-out NLL of the AR model over the deep tokens of consecutive chunks;
* frames per second of FAR and ViD-GPT rollouts of ``--rollout-frames`` new frames (16, 32)
  of ``--rollout-clips`` clips (16) with and without the KV cache, on the same noise
  (outputs compared: max abs difference), one warm-up call first, the best of
  ``--repeats`` interleaved timings each, in CPU seconds of the (single-threaded) process
  and in wall seconds.

Run: ``uv run ar bench video -- [--quick] [--out PATH] [--steps N]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from ar_core.trainer import TrainConfig, Trainer
from ar_video.autoencoder import FrameAutoencoder, train_autoencoder
from ar_video.far import far_generate
from ar_video.metrics import by_horizon, per_clip_metrics, sign_test
from ar_video.recipes.moving_digits import (
    LABELS,
    VideoMovingDigitsConfig,
    _clips,
    evaluate,
    train_model,
)
from ar_video.vidgpt import vidgpt_generate


def _speed(
    models: dict[str, Any],
    latents: torch.Tensor,
    n_new: int,
    config: VideoMovingDigitsConfig,
    repeats: int,
) -> dict[str, Any]:
    """Rollouts of ``n_new`` frames after ``latents`` with and without the KV cache: the
    best of ``repeats`` timings, in process CPU seconds (one thread: what the rollout
    costs, whatever else the machine runs) and in wall seconds; outputs compared."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        fn = far_generate if name == "far" else vidgpt_generate
        cpu: dict[bool, float] = {}
        wall: dict[bool, float] = {}
        frames: dict[bool, torch.Tensor] = {}

        def roll(n: int, use_cache: bool, fn: Any = fn, model: Any = model) -> torch.Tensor:
            gen = torch.Generator().manual_seed(0)
            return fn(  # type: ignore[no-any-return]
                model,
                latents,
                n,
                steps=config.sample_steps,
                window=config.window,
                use_cache=use_cache,
                generator=gen,
            )

        roll(2, True)  # warm-up
        cpu = {True: float("inf"), False: float("inf")}
        wall = dict(cpu)
        for _ in range(repeats):
            for use_cache in (True, False):  # interleaved: both see the same machine load
                c0, w0 = time.process_time(), time.perf_counter()
                frames[use_cache] = roll(n_new, use_cache)
                cpu[use_cache] = min(cpu[use_cache], time.process_time() - c0)
                wall[use_cache] = min(wall[use_cache], time.perf_counter() - w0)
        n_frames = latents.shape[0] * n_new
        out[name] = {
            "clips": latents.shape[0],
            "frames_per_cpu_s_cached": n_frames / cpu[True],
            "frames_per_cpu_s_uncached": n_frames / cpu[False],
            "speedup_cpu": cpu[False] / cpu[True],
            "speedup_wall": wall[False] / wall[True],
            "max_abs_diff": float((frames[True] - frames[False]).abs().max()),
        }
    return out


def dicode_round_trip(
    ae: FrameAutoencoder,
    train: torch.Tensor,
    test: torch.Tensor,
    steps: int,
    seed: int,
    n_tokens: int = 4,
) -> dict[str, Any]:
    """Train DiCoDe's codec and AR model on 4-frame chunks; the round trip and the NLL."""
    from ar_video.dicode import DeepTokenAR, DeepTokenCodec

    frames = 4
    usable = (train.shape[1] // frames) * frames

    def chunks(clips: torch.Tensor) -> torch.Tensor:  # (N, F, ...) -> (N * F/4, 4, ...)
        z = ae.encode(clips[:, :usable])
        return z.reshape(-1, frames, *z.shape[2:])

    z_train, z_test = chunks(train), chunks(test)
    torch.manual_seed(seed)
    codec = DeepTokenCodec(
        latent_channels=z_train.shape[2], latent_size=z_train.shape[-1], n_tokens=n_tokens
    )
    cfg = TrainConfig.build(
        steps=steps,
        batch_size=16,
        lr=2e-3,
        weight_decay=0.0,
        warmup_steps=max(1, steps // 20),
        seed=seed,
        progress=False,
    )

    def codec_data(gen: torch.Generator, b: int) -> torch.Tensor:
        return z_train[torch.randint(0, z_train.shape[0], (b,), generator=gen)]

    start = time.perf_counter()
    Trainer(codec, lambda m, z: m.loss(z), codec_data, cfg).train()
    codec.eval()
    with torch.no_grad():
        tokens_test = codec.encode(z_test)
        rebuilt = codec.decode(tokens_test, steps=10, generator=torch.Generator().manual_seed(seed))
    n_clips = test.shape[0]
    truth = test[:, :usable].reshape(-1, frames, *test.shape[2:])
    m = by_horizon(per_clip_metrics(ae.decode(rebuilt), truth))
    ae_m = by_horizon(per_clip_metrics(ae.decode(z_test), truth))
    # AR over the deep tokens of the consecutive chunks of a clip
    with torch.no_grad():
        seq_train = codec.encode(z_train).reshape(train.shape[0], -1, codec.token_dim)
        seq_test = tokens_test.reshape(n_clips, -1, codec.token_dim)
    torch.manual_seed(seed)
    ar = DeepTokenAR(token_dim=codec.token_dim, max_tokens=seq_train.shape[1])

    def ar_data(gen: torch.Generator, b: int) -> torch.Tensor:
        return seq_train[torch.randint(0, seq_train.shape[0], (b,), generator=gen)]

    Trainer(ar, lambda m, x: m.nll(x).mean(), ar_data, cfg).train()
    ar.eval()
    with torch.no_grad():
        nll = float(ar.nll(seq_test).mean())
    pixels = frames * test.shape[-1] ** 2
    return {
        "frames_per_chunk": frames,
        "deep_tokens": codec.n_tokens,
        "token_dim": codec.token_dim,
        "compression_vs_pixels": pixels / (codec.n_tokens * codec.token_dim),
        "round_trip_psnr": sum(m["psnr"]) / frames,
        "round_trip_ssim": sum(m["ssim"]) / frames,
        "autoencoder_psnr": sum(ae_m["psnr"]) / frames,
        "ar_nll_nats_per_token": nll,
        "ar_nll_nats_per_value": nll / codec.token_dim,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and few updates")
    parser.add_argument("--out", default=".bench/video.json")
    parser.add_argument("--steps", type=int, default=None, help="updates per model")
    parser.add_argument("--rollout-frames", default="16,32", help="comma-separated lengths")
    parser.add_argument("--rollout-clips", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dicode-steps", type=int, default=None, help="0 skips DiCoDe")
    parser.add_argument("--dicode-tokens", type=int, default=4, help="deep tokens a chunk")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = VideoMovingDigitsConfig(seed=args.seed, progress_bar=False)
    if args.quick:
        base = base.model_copy(
            update=dict(train_clips=32, test_clips=8, ae_steps=20, steps=10, n_layers=1)
        )
    if args.steps is not None:
        base = base.model_copy(update=dict(steps=args.steps))
    config = VideoMovingDigitsConfig.model_validate(base.model_dump())
    out_dir = Path(args.out).parent / "video_run"
    train = _clips(config, "train", config.train_clips, config.seed)
    test = _clips(config, "test", config.test_clips, config.seed)
    torch.manual_seed(config.seed)
    ae = FrameAutoencoder(size=config.size, channels=config.latent_channels)
    ae_m = train_autoencoder(ae, train, steps=config.ae_steps, seed=config.seed)
    latents = ae.encode(train)
    models: dict[str, Any] = {}
    train_s: dict[str, float] = {}
    for name in config.models:
        models[name], train_s[name], _ = train_model(name, latents, config, out_dir, print)
        print(f"[{name}] {config.steps} updates in {train_s[name]:.0f} s", flush=True)
    _, metrics, _ = evaluate(models, ae, test, config)
    report: dict[str, Any] = {
        "config": config.model_dump(),
        "autoencoder_psnr_train": ae_m["psnr"],
        "train_seconds": train_s,
        "by_horizon": {LABELS[k]: by_horizon(m) for k, m in metrics.items()},
    }
    # horizon 1, paired per-clip MSE, one-sided exact sign test: the point forecast (one
    # Euler step, E[next | context]) and the 10-step sample of every model
    sign: dict[str, dict[str, Any]] = {}
    for key in [k for k in metrics if k not in ("copy-last", "autoencoder")]:
        wins, n, p = sign_test(metrics[key]["mse"][:, 0], metrics["copy-last"]["mse"][:, 0])
        sign[LABELS[key]] = {"wins": wins, "pairs": n, "p_value": p, "alpha": config.alpha}
    report["vs_copy_last_h1"] = sign
    # copy-last in the autoencoder's space (the last context frame through encode/decode)
    ctx_last = test[:, config.context - 1 : config.context]
    ae_last = ae.decode(ae.encode(ctx_last)).expand(-1, config.horizon, -1, -1, -1)
    truth_h = test[:, config.context : config.context + config.horizon]
    report["copy_last_through_autoencoder_mse_h1"] = float(
        per_clip_metrics(ae_last, truth_h)["mse"][:, 0].mean()
    )
    # FAR without its long-term context: the same model, only the short window
    ctx = test[:, : config.context]
    truth = test[:, config.context : config.context + config.horizon]
    long_rows = {}
    for long_context in (True, False):
        z = far_generate(
            models["far"],
            ae.encode(ctx),
            config.horizon,
            steps=config.sample_steps,
            window=config.window,
            long_context=long_context,
            generator=torch.Generator().manual_seed(config.seed + 1),
        )
        h = by_horizon(per_clip_metrics(ae.decode(z), truth))
        long_rows["with long-term context" if long_context else "short window only"] = {
            f"mse_h{config.horizon}": h["mse"][-1],
            f"psnr_h{config.horizon}": h["psnr"][-1],
            f"ssim_h{config.horizon}": h["ssim"][-1],
        }
    report["far_long_context"] = long_rows
    dicode_steps = (
        args.dicode_steps if args.dicode_steps is not None else (5 if args.quick else 600)
    )
    if dicode_steps:
        report["dicode"] = dicode_round_trip(
            ae, train, test, dicode_steps, config.seed, args.dicode_tokens
        )
        d = report["dicode"]
        print(
            f"DiCoDe: {d['frames_per_chunk']} frames -> {d['deep_tokens']} x {d['token_dim']} "
            f"({d['compression_vs_pixels']:.0f}x fewer numbers than pixels): round trip PSNR "
            f"{d['round_trip_psnr']:.2f} dB (autoencoder {d['autoencoder_psnr']:.2f}), AR NLL "
            f"{d['ar_nll_nats_per_value']:.3f} nats/value"
        )
    lengths = [int(v) for v in str(args.rollout_frames).split(",")]
    report["kv_cache"] = {
        str(n_new): _speed(
            models, ae.encode(ctx[: args.rollout_clips]), n_new, config, args.repeats
        )
        for n_new in lengths
    }
    for name, row in report["by_horizon"].items():
        print(f"{name:<22} PSNR " + " ".join(f"{v:5.2f}" for v in row["psnr"]))
        print(f"{'':<22} SSIM " + " ".join(f"{v:5.3f}" for v in row["ssim"]))
    for k, v in sign.items():
        print(
            f"{k} vs copy-last at h=1: {v['wins']}/{v['pairs']} clips better, p = {v['p_value']:.3g}"
        )
    for k, v in long_rows.items():
        print(f"FAR {k}: " + ", ".join(f"{a} {b:.4f}" for a, b in v.items()))
    for n_new, rows in report["kv_cache"].items():
        for k, v in rows.items():
            print(
                f"{LABELS[k]} {n_new}-frame rollouts of {v['clips']} clips: "
                f"{v['frames_per_cpu_s_cached']:.1f} frames per CPU second cached vs "
                f"{v['frames_per_cpu_s_uncached']:.1f} uncached ({v['speedup_cpu']:.2f}x; wall "
                f"{v['speedup_wall']:.2f}x), max |diff| {v['max_abs_diff']:.1e}"
            )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return report
