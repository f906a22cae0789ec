"""The fast path in training (`[performance]`, docs/performance.md), applied to a built model.

`apply_performance(model, cfg, device)` runs after `apply_lora` and before the model moves to the device or is
wrapped for data parallel, in this order: fp8 base weights (`perf.fp8`) -> fused block kernels (`perf.compile`)
-> attention backend per block -> block swap (`perf.blockswap`) + the checkpointing wrapper (`perf.ac_policy`,
or the plain `perf.checkpointing` when nothing else is asked). `memory_line` is the estimate printed before
the first step.

Legend: B batch, C channels, F/H/W latent frames/height/width.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from wantune.errors import UserError
from wantune.train.config import TrainConfig

CPU_BACKENDS = ("auto", "flash", "math")
"""SDPA backends that run on the CPU."""


def apply_performance(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """Apply `[performance]` (and training.gradient_checkpointing) to `model`; returns its BlockSwapper or None."""
    perf = cfg.performance
    if perf.fp8_base:
        from wantune.perf.fp8 import compile_quantize, quantize_linears_fp8, set_fp8_backward

        compile_quantize(perf.compile_blocks and device.type == "cuda")
        quantize_linears_fp8(model)
        set_fp8_backward(model, perf.fp8_backward)
    if perf.fused_lora:
        from wantune.perf.lora_fused import fuse_lora

        fuse_lora(model)
    if perf.compile_blocks:
        from wantune.perf.compile import install_fast_blocks

        install_fast_blocks(model, compile=True)
    if perf.attention != "auto":
        use_attention_backend(model, perf.attention, device)
    swapper = None
    if perf.block_swap:
        from wantune.perf.blockswap import BlockSwapper

        if perf.block_swap > len(model.blocks):
            raise UserError(f"performance.block_swap = {perf.block_swap}: the model has {len(model.blocks)} blocks; "
                            "use at most that")
        swapper = BlockSwapper(model, perf.block_swap, device)
    mode = cfg.checkpoint_mode
    if perf.plain_blocks > len(model.blocks):
        raise UserError(f"performance.plain_blocks = {perf.plain_blocks}: the model has {len(model.blocks)} blocks; "
                        "use at most that")
    if mode == "full" and swapper is None and not perf.offload_activations and not perf.plain_blocks:
        from wantune.perf.checkpointing import apply_gradient_checkpointing

        apply_gradient_checkpointing(model)
    elif mode != "none" or swapper is not None:
        from wantune.perf.ac_policy import wrap_blocks

        wrap_blocks(model, save_attention=mode == "selective", offload=perf.offload_activations, swapper=swapper,
                    checkpointing=mode != "none", plain_blocks=perf.plain_blocks)
    return swapper


def use_attention_backend(model: nn.Module, name: str, device: torch.device) -> None:
    """Run every block's forward (and its checkpoint recompute) under SDPA backend `name`."""
    if device.type != "cuda" and name not in CPU_BACKENDS:
        raise UserError(f"performance.attention = {name}: needs a CUDA GPU; use auto, flash or math on the CPU")
    for block in model.blocks:
        block.forward = functools.partial(_with_backend, block.forward, name)


def _with_backend(plain, name: str, *args, **kwargs):
    from wantune.perf.micro import backend_context

    with backend_context(name):
        return plain(*args, **kwargs)


def memory_line(cfg: TrainConfig, variant, latents_BCFHW: torch.Tensor, device: torch.device,
                idle_experts: int = 0) -> str:
    """"this config needs about N GiB; you have M" for one step on this batch's shape (LoRA training)."""
    from wantune.perf.memory import GIB, memory_message

    if cfg.network.type != "lora":
        return "memory estimate: covers LoRA training only (not printed for full fine-tuning)"
    B, _, F, H, W = latents_BCFHW.shape
    st, sh, sw = variant.vae_stride
    est = step_estimate(cfg, variant, ((F - 1) * st + 1, H * sh, W * sw), B, idle_experts)
    if device.type != "cuda":
        return f"memory estimate: on a CUDA GPU this config would need about {est.total_gib:.1f} GiB " \
               "(training on the CPU here)"
    line = memory_message(est, torch.cuda.get_device_properties(device).total_memory / GIB)
    if "(too little" in line:
        line = line.split(" (too little")[0] + " (too little: set performance.fp8_base, performance.block_swap = N, " \
            "performance.offload_activations, or train on fewer frames / a smaller size)"
    return line


