"""Building what is trained: the model or the two A14B experts, each a `TrainUnit` with its own network,
optimiser, scheduler, EMA and σ range; which unit steps when; offloading the waiting expert.

A14B: the high-noise expert trains on σ >= boundary, the low-noise one on σ < boundary (0.875 T2V, 0.9 I2V),
each intersected with [min_timestep, max_timestep]. With `experts.train = "both"` the active expert changes
every `switch_every` steps; an expert whose range holds no allowed timestep is never stepped (and warned about).
"""

from __future__ import annotations

import torch
from torch import nn

from wantune.errors import UserError
from wantune.models.variants import TINY, WanVariant, get_variant
from wantune.train.config import TrainConfig
from wantune.train.loop import TrainUnit
from wantune.train.objective import SigmaRange, config_range
from wantune.train.performance import apply_performance
from wantune.train.optim import build_optimizer, build_scheduler, param_groups
from wantune.train.regularise import EMA

TINY_TRAIN = {**TINY, "text_len": 32}
"""`model.tiny`: the fixtures' tiny sizes with a 32-token text length (fast CPU demos and tests)."""

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def run_variant(cfg: TrainConfig) -> WanVariant:
    """The variant trained (tiny sizes for `model.tiny`)."""
    variant = get_variant(cfg.model.variant, **(TINY_TRAIN if cfg.model.tiny else {}))
    if cfg.experts.boundary is not None and variant.is_expert_pair:
        variant = variant.replace(boundary=cfg.experts.boundary)
    return variant


def expert_names(cfg: TrainConfig, variant: WanVariant) -> list[str]:
    """["model"] for single models; the trained A14B experts otherwise."""
    if not variant.is_expert_pair:
        return ["model"]
    return ["high", "low"] if cfg.experts.train == "both" else [cfg.experts.train]


def expert_range(name: str, cfg: TrainConfig, variant: WanVariant) -> SigmaRange | None:
    """σ a unit trains on: its expert range ∩ [min_timestep, max_timestep] (None when empty)."""
    allowed = config_range(cfg.timesteps)
    if name == "high":
        return SigmaRange(variant.boundary, 1.0, True).intersect(allowed)
    if name == "low":
        return SigmaRange(0.0, variant.boundary, False).intersect(allowed)
    return allowed


def build_models(cfg: TrainConfig, variant: WanVariant) -> dict[str, nn.Module]:
    """The base transformer(s) on the CPU: loaded from checkpoints, or tiny random ones (`model.tiny`)."""
    names = expert_names(cfg, variant)
    dtype = DTYPES[cfg.model.dtype]
    mcfg = cfg.model
    if mcfg.tiny and not (mcfg.checkpoint or mcfg.checkpoint_high or mcfg.checkpoint_low):
        from wantune.models.transformer import WanModel

        models = {}
        for name in names:
            torch.manual_seed(cfg.training.seed + 1000 * {"model": 1, "high": 1, "low": 2}[name])
            models[name] = WanModel(variant).to(dtype)
        return models
    from wantune.models.checkpoint import expert_paths, load_transformer

    wanted = variant if mcfg.tiny else mcfg.variant  # tiny: the fixtures' sizes, read from a file
    if names == ["model"]:
        return {"model": load_transformer(mcfg.checkpoint, wanted, dtype=dtype)}
    if mcfg.checkpoint_high and mcfg.checkpoint_low:
        paths = {"high": mcfg.checkpoint_high, "low": mcfg.checkpoint_low}
    else:
        high, low = expert_paths(mcfg.checkpoint)
        paths = {"high": high, "low": low}
    return {name: load_transformer(paths[name], wanted, dtype=dtype, hint="wan2.2") for name in names}


def plan_offload(cfg: TrainConfig, models: dict[str, nn.Module], device: torch.device) -> bool:
    """Offload the waiting expert when asked, or when both experts would take over 70% of free GPU memory."""
    if len(models) < 2 or device.type != "cuda":
        return False
    if cfg.experts.offload_inactive:
        return True
    needed = sum(p.numel() * p.element_size() for m in models.values() for p in m.parameters())
    perf = cfg.performance  # applied later: fp8 halves the block weights, swapped blocks stay on the CPU
    layers = len(next(iter(models.values())).blocks)
    needed *= (0.5 if perf.fp8_base else 1.0) * (1 - min(perf.block_swap, layers) / layers)
    free = torch.cuda.mem_get_info(device)[0]
    return needed * (1.0 if cfg.network.type == "lora" else 3.0) > 0.7 * free


