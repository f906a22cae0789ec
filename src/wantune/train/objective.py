"""Flow matching for Wan (../shared/WAN_FACTS.md): noise levels, noisy inputs, targets and the loss.

x_σ = (1-σ)·x0 + σ·ε, target v = ε - x0, MSE; the model receives σ·1000. TI2V keeps the first latent
frame clean (per-token timesteps, 0 on frame 0) and leaves it out of the loss.

Legend: B batch, C latent channels, F latent frames, H/W latent height/width, L tokens, D text dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wantune.errors import UserError
from wantune.train.config import TimestepConfig


@dataclass(frozen=True)
class SigmaRange:
    """A range of σ (noise level in [0, 1]); `hi_inclusive=False` for the low expert's [0, boundary)."""

    lo: float = 0.0
    hi: float = 1.0
    hi_inclusive: bool = True

    def contains(self, sigma: torch.Tensor) -> torch.Tensor:
        upper = sigma <= self.hi if self.hi_inclusive else sigma < self.hi
        return (sigma >= self.lo) & upper

    def intersect(self, other: SigmaRange) -> SigmaRange | None:
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        inclusive = (self.hi_inclusive if self.hi < other.hi else other.hi_inclusive if other.hi < self.hi
                     else self.hi_inclusive and other.hi_inclusive)
        if lo > hi or (lo == hi and not inclusive):
            return None
        return SigmaRange(lo, hi, inclusive)


def config_range(cfg: TimestepConfig) -> SigmaRange:
    """The σ range allowed by min_timestep / max_timestep."""
    return SigmaRange(cfg.min_timestep / 1000.0, cfg.max_timestep / 1000.0, True)


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = sσ / (1 + (s-1)σ): more time at high noise for s > 1."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def draw_sigmas(n: int, cfg: TimestepConfig, generator: torch.Generator) -> torch.Tensor:
    """n raw σ from the configured distribution and bias (no range restriction)."""
    if cfg.sampling == "uniform":
        sigma = torch.rand(n, generator=generator, dtype=torch.float64)
    elif cfg.sampling == "logit_normal":
        sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator,
                                                                             dtype=torch.float64))
    else:
        sigma = torch.sigmoid(cfg.sigmoid_scale * torch.randn(n, generator=generator, dtype=torch.float64))
        if cfg.sampling == "shift":
            sigma = shift_sigma(sigma, cfg.discrete_flow_shift)
    if cfg.bias == "high_noise":
        sigma = 1.0 - (1.0 - sigma) ** cfg.bias_strength
    elif cfg.bias == "low_noise":
        sigma = sigma ** cfg.bias_strength
    return sigma


def sample_sigmas(n: int, cfg: TimestepConfig, generator: torch.Generator,
                  allowed: SigmaRange) -> torch.Tensor:
    """n σ drawn from the configured distribution restricted to `allowed` (rejection sampling).

    Restricting (rather than squeezing) keeps the distribution's shape inside an A14B expert's range.
    If the range is too unlikely under the distribution, the remainder is drawn uniformly inside it.
    """
    kept: list[torch.Tensor] = []
    count = 0
    for _ in range(32):
        draw = draw_sigmas(max(n, 64), cfg, generator)
        good = draw[allowed.contains(draw)]
        kept.append(good)
        count += len(good)
        if count >= n:
            break
    sigma = torch.cat(kept)[:n]
    if len(sigma) < n:
        fill = torch.rand(n - len(sigma), generator=generator, dtype=torch.float64)
        top = allowed.hi if allowed.hi_inclusive else allowed.hi - 1e-6
        sigma = torch.cat([sigma, allowed.lo + fill * (top - allowed.lo)])
    return sigma.float()


def stack_context(context: list[torch.Tensor]) -> torch.Tensor:
    """Text embeddings of different lengths (L_i, D) -> (B, L_max, D) zero padded (the model pads to 512)."""
    length = max(c.shape[0] for c in context)
    return torch.stack([F.pad(c, (0, 0, 0, length - c.shape[0])) for c in context])


@dataclass
class NoisyInputs:
    """What the model sees and what it must predict for one batch."""

    x_BCFHW: torch.Tensor
    t: torch.Tensor
    """σ·1000, shape (B,) or per token (B, L) for TI2V."""
    target_BCFHW: torch.Tensor
    mask_BCFHW: torch.Tensor | None
    """1 where the loss counts (TI2V: 0 on the clean first frame); None = everywhere."""


