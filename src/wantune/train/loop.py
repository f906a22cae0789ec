"""One training step: loss over the micro-batches, backward, clip, optimiser step, schedule, EMA.

A `TrainUnit` is one trained thing (the model, or one A14B expert) with its own trainable parameters,
optimiser, scheduler and EMA; `train_step` takes one unit and `grad_accumulation` micro-batches.
Non-finite losses and spikes (loss > spike_factor × recent median) skip the step and say why.

Data parallel (torchrun): each rank takes its slice of the global batch's σ and noise, so N ranks with
batch b train exactly as one process with batch N·b; the loss that decides skips and is logged is the mean
over ranks, so every rank makes the same decision.

Legend: B batch, C channels, F/H/W latent frames/height/width, L text tokens, D text dim.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import warnings
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import nn

from wantune.dist.env import all_reduce_mean
from wantune.dist.parallel import full_value, grad_sync
from wantune.train.config import TrainConfig
from wantune.train.objective import (SigmaRange, differential_target, forward_model, make_inputs, masked_mse_B,
                                     sample_sigmas, stack_context, temporal_mse_B, with_loss_mask)
from wantune.train.regularise import EMA, base_prior_target, dop_loss


@dataclass
class TrainUnit:
    """The model (or one A14B expert) being trained, with its own optimiser state."""

    name: str
    """"model", or the expert: "high" / "low"."""
    model: nn.Module
    network: object | None
    """The LoRANetwork (None for full fine-tuning)."""
    named_params: list[tuple[str, nn.Parameter]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sigma_range: SigmaRange | None
    """σ this unit trains on (None: no timestep of the run falls in its range; it is never stepped)."""
    ema: EMA | None = None
    runner: nn.Module | None = None
    """What the training forward goes through: the DDP wrapper when data parallel (None: the model)."""

    @property
    def forward_module(self) -> nn.Module:
        return self.runner if self.runner is not None else self.model

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.named_params}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.named_params:
                param.copy_(state[name])


@dataclass
class StepContext:
    """What every step shares: config, device, numerics, the σ/noise generator, recent losses."""

    cfg: TrainConfig
    device: torch.device
    generator: torch.Generator
    """Draws σ and noise on the CPU (device independent, saved for exact resume)."""
    scaler: torch.amp.GradScaler | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=50))
    rank: int = 0
    """This process's rank: which slice of the global batch's σ and noise it takes."""
    world: int = 1
    """Number of data-parallel ranks."""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.training.mixed_precision)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None
    lr: float
    skipped: str | None = None
    """Why the step was skipped (non-finite loss, spike, overflow), or None."""
    parts: dict = field(default_factory=dict)


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a batch moved to `device` (lists of tensors too)."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            return [t.to(device) for t in v]
        return v
    return {k: move(v) for k, v in batch.items()}


def batch_loss(unit: TrainUnit, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
    """Weighted flow-matching loss of one micro-batch (plus DOP), σ and noise from the context's generator."""
    cfg, variant = ctx.cfg, unit.model.variant
    latents_BCFHW = batch["latents_BCFHW"]
    B = latents_BCFHW.shape[0]
    sigma_B = sample_sigmas(B * ctx.world, cfg.timesteps, ctx.generator, unit.sigma_range)[ctx.rank * B:][:B]
    noise_BCFHW = torch.randn((ctx.world, *latents_BCFHW.shape), generator=ctx.generator)[ctx.rank]
    batch = to_device(batch, ctx.device)
    inputs = make_inputs(batch["latents_BCFHW"], noise_BCFHW.to(ctx.device), sigma_B.to(ctx.device),
                         clean_first_frame=variant.model_type == "ti2v", patch=variant.patch_size)
    context_BLD = stack_context(batch["context"])
    with ctx.autocast():
        pred_BCFHW = forward_model(unit.forward_module, batch, inputs, context_BLD)
    target_BCFHW = inputs.target_BCFHW
    if cfg.regularisation.prior_target == "base" and unit.network is not None:
        target_BCFHW = base_prior_target(unit.model, unit.network, batch, inputs, context_BLD, ctx.autocast)
    if cfg.regularisation.differential_guidance_scale > 1.0:
        target_BCFHW = differential_target(pred_BCFHW, target_BCFHW, cfg.regularisation.differential_guidance_scale)
    loss_mask = with_loss_mask(inputs, batch.get("mask_B1FHW"), cfg.training.mask_min_weight).mask_BCFHW
    loss_B = masked_mse_B(pred_BCFHW, target_BCFHW, loss_mask)
    loss = (loss_B * batch["weight_B"]).sum() / batch["weight_B"].sum()
    parts = {"loss/flow": loss.item(), "sigma_mean": sigma_B.mean().item()}
    if cfg.regularisation.temporal_weight > 0:
        temporal_B = temporal_mse_B(pred_BCFHW, target_BCFHW, loss_mask)
        temporal = (temporal_B * batch["weight_B"]).sum() / batch["weight_B"].sum()
        parts["loss/temporal"] = temporal.item()
        loss = loss + cfg.regularisation.temporal_weight * temporal
    if cfg.regularisation.dop.enabled and unit.network is not None and batch.get("context_dop") is not None:
        # with base-model prior targets a regularisation row's caption already asks for the base output
        reg_B = batch.get("regularization_B")
        rows_B = ~reg_B if reg_B is not None and cfg.regularisation.prior_target == "base" else None
        preserve = dop_loss(unit.model, unit.network, batch, inputs, ctx.autocast, rows_B)
        if preserve is not None:
            parts["loss/dop"] = preserve.item()
            loss = loss + cfg.regularisation.dop.multiplier * preserve
    return loss, parts


