"""Train the toy Wan VAE for reconstruction on rendered toy-world clips.

Legend: video_BCFHW pixels in [-1, 1]; mu_BCFHW the encoder's latent mean; latents_BCFHW the normalised
latent (mu - mean) / std with the official Wan 2.1 statistics, which `load_vae` applies. A small penalty
keeps each normalised latent channel near zero mean and unit variance, so the diffusion model sees latents
of the scale it expects; a little noise on the latent keeps the decoder tolerant of imperfect samples.

    python -m wantune.toy.train_vae --out toy_vae --steps 3000          # GPU if there is one
    wantune toy train-vae --out toy_vae --steps 3000

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

from wantune.toy.spec import load_concept
from wantune.toy.world import render_clip

EVAL_SEED = 777_777


@dataclass
class VaeTrainConfig:
    """Settings of a toy VAE training run."""

    out: Path
    """Output folder."""
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 8
    """Clips per step."""
    lr: float = 2e-4
    """Peak AdamW learning rate (cosine decay, 100 warm-up steps); 6e-4 and above diverged."""
    pool: int = 2048
    """Rendered clips to draw batches from (flipped and time-reversed at random)."""
    concepts: list[str] = field(default_factory=lambda: ["wide", "base", "character", "style", "motion"])
    """Concepts the clips come from."""
    latent_weight: float = 0.01
    """Weight of the penalty keeping normalised latents at zero mean, unit variance."""
    latent_noise: float = 0.1
    """Std of the noise added to normalised latents before decoding (training only)."""
    eval_clips: int = 40
    """Held-out clips for the final metrics."""
    seed: int = 0
    """Seed of the initial weights, the clip pool and the batch order."""
    device: str = "auto"
    """'cuda', 'cpu' or 'auto'."""
    max_minutes: float = 0.0
    """If > 0: after 20 steps, cut `steps` so that training ends within this many minutes."""
    train_frames: int = 17
    """Frames of the random temporal crop trained on (4n+1). Keep the clip length: a VAE trained on 9-frame
    crops reconstructed frames 10-17 of 17-frame clips badly (error growing frame by frame)."""


def _render_pool(cfg: VaeTrainConfig, count: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """frames (N, F, H, W, 3) uint8 and truths, concepts taken in turn."""
    jobs = [(cfg.concepts[i % len(cfg.concepts)], seed, i) for i in range(count)]
    if count >= 64 and (os.cpu_count() or 1) > 2:
        with ProcessPoolExecutor() as pool:
            results = list(pool.map(_render_one, jobs, chunksize=16))
    else:
        results = [_render_one(job) for job in jobs]
    return np.stack([r[0] for r in results]), [r[1] for r in results]


def _render_one(job: tuple[str, int, int]) -> tuple[np.ndarray, dict]:
    name, seed, index = job
    return render_clip(load_concept(name), seed, index)


def _to_video(frames_NFHWC: np.ndarray, device):
    import torch

    video = torch.from_numpy(frames_NFHWC).to(device).permute(0, 4, 1, 2, 3).float()
    return video / 127.5 - 1.0


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


def _loss(vae, video, mean, std, cfg: VaeTrainConfig):
    import torch

    mu = vae.encode(video).latent_dist.mean
    latents = (mu - mean) / std
    per_channel = latents.transpose(0, 1).reshape(latents.shape[1], -1)
    penalty = (per_channel.mean(1) ** 2 + (per_channel.std(1) - 1) ** 2).mean()
    noisy = latents + cfg.latent_noise * torch.randn_like(latents)
    recon = vae.decode(noisy * std + mean).sample
    error = recon - video
    loss = error.abs().mean() + (error ** 2).mean() + cfg.latent_weight * penalty
    return loss, {"l1": error.abs().mean().item(), "penalty": penalty.item()}


def train(cfg: VaeTrainConfig) -> dict:
    """Train, save out/vae.safetensors and out/vae_metrics.json; returns the metrics."""
    import torch

    from wantune.toy.base import build_vae, save_parts

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    start = time.time()
    pool, _ = _render_pool(cfg, cfg.pool, cfg.seed)
    vae = build_vae(cfg.seed).to(device).train()
    mean, std = _stats(vae, device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    rng = np.random.default_rng(cfg.seed)
    history = []
    step, began = 0, time.time()
    while step < cfg.steps:
        if step == 20 and cfg.max_minutes > 0:
            per_step = (time.time() - began) / 20
            cfg.steps = max(21, min(cfg.steps, int(cfg.max_minutes * 60 / per_step)))
        batch = _augment(pool[rng.integers(len(pool), size=cfg.batch_size)], rng, cfg.train_frames)
        loss, parts = _loss(vae, _to_video(batch, device), mean, std, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 5), **{k: round(v, 5) for k, v in parts.items()},
                            "seconds": round(time.time() - began, 1)})
            print(json.dumps(history[-1]), flush=True)
        step += 1
    vae.eval()
    metrics = evaluate(vae, cfg, device)
    metrics.update(steps=cfg.steps, seconds=round(time.time() - start, 1), device=str(device), history=history)
    save_parts(cfg.out, vae=vae.to("cpu").float())
    (Path(cfg.out) / "vae_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def evaluate(vae, cfg: VaeTrainConfig, device) -> dict:
    """PSNR, latent statistics and the judge's pass rate of reconstructions of held-out clips."""
    import torch

    from wantune.toy.judge import judge
    from wantune.toy.perturb import instance_spec

    frames, truths = _render_pool(cfg, cfg.eval_clips, EVAL_SEED)
    mean, std = _stats(vae, device)
    recon, latents = [], []
    with torch.no_grad():
        for i in range(0, len(frames), 8):
            video = _to_video(frames[i:i + 8], device)
            mu = vae.encode(video).latent_dist.mean
            latents.append(((mu - mean) / std).cpu())
            out = vae.decode(mu).sample.clamp(-1, 1)
            recon.append(((out + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy())
    recon = np.concatenate(recon)
    mse = ((recon.astype(np.float64) - frames) ** 2).mean(axis=(1, 2, 3, 4))
    z = torch.cat(latents)
    specs = {name: load_concept(name) for name in cfg.concepts}
    passed = [judge(r, instance_spec(specs[t["concept"]], t)).adherence for r, t in zip(recon, truths)]
    return {"psnr": round(float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-9)))), 2),
            "judge_pass_rate": round(float(np.mean(passed)), 4), "eval_clips": len(frames),
            "latent_mean": round(z.mean().item(), 4), "latent_std": round(z.std().item(), 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the toy Wan VAE for reconstruction.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pool", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-minutes", type=float, default=0.0)
    parser.add_argument("--eval-clips", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--train-frames", type=int, default=17)
    args = parser.parse_args(argv)
    metrics = train(VaeTrainConfig(out=args.out, steps=args.steps, batch_size=args.batch_size, pool=args.pool,
                                   seed=args.seed, device=args.device, max_minutes=args.max_minutes,
                                   eval_clips=args.eval_clips, lr=args.lr, train_frames=args.train_frames))
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))


if __name__ == "__main__":
    main()