def build_unit(name: str, model: nn.Module, cfg: TrainConfig, variant: WanVariant, total_steps: int,
               device: torch.device, on_device: bool = True, strategy: str = "none") -> TrainUnit:
    """Wrap one model for training: LoRA or full, `[performance]` (checkpointing...), data parallel, optimiser, schedule, EMA.

    `on_device=False` leaves it on the CPU (an offloaded expert; `ExpertSchedule` moves it when active).
    `strategy` (`wantune.dist.parallel`): "ddp" wraps the model for the forward, "fsdp" shards it in place.
    """
    net_cfg = cfg.network
    network = None
    if net_cfg.type == "lora":
        from wantune.lora import apply_lora

        include = "|".join(f"(?:{p})" for p in net_cfg.include) if net_cfg.include else None
        exclude = "|".join(f"(?:{p})" for p in net_cfg.exclude) if net_cfg.exclude else None
        torch.manual_seed(cfg.training.seed + 7 * (1 + ["model", "high", "low"].index(name)))
        network = apply_lora(model, net_cfg.rank, net_cfg.alpha, net_cfg.dropout, include=include, exclude=exclude)
        named = list(network.named_parameters())
    else:
        model.requires_grad_(True)
        named = list(model.named_parameters())
    apply_performance(model, cfg, device)  # fp8, fused kernels, attention, checkpointing, block swap
    runner = None
    if strategy == "fsdp":
        from wantune.dist.parallel import shard_fsdp

        shard_fsdp(model, device, cfg.distributed.reshard_after_forward)
        named = list(model.named_parameters())  # now this rank's shards
    elif on_device:
        model.to(device)
    if strategy == "ddp":
        from wantune.dist.parallel import wrap_ddp

        if not on_device:  # DDP sets up its gradient buckets where the weights will train
            model.to(device)
        runner = wrap_ddp(model, device)
        if not on_device:
            model.to("cpu")
    groups = param_groups(named, cfg.optimizer.lr, net_cfg.loraplus_lr_ratio if network else 1.0)
    optimizer = build_optimizer(groups, cfg.optimizer, device)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps)
    ema = EMA(named, cfg.regularisation.ema_decay) if cfg.regularisation.ema_decay > 0 else None
    return TrainUnit(name, model, network, named, optimizer, scheduler, expert_range(name, cfg, variant), ema,
                     runner)


class ExpertSchedule:
    """Which unit steps at a given step; moves the waiting expert to (pinned) CPU memory when asked."""

    def __init__(self, units: list[TrainUnit], switch_every: int, offload: bool, device: torch.device):
        self.units = [u for u in units if u.sigma_range is not None]
        if not self.units:
            raise UserError("timesteps: no trained expert's σ range overlaps [min_timestep, max_timestep]")
        self.switch_every, self.offload, self.device = switch_every, offload, device
        self.current: TrainUnit | None = None

    def unit_for(self, step: int) -> TrainUnit:
        """The unit trained at `step` (deterministic, so resume picks up the same rotation)."""
        unit = self.units[(step // self.switch_every) % len(self.units)]
        if unit is not self.current:
            self._activate(unit)
        return unit

    def _activate(self, unit: TrainUnit) -> None:
        if self.offload and self.device.type == "cuda":
            for other in self.units:
                if other is not unit:
                    move_unit(other, torch.device("cpu"), pin=True)
            move_unit(unit, self.device)
        self.current = unit


def move_unit(unit: TrainUnit, device: torch.device, pin: bool = False) -> None:
    """Move a unit's model, optimiser state and EMA to `device` (CPU copies pinned when `pin`)."""
    def place(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        return t.pin_memory() if pin and device.type == "cpu" and torch.cuda.is_available() else t

    with torch.no_grad():
        for tensor in list(unit.model.parameters()) + list(unit.model.buffers()):
            tensor.data = place(tensor.data)
        for state in unit.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = place(value)
    if unit.ema is not None:
        unit.ema.shadow = {n: place(t) for n, t in unit.ema.shadow.items()}
