"""Validation loss at fixed timesteps and fixed noise: the same numbers for the same weights, so losses are
comparable across checkpoints and runs. A14B: each timestep is scored by the expert that owns it.

Legend: B batch, C channels, F/H/W latent frames/height/width.
"""

from __future__ import annotations

import torch

from wantune.cache.loader import collate
from wantune.train.loop import StepContext, TrainUnit, to_device
from wantune.train.objective import forward_model, make_inputs, masked_mse_B, stack_context, with_loss_mask


@torch.no_grad()
def validation_loss(samples: list[dict], owners: dict[int, TrainUnit], ctx: StepContext) -> dict[str, float]:
    """Mean loss over samples × timesteps (`val/loss`) and per timestep (`val/t<T>`); dropout off."""
    cfg = ctx.cfg.validation
    per_t: dict[str, float] = {}
    for t in cfg.timesteps:
        unit = owners.get(t)
        if unit is None:
            continue
        was_training = unit.model.training
        unit.model.eval()
        losses = [_batch_loss(unit, start, samples[start:start + 8], t, ctx) for start in range(0, len(samples), 8)]
        unit.model.train(was_training)
        per_t[f"val/t{t}"] = float(torch.cat(losses).mean())
    result = dict(per_t)
    if per_t:
        result["val/loss"] = sum(per_t.values()) / len(per_t)
    return result


def _batch_loss(unit: TrainUnit, first: int, samples: list[dict], t: int, ctx: StepContext) -> torch.Tensor:
    """Per-sample losses of samples[first:...] at timestep t, each with its own fixed noise."""
    batch = to_device(collate(samples), ctx.device)
    latents_BCFHW = batch["latents_BCFHW"]
    noise_BCFHW = torch.stack([
        torch.randn(latents_BCFHW.shape[1:], generator=torch.Generator().manual_seed(
            ctx.cfg.validation.seed * 100_003 + first + i)) for i in range(len(samples))]).to(ctx.device)
    sigma_B = torch.full((len(samples),), t / 1000.0, device=ctx.device)
    variant = unit.model.variant
    inputs = make_inputs(latents_BCFHW, noise_BCFHW, sigma_B, clean_first_frame=variant.model_type == "ti2v",
                         patch=variant.patch_size)
    with ctx.autocast():
        pred = forward_model(unit.model, batch, inputs, stack_context(batch["context"]))
    mask = with_loss_mask(inputs, batch.get("mask_B1FHW"), ctx.cfg.training.mask_min_weight).mask_BCFHW
    return masked_mse_B(pred, inputs.target_BCFHW, mask).cpu()


def timestep_owners(timesteps: list[int], units: list[TrainUnit], all_units: bool = True) -> dict[int, TrainUnit]:
    """Which unit scores each validation timestep (the one whose σ range holds t/1000; else the nearest)."""
    owners = {}
    for t in timesteps:
        sigma = torch.tensor([t / 1000.0])
        for unit in units:
            if unit.sigma_range is not None and unit.sigma_range.contains(sigma).item():
                owners[t] = unit
        if t not in owners and len(units) == 1 and all_units:
            owners[t] = units[0]
    return owners