def step_estimate(cfg: TrainConfig, variant, pixels_FHW: tuple[int, int, int], batch: int, idle_experts: int = 0,
                  plain_blocks: int | None = None):
    """`perf.memory.estimate_memory` of one LoRA step of this config on clips of `pixels_FHW` (frames, height,
    width in pixels; width and height rounded up to whole patches) with `plain_blocks` (default: the config's)."""
    from wantune.perf.flops import latent_grid
    from wantune.perf.memory import block_activation_bytes, estimate_memory

    perf = cfg.performance
    F, H, W = pixels_FHW
    _, sh, sw = variant.vae_stride
    _, ph, pw = variant.patch_size
    H, W = -(-H // (sh * ph)) * sh * ph, -(-W // (sw * pw)) * sw * pw  # whole patches
    plain = perf.plain_blocks if plain_blocks is None else plain_blocks
    est = estimate_memory(variant, F, H, W, batch=batch, rank=cfg.network.rank,
                          precision="fp8" if perf.fp8_base else "bf16", block_swap=perf.block_swap,
                          save_attention=cfg.checkpoint_mode == "selective",
                          offload=perf.offload_activations, plain_blocks=plain, idle_experts=idle_experts)
    if cfg.checkpoint_mode == "none":  # every block keeps all its activations
        tokens = batch * math.prod(latent_grid(variant, F, H, W))
        est.parts["unchecked_blocks"] = variant.num_layers * block_activation_bytes(variant, tokens)
    return est


def resolve_plain_blocks(cfg: TrainConfig, variant, largest_FHW: tuple[int, int, int] | None, device: torch.device,
                         idle_experts: int = 0, available_gib: float | None = None) -> str | None:
    """`performance.plain_blocks = "auto"`: set it to the most blocks whose estimated step on the run's largest
    clip (`largest_FHW`, pixels) fits 0.9 of the GPU (`perf.plain.plain_blocks_that_fit`, as `wantune bench
    speed --plain-blocks auto`); returns the line to log, or None when the config gives a number. 0 on the CPU,
    for full fine-tuning and with block swap, activation offload or no checkpointing (nothing to size).
    `available_gib`: the GPU's memory (default: the device's)."""
    from wantune.perf.memory import GIB
    from wantune.perf.plain import plain_blocks_that_fit

    perf = cfg.performance
    if perf.plain_blocks != "auto":
        return None
    perf.plain_blocks = 0
    if device.type != "cuda":
        return "performance.plain_blocks = auto: 0 (no CUDA GPU to size them for)"
    if (cfg.network.type != "lora" or largest_FHW is None or perf.block_swap or perf.offload_activations
            or cfg.checkpoint_mode == "none"):
        return "performance.plain_blocks = auto: 0 (sized for LoRA runs with checkpointing, no swap or offload)"
    available = available_gib or torch.cuda.get_device_properties(device).total_memory / GIB
    perf.plain_blocks = plain_blocks_that_fit(
        lambda n: step_estimate(cfg, variant, largest_FHW, cfg.training.batch_size, idle_experts, n).total_gib,
        available, variant.num_layers)
    F, H, W = largest_FHW
    return (f"performance.plain_blocks = auto: {perf.plain_blocks} (the most whose estimate at {F}f {W}x{H}, "
            f"batch {cfg.training.batch_size}, fits 0.9 of {available:.1f} GiB)")
