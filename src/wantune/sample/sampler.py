"""The denoising loop: classifier-free guidance over a flow-matching scheduler, with expert routing.

Legend: B batch, C latent channels, F latent frames, H/W latent height/width, L tokens (F·H/2·W/2),
D text dim, K CLIP tokens (257 per image).

Per step, the expert for the step's shifted timestep t (σ'·1000) predicts the flow velocity for the prompt
and for the negative prompt; the guided prediction uncond + g·(cond − uncond) goes to the scheduler.
Conditioning: `y` (I2V/FLF2V mask + image latents, concatenated on channels by the model), `clip_fea`
(Wan 2.1 I2V/FLF2V), `first_frame` (TI2V: the image latent replaces frame 0 before every model call and at
the end, and frame-0 tokens get timestep 0).
"""

from __future__ import annotations

import torch
from torch import nn

from wantune.sample.experts import ExpertPair, as_pair, per_expert


def make_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal float32 noise from a seeded CPU generator: the same seed gives the same noise anywhere."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def latent_shape(variant, frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
    """(B, C, F, H, W) of the latents for a video of `frames` x `height` x `width` pixels."""
    st, sh, sw = variant.vae_stride
    return (batch, variant.latent_channels, (frames - 1) // st + 1, height // sh, width // sw)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model computes in: that of its first non-fp8 floating parameter."""
    for p in model.parameters():
        if p.is_floating_point() and p.element_size() > 1:
            return p.dtype
    return torch.float32


def token_timesteps(t: torch.Tensor, first_frame_tokens: int, latents_BCFHW: torch.Tensor,
                    patch: tuple[int, int, int] = (1, 2, 2)) -> torch.Tensor:
    """TI2V per-token timesteps (B, L): t everywhere except 0 for the first latent frame's tokens."""
    b, _, f, h, w = latents_BCFHW.shape
    tokens = (f // patch[0]) * (h // patch[1]) * (w // patch[2])
    t_BL = torch.full((b, tokens), float(t), dtype=torch.float32, device=latents_BCFHW.device)
    t_BL[:, :first_frame_tokens] = 0.0
    return t_BL


def sample_video(
    model: nn.Module | ExpertPair,
    noise_BCFHW: torch.Tensor,
    context_BLD: torch.Tensor,
    neg_context_BLD: torch.Tensor | None,
    guidance: float | tuple[float, float],
    scheduler,
    steps: int,
    y_BCFHW: torch.Tensor | None = None,
    clip_fea_BKD: torch.Tensor | None = None,
    first_frame_BCFHW: torch.Tensor | None = None,
    progress: bool = True,
    on_step=None,
) -> torch.Tensor:
    """Denoise `noise` in `steps` scheduler steps; returns the final float32 latents (B, C, F, H, W).

    `guidance` is one scale or (high, low) per A14B expert; a scale of 1 (or no negative context) skips the
    unconditional pass. `on_step(i, t, expert_name)` is called after each step (for logs/tests).
    """
    from tqdm.auto import tqdm

    pair = as_pair(model)
    scales = per_expert(guidance)
    device = noise_BCFHW.device
    scheduler.set_timesteps(steps, device=device)
    scheduler.set_begin_index(0)
    latents = noise_BCFHW.to(torch.float32)
    if first_frame_BCFHW is not None:
        latents = _with_first_frame(latents, first_frame_BCFHW)
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress)):
        name = pair.which(t)
        expert = pair.activate(name)
        dtype = compute_dtype(expert)
        t_model = _model_timestep(t, latents, first_frame_BCFHW, expert)
        kwargs = dict(y_BCFHW=None if y_BCFHW is None else y_BCFHW.to(dtype),
                      clip_fea_BKD=None if clip_fea_BKD is None else clip_fea_BKD.to(dtype))
        x = latents.to(dtype)
        with torch.no_grad():
            pred = expert(x, t_model, context_BLD.to(dtype), **kwargs).float()
            scale = scales[name]
            if neg_context_BLD is not None and scale != 1.0:
                uncond = expert(x, t_model, neg_context_BLD.to(dtype), **kwargs).float()
                pred = uncond + scale * (pred - uncond)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        if first_frame_BCFHW is not None:
            latents = _with_first_frame(latents, first_frame_BCFHW)
        if on_step is not None:
            on_step(i, float(t), name)
    return latents


def _model_timestep(t: torch.Tensor, latents_BCFHW: torch.Tensor, first_frame_BCFHW: torch.Tensor | None,
                    model: nn.Module) -> torch.Tensor:
    """The model's timestep argument: (B,) float, or (B, L) with 0 on frame-0 tokens for TI2V."""
    b = latents_BCFHW.shape[0]
    if first_frame_BCFHW is None:
        return torch.full((b,), float(t), dtype=torch.float32, device=latents_BCFHW.device)
    patch = tuple(getattr(getattr(model, "variant", None), "patch_size", (1, 2, 2)))
    h, w = latents_BCFHW.shape[-2:]
    first_tokens = (h // patch[1]) * (w // patch[2])
    return token_timesteps(t, first_tokens, latents_BCFHW, patch)


def _with_first_frame(latents_BCFHW: torch.Tensor, first_frame_BCFHW: torch.Tensor) -> torch.Tensor:
    """The latents with latent frame 0 replaced by the encoded image (TI2V)."""
    out = latents_BCFHW.clone()
    out[:, :, :1] = first_frame_BCFHW.to(out.dtype).expand(out.shape[0], -1, 1, -1, -1)
    return out
