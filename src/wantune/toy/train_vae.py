"""Train the toy Wan VAE for reconstruction on rendered toy-world clips.

Legend: video_BCFHW pixels in [-1, 1]; mu_BCFHW the encoder's latent mean; latents_BCFHW the normalised
latent (mu - mean) / std with the official Wan 2.1 statistics, which `load_vae` always applies. Training
needs no latent penalty: afterwards `fold_latent_stats` measures each normalised channel's mean and std on
rendered clips and folds them into the encoder's `quant_conv` and the decoder's `post_quant_conv`, so the
official statistics give zero-mean, unit-variance latents without changing reconstructions. A little noise
on the latent keeps the decoder tolerant of imperfect samples. Training starts on short 5-frame crops
(cheap, all causal paths) and ends on whole 17-frame clips; on CPU one thread is fastest on a shared machine.

    python -m wantune.toy.train_vae --out toy_vae --max-minutes 22 --device cpu --threads 1

Writes out/vae.safetensors (diffusers names, `load_vae` reads it) and out/vae_metrics.json (PSNR and the
judge's pass rate on reconstructions of held-out clips).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wantune.errors import UserError
from wantune.toy.spec import load_concept
from wantune.toy.world import render_clip

EVAL_SEED = 777_777


@dataclass
class VaeTrainConfig:
    """Settings of a toy VAE training run."""

    out: Path
    """Output folder."""
    steps: int = 3000
    """Optimizer steps (the run also ends when `max_minutes` is spent)."""
    batch_size: int = 2
    """Clips per step on whole clips (short crops take twice as many)."""
    lr: float = 2e-4
    """Peak Adam learning rate (100 warm-up steps, cosine decay to 5% over the run's progress). On CPU, 1e-3
    collapsed a fixed batch to its mean colour within 10 steps and 4e-4 stalled at 11 dB on mixed batches."""
    pool: int = 300
    """Rendered clips to draw batches from (flipped and time-reversed at random)."""
    concepts: list[str] = field(default_factory=lambda: ["base", "base", "wide", "character", "style", "motion"])
    """Concepts the clips come from, in turn (the base world twice: the base model is trained on it)."""
    latent_weight: float = 0.0
    """Weight of a penalty keeping normalised latents at zero mean, unit variance (`fold_latent_stats` makes
    it unnecessary)."""
    latent_noise: float = 0.05
    """Std of the noise added to normalised latents before decoding (training only)."""
    eval_clips: int = 50
    """Held-out clips for the final metrics."""
    eval_concepts: list[str] = field(default_factory=lambda: ["base"])
    """Concepts of the held-out clips."""
    seed: int = 0
    """Seed of the initial weights, the clip pool and the batch order."""
    device: str = "auto"
    """'cuda', 'cpu' or 'auto'."""
    threads: int = 0
    """CPU threads for torch (0: leave torch's default)."""
    max_minutes: float = 0.0
    """If > 0: the run ends after this many minutes; the learning-rate schedule follows elapsed time."""
    train_frames: int = 17
    """Frames of whole-clip training (4n+1). Keep the clip length: a VAE trained only on 9-frame crops
    reconstructed frames 10-17 of 17-frame clips badly (error growing frame by frame)."""
    short_frames: int = 5
    """Frames of the cheap crops trained on first."""
    short_fraction: float = 0.35
    """Fraction of the run's progress spent on short crops."""
    object_weight: float = 4.0
    """Extra loss weight of the pixels the object covers (it covers ~3% of the frame; unweighted, it is
    the last thing learnt and the first blurred)."""
    base_dim: int = 0
    """VAE width (0: `TOY_VAE`'s)."""
    dim_mult: list[int] = field(default_factory=list)
    """VAE width multipliers per level (empty: `TOY_VAE`'s)."""
    init: Path | None = None
    """Continue from these weights (a vae.safetensors written by an earlier run; its sizes win)."""
    decoder_only: bool = False
    """Train only the decoder side (post_quant_conv and decoder) of `init`: the encoder and so the latent space
    stay as they are, so latents cached with `init` and a transformer trained on them stay valid."""


def _render_pool(cfg: VaeTrainConfig, count: int, seed: int, concepts=None) -> tuple[np.ndarray, list[dict]]:
    """frames (N, F, H, W, 4) uint8 (RGB and a 0/1 object mask) and truths, concepts taken in turn."""
    concepts = concepts or cfg.concepts
    jobs = [(concepts[i % len(concepts)], seed, i) for i in range(count)]
    if count >= 64 and len(os.sched_getaffinity(0)) > 2:
        with ProcessPoolExecutor() as pool:
            results = list(pool.map(_render_one, jobs, chunksize=16))
    else:
        results = [_render_one(job) for job in jobs]
    return np.stack([r[0] for r in results]), [r[1] for r in results]


def _render_one(job: tuple[str, int, int]) -> tuple[np.ndarray, dict]:
    from wantune.toy.world import render_background

    name, seed, index = job
    spec = load_concept(name)
    frames, truth = render_clip(spec, seed, index)
    background = render_background(truth["background"], spec.height, spec.width, tuple(truth["phase"]))
    mask = (np.abs(frames.astype(np.float32) - background).max(-1, keepdims=True) > 8).astype(np.uint8)
    return np.concatenate([frames, mask], -1), truth


def _to_video(frames_NFHWC: np.ndarray, device):
    import torch

    video = torch.from_numpy(np.ascontiguousarray(frames_NFHWC[..., :3])).to(device).permute(0, 4, 1, 2, 3).float()
    return video / 127.5 - 1.0


def _weights(frames_NFHWC: np.ndarray, device, object_weight: float):
    """Per-pixel loss weights (N, 1, F, H, W): 1 + object_weight on the object (and a pixel around it)."""
    import torch

    mask = torch.from_numpy(np.ascontiguousarray(frames_NFHWC[..., 3])).to(device).float().unsqueeze(1)
    mask = torch.nn.functional.max_pool3d(mask, (1, 3, 3), stride=1, padding=(0, 1, 1))
    return 1.0 + object_weight * mask


def _augment(frames_NFHWC: np.ndarray, rng: np.random.Generator, length: int) -> np.ndarray:
    start = int(rng.integers(frames_NFHWC.shape[1] - length + 1))
    out = frames_NFHWC[:, start:start + length].copy()
    for i in range(len(out)):
        if rng.random() < 0.5:
            out[i] = out[i, :, :, ::-1]
        if rng.random() < 0.5:
            out[i] = out[i, ::-1]
    return out


def _stats(vae, device):
    import torch

    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    return mean, std


def _loss(vae, video, weight, mean, std, cfg: VaeTrainConfig):
    import torch

    with torch.set_grad_enabled(not cfg.decoder_only):
        mu = vae.encode(video).latent_dist.mean
    latents = (mu - mean) / std
    per_channel = latents.transpose(0, 1).reshape(latents.shape[1], -1)
    penalty = (per_channel.mean(1) ** 2 + (per_channel.std(1) - 1) ** 2).mean()
    noisy = latents + cfg.latent_noise * torch.randn_like(latents)
    recon = decode_unclamped(vae, noisy * std + mean)
    error = recon - video
    loss = (weight * (error.abs() + error ** 2)).mean() / weight.mean() + cfg.latent_weight * penalty
    return loss, {"mse": (error ** 2).mean().item(), "penalty": penalty.item()}


def decode_unclamped(vae, mu_BCFHW):
    """AutoencoderKLWan's decode without its final clamp to [-1, 1], which stops the gradient of every pixel
    it saturates (a pixel decoded bright where the clip is dark is never corrected)."""
    import torch

    vae.clear_cache()
    x = vae.post_quant_conv(mu_BCFHW)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, 2)


def _progress(cfg: VaeTrainConfig, step: int, began: float) -> float:
    by_time = (time.time() - began) / (cfg.max_minutes * 60) if cfg.max_minutes > 0 else 0.0
    return max(step / cfg.steps, by_time)


def _device(cfg: VaeTrainConfig):
    import torch

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(cfg: VaeTrainConfig) -> dict:
    """Train, fold the latent statistics, save out/vae.safetensors and out/vae_metrics.json; returns metrics."""
    import torch

    from wantune.toy.base import build_vae, save_parts

    if cfg.decoder_only and cfg.init is None:
        raise UserError("--decoder-only: needs --init, the VAE whose decoder to train")
    device, start = _device(cfg), time.time()
    pool, _ = _render_pool(cfg, cfg.pool, cfg.seed)
    sizes = {**({"base_dim": cfg.base_dim} if cfg.base_dim else {}), **({"dim_mult": cfg.dim_mult} if cfg.dim_mult else {})}
    if cfg.init is not None:
        from wantune.models.vae import load_vae

        vae = load_vae(cfg.init).model.to(device).train().requires_grad_(True)
    else:
        vae = build_vae(cfg.seed, **sizes).to(device).train()
    if cfg.decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    torch.backends.cudnn.benchmark = True
    mean, std = _stats(vae, device)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    history, step, began = [], 0, time.time()
    while (progress := _progress(cfg, step, began)) < 1:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / 100) * (0.05 + 0.475 * (1 + math.cos(math.pi * progress)))
        short = progress < cfg.short_fraction
        frames, size = (cfg.short_frames, 2 * cfg.batch_size) if short else (cfg.train_frames, cfg.batch_size)
        batch = _augment(pool[rng.integers(len(pool), size=size)], rng, frames)
        loss, parts = _loss(vae, _to_video(batch, device), _weights(batch, device, cfg.object_weight), mean, std, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0:
            history.append({"step": step, "frames": frames, "loss": round(loss.item(), 5),
                            **{k: round(v, 5) for k, v in parts.items()}, "seconds": round(time.time() - began, 1)})
            print(json.dumps(history[-1]), flush=True)
        step += 1
        if step % 200 == 0:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            torch.save(vae.state_dict(), Path(cfg.out) / "vae_last.pt")
    vae.eval()
    if not cfg.decoder_only:  # a frozen encoder keeps the latent statistics as they are
        fold_latent_stats(vae, _to_video(pool[:32], device))
    metrics = evaluate(vae, cfg, device)
    metrics.update(steps=step, seconds=round(time.time() - start, 1), device=str(device), history=history)
    save_parts(cfg.out, vae=vae.to("cpu").float())
    (Path(cfg.out) / "vae_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def fold_latent_stats(vae, video_BCFHW) -> dict:
    """Make the official-statistics latents of `video` zero-mean, unit-variance per channel by folding an affine
    map into quant_conv (encoder side) and its inverse into post_quant_conv; reconstructions do not change."""
    import torch

    mean, std = _stats(vae, video_BCFHW.device)
    with torch.no_grad():
        mu = torch.cat([vae.encode(video_BCFHW[i:i + 4]).latent_dist.mean for i in range(0, len(video_BCFHW), 4)])
        per_channel = ((mu - mean) / std).transpose(0, 1).reshape(mu.shape[1], -1)
        m, s = per_channel.mean(1), per_channel.std(1).clamp_min(1e-3)
        M, S = mean.flatten(), std.flatten()
        z = len(M)
        # mu' = mu / s + M - (M + S m) / s  so that (mu' - M) / S = ((mu - M) / S - m) / s
        q_w, q_b = vae.quant_conv.weight, vae.quant_conv.bias
        q_w[:z] /= s.view(-1, 1, 1, 1, 1)
        q_b[:z] = q_b[:z] / s + M - (M + S * m) / s
        q_b[z:] -= 2 * torch.log(s)  # log-variance of the rescaled latent
        # the decoder gets back mu = s (mu' - M) + M + S m
        p_w, p_b = vae.post_quant_conv.weight, vae.post_quant_conv.bias
        p_b += (p_w[:, :, 0, 0, 0] * (M + S * m - s * M)).sum(1)
        p_w *= s.view(1, -1, 1, 1, 1)
    return {"channel_mean": m.tolist(), "channel_std": s.tolist()}


def evaluate(vae, cfg: VaeTrainConfig, device) -> dict:
    """PSNR, latent statistics and the judge's pass rate of reconstructions of held-out clips."""
    import torch

    from wantune.toy.judge import judge
    from wantune.toy.perturb import instance_spec

    frames, truths = _render_pool(cfg, cfg.eval_clips, EVAL_SEED, cfg.eval_concepts)
    frames = frames[..., :3]
    mean, std = _stats(vae, device)
    recon, latents = [], []
    with torch.no_grad():
        for i in range(0, len(frames), 4):
            video = _to_video(frames[i:i + 4], device)
            mu = vae.encode(video).latent_dist.mean
            latents.append(((mu - mean) / std).cpu())
            out = vae.decode(mu).sample.clamp(-1, 1)
            recon.append(((out + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy())
    recon = np.concatenate(recon)
    mse = ((recon.astype(np.float64) - frames) ** 2).mean(axis=(1, 2, 3, 4))
    z = torch.cat(latents)
    specs = {name: load_concept(name) for name in cfg.eval_concepts}
    passed = [judge(r, instance_spec(specs[t["concept"]], t)).adherence for r, t in zip(recon, truths)]
    return {"psnr": round(float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-9)))), 2),
            "judge_pass_rate": round(float(np.mean(passed)), 4), "eval_clips": len(frames),
            "eval_concepts": list(cfg.eval_concepts),
            "latent_mean": round(z.mean().item(), 4), "latent_std": round(z.std().item(), 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the toy Wan VAE for reconstruction.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=0.0)
    parser.add_argument("--eval-clips", type=int, default=50)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--train-frames", type=int, default=17)
    parser.add_argument("--object-weight", type=float, default=4.0)
    parser.add_argument("--base-dim", type=int, default=0, help="VAE width (default: TOY_VAE's)")
    parser.add_argument("--dim-mult", default="", help="comma-separated width multipliers, e.g. 1,2,4,4")
    parser.add_argument("--init", type=Path, help="continue from this vae.safetensors")
    parser.add_argument("--latent-noise", type=float, default=0.05,
                        help="std of the noise on normalised latents before decoding (training only)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="train only the decoder of --init (the latent space, and so caches, stay valid)")
    parser.add_argument("--short-fraction", type=float, default=0.35, help="share of the run on 5-frame crops")
    args = parser.parse_args(argv)
    metrics = train(VaeTrainConfig(out=args.out, steps=args.steps, batch_size=args.batch_size, pool=args.pool,
                                   seed=args.seed, device=args.device, threads=args.threads,
                                   max_minutes=args.max_minutes, eval_clips=args.eval_clips, lr=args.lr,
                                   train_frames=args.train_frames, object_weight=args.object_weight,
                                   base_dim=args.base_dim, init=args.init, short_fraction=args.short_fraction,
                                   decoder_only=args.decoder_only, latent_noise=args.latent_noise,
                                   dim_mult=[int(x) for x in args.dim_mult.split(",") if x]))
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))


if __name__ == "__main__":
    from wantune.errors import run_script

    run_script(main)