def make_inputs(latents_BCFHW: torch.Tensor, noise_BCFHW: torch.Tensor, sigma_B: torch.Tensor,
                clean_first_frame: bool = False, patch: tuple[int, int, int] = (1, 2, 2)) -> NoisyInputs:
    """x_σ = (1-σ)x0 + σε and v = ε - x0; TI2V keeps frame 0 clean with t = 0 on its tokens."""
    s = sigma_B.to(latents_BCFHW.dtype).view(-1, 1, 1, 1, 1)
    x = (1.0 - s) * latents_BCFHW + s * noise_BCFHW
    target = noise_BCFHW - latents_BCFHW
    t = sigma_B.float() * 1000.0
    mask = None
    if clean_first_frame:
        x = torch.cat([latents_BCFHW[:, :, :1], x[:, :, 1:]], dim=2)
        B, _, Fr, H, W = latents_BCFHW.shape
        per_frame = (H // patch[1]) * (W // patch[2])
        t = t.view(B, 1).repeat(1, (Fr // patch[0]) * per_frame)
        t[:, :per_frame] = 0.0
        mask = torch.ones_like(latents_BCFHW)
        mask[:, :, 0] = 0.0
    return NoisyInputs(x, t.to(latents_BCFHW.device), target, mask)


def with_loss_mask(inputs: NoisyInputs, mask_B1FHW: torch.Tensor | None, min_weight: float) -> NoisyInputs:
    """`inputs` whose loss mask also weighs each position by the batch's loss masks (masked loss: min_weight where a
    mask is black, 1 where white); unchanged when the batch has none."""
    if mask_B1FHW is None:
        return inputs
    from wantune.data.masks import loss_weights

    shape = inputs.target_BCFHW.shape
    if mask_B1FHW.shape[0] != shape[0] or mask_B1FHW.shape[2:] != shape[2:]:
        raise UserError(f"loss mask of shape {tuple(mask_B1FHW.shape)} does not fit latents of shape {tuple(shape)}; "
                        "run `wantune cache` on this config again")
    weights = loss_weights(mask_B1FHW.to(inputs.target_BCFHW.device), min_weight).expand(shape)
    mask = weights if inputs.mask_BCFHW is None else weights * inputs.mask_BCFHW
    return NoisyInputs(inputs.x_BCFHW, inputs.t, inputs.target_BCFHW, mask)


def masked_mse_B(pred_BCFHW: torch.Tensor, target_BCFHW: torch.Tensor,
                 mask_BCFHW: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean squared error over the positions the mask keeps (a weighted mean for a soft mask)."""
    err = (pred_BCFHW.float() - target_BCFHW.float()) ** 2
    if mask_BCFHW is None:
        return err.flatten(1).mean(1)
    mask = mask_BCFHW.float()
    return (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)


def temporal_mse_B(pred_BCFHW: torch.Tensor, target_BCFHW: torch.Tensor,
                   mask_BCFHW: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean squared error of the frame-to-frame differences (latent frame f+1 minus f) of prediction and
    target: an error shared by every frame cancels, so what is left is motion. Zero for single-frame samples."""
    if pred_BCFHW.shape[2] < 2:
        return pred_BCFHW.new_zeros(pred_BCFHW.shape[0], dtype=torch.float32)
    mask = None if mask_BCFHW is None else mask_BCFHW[:, :, 1:] * mask_BCFHW[:, :, :-1]
    return masked_mse_B(pred_BCFHW.diff(dim=2), target_BCFHW.diff(dim=2), mask)


def differential_target(pred_BCFHW: torch.Tensor, target_BCFHW: torch.Tensor, scale: float) -> torch.Tensor:
    """Differential guidance: aim past the target, pred + scale·(target - pred) (pred detached)."""
    pred = pred_BCFHW.detach().to(target_BCFHW.dtype)
    return pred + scale * (target_BCFHW - pred)


def forward_model(model, batch: dict, inputs: NoisyInputs, context_BLD: torch.Tensor) -> torch.Tensor:
    """One transformer call with the batch's conditioning (I2V `cond` -> y, Wan 2.1 CLIP features)."""
    return model(inputs.x_BCFHW, inputs.t, context_BLD, clip_fea_BKD=batch.get("clip_BKD"),
                 y_BCFHW=batch.get("cond_BCFHW"))
