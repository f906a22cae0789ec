"""Optimisers and learning-rate schedules.

`build_optimizer(groups, cfg, device)` takes parameter groups (LoRA+ puts the B matrices in their own
group with a scaled lr); `build_scheduler(optimizer, cfg, total_steps)` returns a `LambdaLR` over our
own small lr-multiplier functions (so the shapes are explicit and resumable).
"""

from __future__ import annotations

import math
from functools import partial

import torch

from wantune.errors import UserError
from wantune.train.config import OptimizerConfig, ScheduleConfig


def param_groups(named_params: list[tuple[str, torch.nn.Parameter]], lr: float,
                 loraplus_ratio: float = 1.0) -> list[dict]:
    """One group, or two for LoRA+ (parameters named like lora_B / lora_up get lr × ratio)."""
    if loraplus_ratio == 1.0:
        return [{"params": [p for _, p in named_params], "lr": lr}]
    up = [p for n, p in named_params if _is_lora_up(n)]
    down = [p for n, p in named_params if not _is_lora_up(n)]
    if not up:
        raise UserError("network.loraplus_lr_ratio: no LoRA B matrices found (LoRA+ needs network.type = lora)")
    return [{"params": down, "lr": lr}, {"params": up, "lr": lr * loraplus_ratio}]


def _is_lora_up(name: str) -> bool:
    last = name.lower().rsplit(".", 2)
    return any(tag in part for part in last for tag in ("lora_b", "lora_up"))


def build_optimizer(groups: list[dict], cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """The configured optimiser over `groups` (each group's `lr` already set)."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    if cfg.name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise UserError("optimizer.name = prodigy: the prodigyopt package is missing; "
                            "pip install prodigyopt (or wantune[train])") from None
        return Prodigy(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if device.type != "cuda":
        raise UserError("optimizer.name = adamw8bit: bitsandbytes 8-bit AdamW needs a CUDA GPU; use adamw on CPU")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("optimizer.name = adamw8bit: bitsandbytes is missing; pip install bitsandbytes") from None
    return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def warmup_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    """Warmup length: explicit steps, else the ratio of the run."""
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total_steps))


def lr_multiplier(step: int, *, name: str, warmup: int, total: int, cycles: int = 1, power: float = 1.0,
                  floor: float = 0.0) -> float:
    """The lr factor at `step` (0-based optimiser steps) for a schedule shape."""
    if name == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if name == "constant_with_warmup":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "linear":
        decay = 1.0 - progress
    elif name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif name == "cosine_with_restarts":
        decay = 0.0 if progress >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))
    elif name == "polynomial":
        decay = (1.0 - progress) ** power
    else:
        raise ValueError(f"unknown schedule {name!r}")
    return floor + (1.0 - floor) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `lr_multiplier` to every group's base lr."""
    fn = partial(lr_multiplier, name=cfg.name, warmup=warmup_steps(cfg, total_steps), total=total_steps,
                 cycles=cfg.num_cycles, power=cfg.power, floor=cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