def train_step(unit: TrainUnit, micro_batches: list[dict], ctx: StepContext) -> StepResult:
    """One optimiser step over `micro_batches` (gradient accumulation), with skip-and-report on bad losses."""
    tcfg = ctx.cfg.training
    unit.optimizer.zero_grad(set_to_none=True)
    unit.model.train()
    total, parts, skipped = 0.0, {}, None
    for i, batch in enumerate(micro_batches):
        with grad_sync(unit.forward_module, sync=i == len(micro_batches) - 1):
            loss, parts = batch_loss(unit, batch, ctx)
            value = all_reduce_mean(loss.item())
            total += value / len(micro_batches)
            if not math.isfinite(value):
                skipped = f"loss is {value} (sample {', '.join(batch['sample_id'])})"
                break
            scaled = loss / len(micro_batches)
            (ctx.scaler.scale(scaled) if ctx.scaler else scaled).backward()
    if skipped is None and _is_spike(total, ctx, tcfg.spike_factor):
        skipped = f"loss spike {total:.4g} > {tcfg.spike_factor:g}x recent median {statistics.median(ctx.recent):.4g}"
    grad_norm = None
    if skipped is None:
        grad_norm, skipped = _clip_and_step(unit, ctx)
    if skipped is None:
        ctx.recent.append(total)
        if unit.ema is not None:
            unit.ema.update()
    unit.optimizer.zero_grad(set_to_none=True)
    lr = unit.scheduler.get_last_lr()[0]
    with warnings.catch_warnings():  # a skipped first step steps the schedule without the optimiser, on purpose
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        unit.scheduler.step()
    return StepResult(total, grad_norm, lr, skipped, parts)


def _is_spike(loss: float, ctx: StepContext, factor: float) -> bool:
    return len(ctx.recent) >= 10 and factor > 0 and loss > factor * statistics.median(ctx.recent)


def _clip_and_step(unit: TrainUnit, ctx: StepContext) -> tuple[float | None, str | None]:
    """Unscale, clip, step; a non-finite gradient norm skips the step (fp16: the scaler backs off)."""
    params = [p for _, p in unit.named_params]
    if ctx.scaler:
        ctx.scaler.unscale_(unit.optimizer)
    clip = ctx.cfg.training.grad_clip
    norm = full_value(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))
    if not math.isfinite(norm):
        if ctx.scaler:
            ctx.scaler.update()  # lowers the scale; expected now and then with fp16
            return None, f"fp16 gradient overflow (norm {norm}); loss scale lowered"
        return None, f"gradient norm is {norm}"
    if ctx.scaler:
        ctx.scaler.step(unit.optimizer)
        ctx.scaler.update()
    else:
        unit.optimizer.step()
    return norm, None
